"""DiffewS scored as its authors score: their uint8 relative threshold, scoring at img_size with the ground truth
resized nearest, and `diffews load` / eval.checkpoint taking the folder that holds `unet/`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.models.diffews.checkpoint import build_from_sd, unet_folder
from maskforge.models.diffews.codec import threshold_masks
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.diffews.config import parse_diffews_config
from maskforge.tasks.diffews.evaluate import LabelsAtSize
from maskforge.tasks.diffews.model import checkpoint_kind

ROOT = Path(__file__).resolve().parents[1]
TOY_SD = str(ROOT / "models" / "toy" / "sd")
runner = CliRunner()


def authors_cut(decode: torch.Tensor, size: tuple[int, int], r_threshold: float = 0.25) -> np.ndarray:
    """The authors' steps, transcribed as their code runs them (aim-uofa/DiffewS d12c396): decode clipped to [-1, 1],
    x 0.5 + 0.5, x 255 (marigold_pipeline_rgb_latent_noise.py:790-795), resized nearest to the input size, clipped
    and cast with numpy's astype(uint8), PIL image (:534-538), to_tensor (k / 255), then main_oss.py:131-134:
    mean over channels > r_threshold x the maximum of the whole tensor."""
    seg = (decode.clamp(-1.0, 1.0) * 0.5 + 0.5) * 255
    seg = F.interpolate(seg[None], size, mode="nearest")
    hwc = seg.clip(0, 255).numpy().astype(np.uint8)[0].transpose(1, 2, 0)
    pil = Image.fromarray(hwc).resize((size[1], size[0]))
    pred = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float().div(255)[None]
    return (pred.mean(dim=1) > pred.max() * r_threshold)[0].numpy()


def decodes(n: int, side: int = 24) -> torch.Tensor:
    """Seeded decodes in [-1, 1]: a blob on a tinted, noisy background, channels unequal (as SD's VAE makes them)."""
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([side, side, side / 3])).tolist()
        blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < (r + 2) ** 2).float()
        tint = torch.rand(3, 1, 1, generator=g) * 1.2 - 1.0
        noise = torch.randn(3, side, side, generator=g) * 0.25
        out.append((tint + blob * (torch.rand(3, 1, 1, generator=g) * 1.5) + noise).clamp(-1.2, 1.2))
    return torch.stack(out)


def test_authors_rule_equals_their_code_and_the_old_rule_does_not():
    """The same decodes through the authors' steps and through threshold_masks(rule='authors'): equal masks, at the
    decode's size and resized; the former float mean-floor rule disagrees on some of them."""
    raw = decodes(40)
    rgb = raw.clamp(-1, 1) * 0.5 + 0.5  # what codec.decode_rgb returns
    differ = 0
    for size in ((24, 24), (31, 17)):
        ours = threshold_masks(rgb, [size] * len(rgb), 0.25, 0.0, "authors")
        old = threshold_masks(rgb, [size] * len(rgb), 0.25, 0.1, "mean-floor")
        for i in range(len(rgb)):
            ref = authors_cut(raw[i], size)
            assert ours[i].shape == size and ours[i].dtype == bool
            assert np.array_equal(ours[i], ref), (size, i)
            differ += int(not np.array_equal(old[i], ref))
    assert differ >= 10  # the two definitions really differ on these inputs: the equality above is not vacuous


def test_authors_rule_truncates_to_uint8():
    """A pixel just under 64/255 truncates to 63 and stays out of a cut at 0.25 x 255 = 63.75; rounding would not."""
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[0, :, 0, 0] = 1.0  # max 255
    rgb[0, :, 0, 1] = 63.999 / 255  # uint8 63 -> 63/255 < 0.25
    rgb[0, :, 1, 0] = 64.0 / 255  # uint8 64 -> above the cut
    (mask,) = threshold_masks(rgb, [(2, 2)], 0.25, 0.0, "authors")
    assert mask.tolist() == [[True, False], [True, False]]


def test_the_authors_rule_has_no_floor():
    with pytest.raises(ValueError, match="authors' rule has no floor"):
        threshold_masks(torch.zeros(1, 3, 2, 2), [(2, 2)], 0.25, 0.1, "authors")
    with pytest.raises(ConfigError, match=r"eval\.threshold_floor: 0\.1 given with threshold_rule 'authors'"):
        parse_diffews_config({"eval": {"threshold_floor": 0.1}})
    cfg = parse_diffews_config({})
    assert (cfg.eval.threshold_rule, cfg.eval.relative_threshold, cfg.eval.threshold_floor) == ("authors", 0.25, 0)
    assert cfg.eval.score_at == "img_size"


def test_real_dataset_configs_score_as_the_authors_and_the_toy_keeps_its_rule():
    import yaml

    for name in ("diffews-coco", "diffews-pascal"):
        e = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["eval"]
        assert (e["threshold_rule"], e["relative_threshold"], e["threshold_floor"], e["score_at"]) == (
            "authors", 0.25, 0.0, "img_size"
        )  # fmt: skip
    toy = yaml.safe_load((ROOT / "configs" / "diffews-toy.yaml").read_text())["eval"]
    assert (toy["threshold_rule"], toy["relative_threshold"], toy["threshold_floor"]) == ("mean-floor", 0.5, 0.4)


class FakeImages:
    """An EpisodeImages stand-in: one 5 x 3 label with classes 0, 1, 2."""

    label = np.array([[0, 1, 2], [0, 1, 2], [1, 1, 0], [2, 2, 2], [0, 0, 1]], dtype=np.uint8)

    def get(self, key):
        """Return (a blank image, the label)."""
        return np.zeros((5, 3, 3), np.uint8), self.label


def test_labels_are_resized_nearest_to_the_model_square():
    image, label = LabelsAtSize(FakeImages(), 6).get("x")
    assert image.shape == (5, 3, 3) and label.shape == (6, 6) and label.dtype == np.uint8
    # nearest: output row i reads input row floor(i * 5 / 6), column j reads floor(j * 3 / 6)
    rows, cols = [int(i * 5 / 6) for i in range(6)], [int(j * 3 / 6) for j in range(6)]
    assert np.array_equal(label, FakeImages.label[np.ix_(rows, cols)])


@pytest.fixture(scope="module")
def authors_folder(tmp_path_factory):
    """The folder the authors' scripts take: MODEL_DIR/unet/{config.json, weights} (the toy SD's UNet + conv_in_ref)."""
    torch.manual_seed(0)
    unet = build_from_sd(TOY_SD)
    parent = tmp_path_factory.mktemp("authors") / "coco_fold0"
    (parent / "unet").mkdir(parents=True)
    unet.save_config(parent / "unet")
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(parent / "unet" / "diffusion_pytorch_model.safetensors"))
    return parent


def test_cli_load_takes_the_folder_holding_unet(authors_folder):
    assert unet_folder(authors_folder) == authors_folder / "unet"
    assert unet_folder(authors_folder / "unet") == authors_folder / "unet"
    for folder in (authors_folder, authors_folder / "unet"):
        out = runner.invoke(app, ["diffews", "load", str(folder)])
        assert out.exit_code == 0, out.output
        assert "conv_in_ref: (32, 8, 3, 3)" in out.output and "missing keys: 0" in out.output
        assert str(authors_folder / "unet" / "diffusion_pytorch_model.safetensors") in out.output.replace("\n", "")


def test_eval_checkpoint_takes_the_folder_holding_unet(authors_folder, tmp_path):
    cfg = parse_diffews_config({"eval": {"checkpoint": str(authors_folder)}})
    assert checkpoint_kind(cfg) == (authors_folder / "unet", "unet")
    empty = tmp_path / "empty"
    (empty / "unet").mkdir(parents=True)  # unet/ without config.json: still neither kind, named
    with pytest.raises(FileNotFoundError, match="nor a UNet folder"):
        checkpoint_kind(parse_diffews_config({"eval": {"checkpoint": str(empty)}}))
