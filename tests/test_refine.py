"""Algorithm 1 branches and the OOD filter with scripted segmenters; the refine-class stage in the generate flow."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import diffusion_section

from maskforge.eval.metrics import iou
from maskforge.models.hsnet.checkpoint import CheckpointError, save_checkpoint
from maskforge.models.hsnet.model import HSNetSpec, TinySpec, build_hsnet
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import RefinementConfig, parse_config
from maskforge.tasks.refine import load_segmenter, ood_scores, refine_masks


class OracleSegmenter:
    """Predicts each image's mask from its red channel (> 127), whatever the supports; records conditionings."""

    def __init__(self):
        self.conditioned = []

    def condition(self, supports, base=None):
        self.conditioned.append(len(supports) + (0 if base is None else len(base)))
        return list(base or []) + list(supports)

    def shot_masks(self, state, images):
        truth = torch.from_numpy(np.stack([im[..., 0] > 127 for im in images]))
        return truth[None].expand(len(state), -1, -1, -1)


class CopySegmenter(OracleSegmenter):
    """Predicts every image as its support's mask (so a sample's OOD score is its mask's IoU to the real mask)."""

    def shot_masks(self, state, images):
        return torch.from_numpy(np.stack([np.stack([mask for _ in images]) for _, mask in state]))


def _image(mask):
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    image[mask] = 255
    return image


def _square(top, left, size=8, side=24):
    mask = np.zeros((side, side), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_accepts_consensus_and_reestimates_the_rest():
    seg = OracleSegmenter()
    truth = [_square(2, 2), _square(10, 10), _square(4, 12), _square(14, 3)]
    coarse = [truth[0], np.roll(truth[1], 4, axis=1), truth[2] | _square(5, 13), np.zeros_like(truth[3])]
    real = [(_image(_square(0, 0)), _square(0, 0))]
    results = refine_masks(seg, real, [(_image(t), c) for t, c in zip(truth, coarse)], alpha=0.8, max_added=1)
    assert [r.method for r in results] == ["semi-accepted", "semi-reestimated", "semi-accepted", "semi-reestimated"]
    assert results[0].consensus_iou == 1.0 and results[1].consensus_iou == pytest.approx(iou(truth[1], coarse[1]))
    np.testing.assert_array_equal(results[0].mask, coarse[0])  # accepted: the coarse mask is kept
    np.testing.assert_array_equal(results[2].mask, coarse[2])
    np.testing.assert_array_equal(results[1].mask, truth[1])  # re-estimated: the segmenter's mask
    np.testing.assert_array_equal(results[3].mask, truth[3])  # an empty coarse mask is never accepted
    # conditioned on the real shot, then re-conditioned on it plus max_added = 1 accepted sample
    assert seg.conditioned == [1, 2]


def test_no_acceptance_keeps_the_first_conditioning():
    seg = OracleSegmenter()
    truth = _square(2, 2)
    results = refine_masks(seg, [(_image(truth), truth)], [(_image(truth), np.roll(truth, 6, axis=0))], alpha=0.9)
    assert results[0].method == "semi-reestimated" and seg.conditioned == [1]
    assert refine_masks(seg, [(_image(truth), truth)], []) == []
    with pytest.raises(ValueError, match="no real shots"):
        refine_masks(seg, [], [(_image(truth), truth)])


def test_ood_scores_are_the_one_shot_iou_on_the_real_shots():
    real_mask = _square(4, 4)
    real = [(_image(real_mask), real_mask), (_image(real_mask), real_mask)]
    samples = [
        (_image(real_mask), real_mask),
        (_image(real_mask), _square(4, 8)),
        (_image(real_mask), np.zeros_like(real_mask)),
    ]
    scores = ood_scores(CopySegmenter(), samples, real)
    assert scores == [1.0, pytest.approx(iou(_square(4, 8), real_mask)), 0.0]


def test_refinement_config_and_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="refinement: needs a 'diffusion' section"):
        parse_config({"refinement": {"checkpoint": "x"}})
    with pytest.raises(ConfigError, match="refinement.checkpoint.*Field required"):
        parse_config({"diffusion": {"model": "m"}, "refinement": {}})
    with pytest.raises(CheckpointError, match="not found"):
        load_segmenter(RefinementConfig(checkpoint=str(tmp_path / "missing.safetensors"), device="cpu"))


@pytest.mark.prefect
def test_generate_flow_refines_and_filters(tiny_models, tmp_path, prefect_harness):
    from maskforge.flows.generate import generate

    spec = HSNetSpec("tiny", 64, TinySpec((1, 1, 1, 1), 8, True), 0)
    checkpoint = tmp_path / "hsnet.safetensors"
    save_checkpoint(checkpoint, build_hsnet(spec, None), None)  # random weights: the flow's wiring, not its quality
    config = parse_config(
        {
            "run": {"name": "ref", "out_dir": str(tmp_path / "runs")},
            "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "base": {"subset_size": 10},
            "generation": {"samples_per_class": 1, "classes": ["red disc"]},
            "diffusion": diffusion_section(tiny_models, controlnet={"conditions": ["mask"]}),
            "refinement": {"checkpoint": str(checkpoint), "device": "cpu", "beta": 0.0},
        }
    ).resolved()
    reader = RunReader(generate(config=config)["url"])
    summary = reader.summary
    assert summary["ood_rejected"] == {"red disc": 0}  # beta 0 keeps everything
    record = json.loads((Path(reader.run_url) / "rejected" / "c0001.json").read_text())  # kept for the UI artifacts
    assert record["samples"] == [] and record["beta"] == 0.0 and record["class_name"] == "red disc"
    assert summary["samples_per_class"]["red disc"] == {"real": 1, "text": 2, "cn-mask": 1}
    refined = [s for s in reader if s.meta["source"] != "real"]
    assert {s.key.split("-")[3] for s in refined} == {"text", "cn"}
    shards = {row["shard"] for row in reader.manifest.to_pylist() if row["source"] != "real"}
    assert shards == {"c0001-syn-000000.tar"}
    for s in refined:
        assert s.meta["mask_method"] in ("semi-accepted", "semi-reestimated")
        assert 0.0 <= s.meta["scores"]["consensus_iou"] <= 1.0
        assert s.extras["coarse.png"].shape == s.label.shape
        assert s.meta["refinement"]["starting_mask_method"] == ("xattn" if s.meta["source"] == "text" else "support")
        if s.meta["source"] == "text":
            assert 0.0 <= s.meta["scores"]["ood_iou"] <= 1.0
        if s.meta["mask_method"] == "semi-accepted":
            np.testing.assert_array_equal(s.label == 1, s.extras["coarse.png"])


def test_refine_class_drops_empty_masks_and_ood_samples():
    from maskforge.storage.codec import ShardSample
    from maskforge.tasks.refine import refine_class

    truth = _square(4, 4)
    real = [(_image(truth), truth)]

    def sample(key, source, image_mask, label_mask):
        meta = {"source": source, "mask_method": "xattn", "scores": {}}
        return ShardSample(key, _image(image_mask), np.where(label_mask, 3, 0).astype(np.int32), meta)

    samples = [
        sample("good", "text", truth, truth),
        sample("empty", "cn-mask", np.zeros_like(truth), _square(10, 10)),  # the segmenter finds nothing: empty
        sample("far", "text", _square(14, 14), _square(14, 14)),  # its mask does not segment the real shot
    ]

    class Scripted(OracleSegmenter):
        """Oracle on generated images (refinement), copy of the support's mask on the real shot (OOD filter)."""

        def shot_masks(self, state, images):
            if images[0] is real[0][0]:
                return CopySegmenter.shot_masks(self, state, images)
            return OracleSegmenter.shot_masks(self, state, images)

    cfg = RefinementConfig(checkpoint="x", alpha=0.8, beta=0.5)
    kept, rejected = refine_class(Scripted(), samples, real, 3, cfg)
    assert [s.key for s in kept] == ["good"] and rejected == {"empty": ["empty"], "ood": ["far"]}
    assert kept[0].meta["scores"]["ood_iou"] == 1.0 and kept[0].meta["mask_method"] == "semi-accepted"
    np.testing.assert_array_equal(kept[0].extras["coarse.png"], truth)
