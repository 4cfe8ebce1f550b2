"""GFSS stages on a tiny toy world: base stage, novel stage (finetune / gaps, ± a synthetic run), PIFS evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import toy_run

from maskforge.eval.datasets.base import DatasetError, ImageRecord
from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.folds import toy_fold
from maskforge.eval.gfss_protocol import ClassMap
from maskforge.models.gfss.checkpoint import load_gfss, save_gfss
from maskforge.models.gfss.network import GfssSpec, build_gfss, masked_average_pool
from maskforge.storage.results import append_results, read_results
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.gfss.base import train_gfss_base, train_steps
from maskforge.tasks.gfss.config import parse_gfss_config
from maskforge.tasks.gfss.evaluate import benchmark_rows, eval_gfss, score_checkpoint, trend_markdown
from maskforge.tasks.gfss.feed import BaseFeed, NovelData, NovelFeed, normalize
from maskforge.tasks.gfss.novel import (
    _finetune,
    base_images,
    class_vectors,
    load_base,
    random_buffer,
    replay_buffer,
    train_gfss_novel,
)
from maskforge.tasks.gfss.preflight import base_image_ids, base_schedule, open_fold

TOY = {"seed": 0, "image_size": 48, "n_train": 80, "n_val": 6}
FOLD = toy_fold(0)


def config(tmp: Path, **sections) -> dict:
    """A tiny GFSS config: 48 px toy world, tiny net, a few steps everywhere."""
    data = {
        "run": {"name": "t", "out_dir": str(tmp / "runs"), "device": "cpu", "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": TOY},
        "model": {"backbone": "tiny", "aspp_channels": 16, "aspp_rates": [1, 2, 3], "tiny_width": 4},
        "base": {"steps": 3, "batch_size": 4, "crop_size": 48, "log_every": 1},
        "novel": {"runs": 1, "iterations": 2, "batch_size": 4, "workers": 0, "buffer_size": 12, "buffer_images": 30},
        "eval": {"max_images": 3, "results_dir": str(tmp / "results")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def synthetic_run(url: str, classes=FOLD.novel, dataset="toy", fold=0, source="text", toy=TOY) -> str:
    """Write a complete maskforge-format run of object-centric toy samples (2 per class) with a dataset section."""
    return toy_run(url, classes, 2, dataset, fold, toy, source, size=40, max_count=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base model of the tiny config (trained once for the module)."""
    tmp = tmp_path_factory.mktemp("gfss")
    cfg = parse_gfss_config(config(tmp))
    report = train_gfss_base(cfg, log=lambda m: None)
    return tmp, cfg, report


def test_base_stage_trains_on_a_leakage_free_set_and_is_not_retrained(trained):
    tmp, cfg, report = trained
    dataset, fold = open_fold(cfg)
    ids = base_image_ids(dataset, "train", fold)
    assert report["base_images"] == len(ids) and 0 < len(ids) < TOY["n_train"]
    for image_id in ids:  # not a single novel pixel
        assert not set(dataset.load(image_id).class_ids) & set(fold.novel)
    net, meta = load_gfss(report["checkpoint"])
    assert net.spec.num_classes == 1 + len(FOLD.base) == 13
    assert meta["config"]["base"]["steps"] == 3 and meta["extra"]["stage"] == "base"
    again = train_gfss_base(cfg, log=lambda m: None)
    assert again["checkpoint"] == report["checkpoint"] and again["seconds"] == report["seconds"]


@pytest.mark.parametrize("method", ["finetune", "gaps", "shot-only"])
def test_novel_stage_and_evaluation(trained, method):
    tmp, _, base = trained
    syn = synthetic_run(str(tmp / f"syn-{method}"))
    cfg = parse_gfss_config(config(tmp, novel={"method": method, "synthetic_runs": [syn]}))
    report = train_gfss_novel(cfg, log=lambda m: None)
    assert report["setting"] == f"{method}+synthetic"
    assert report["task_stream"] == [[1], [6], [11], [16]]
    (run,) = report["runs"]
    assert all(len(ids) == 1 for ids in run["shots"].values())  # 1-shot, one image per novel class
    for s, step in enumerate(run["steps"]):
        net, meta = load_gfss(step["checkpoint"])
        assert net.spec.num_classes == 13 + s + 1  # one class learned per step
        assert meta["extra"]["class_map"]["novel"] == [1, 6, 11, 16][: s + 1]
    assert report["buffer_images"] == (0 if method == "shot-only" else 12)  # finetune pastes too (AlignDiff D.3)
    result = eval_gfss(cfg, log=lambda m: None)
    assert result["images"] == 3 and len(result["runs"][0]["steps"]) == 4
    s = result["summary"]
    for key in ("base_miou", "novel_miou", "hm", "base_miou_last", "hm_last"):
        assert 0.0 <= s[key] <= 1.0
    (row,) = benchmark_rows(cfg, result)
    assert row["protocol"] == "gfss-pifs" and row["model"] == f"gfss-{method}" and row["runs"] == 1
    assert row["metrics"]["hm"] == pytest.approx(s["hm"]) and row["synthetic_source"] == syn


def test_feed_labels(trained):
    tmp, cfg, _ = trained
    class_map = ClassMap(tuple(FOLD.base), (1,))
    dataset, _ = open_fold(cfg)
    shot = dataset.class_index("train")[1][0]
    common = dict(
        dataset=cfg.dataset, fold_novel=FOLD.novel, class_map=class_map, step_classes=(1,),
        shots={1: [shot]}, crop=48, scale=(0.5, 2.0), paste_scale=(0.1, 2.0), seed=0,
    )  # fmt: skip
    ft = iter(NovelFeed(NovelData(method="shot-only", **common)))
    for _ in range(4):  # a real shot's annotation: its class (model id 13) and background; ignore from padding
        image, label = next(ft)
        assert image.shape == (3, 48, 48) and set(label.unique().tolist()) <= {-1, 0, 13}
    buffer = base_image_ids(dataset, "train", FOLD)[:5]
    gaps = iter(NovelFeed(NovelData(method="gaps", buffer=buffer, p_vrfs=1.0, **common)))
    seen = set()
    for _ in range(6):
        _, label = next(gaps)
        seen |= set(label.unique().tolist())
    assert 13 in seen and seen - {-1, 0, 13}  # the pasted class on base images with their base labels


def test_eval_refuses_an_image_whose_mask_size_differs(trained):
    net = build_gfss(GfssSpec("tiny", 13, aspp_channels=16, aspp_rates=(1, 2, 3))).eval()
    bad = ImageRecord("val_000001", np.zeros((48, 48, 3), np.uint8), np.zeros((40, 48), np.int32))
    with pytest.raises(DatasetError, match="val_000001.*differs"):
        score_checkpoint(net, ClassMap(tuple(FOLD.base), ()), FOLD.novel, [bad], torch.device("cpu"))


def test_bad_inputs_are_named(trained, tmp_path):
    tmp, _, base = trained
    bad_classes = str(tmp_path / "five.safetensors")
    save_gfss(bad_classes, build_gfss(GfssSpec("tiny", 5, aspp_channels=16, aspp_rates=(1, 2, 3))), {})
    with pytest.raises(ConfigError, match=r"five.safetensors: the base checkpoint has 5 classes.*needs 13"):
        train_gfss_novel(parse_gfss_config(config(tmp, base={"checkpoint": bad_classes})), log=lambda m: None)
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="synthetic_runs.*nope"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [missing]})), log=lambda m: None)
    (tmp_path / "partial").mkdir()
    with pytest.raises(ConfigError, match="partial.*incomplete"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [str(tmp_path / "partial")]})))
    other_fold = synthetic_run(str(tmp_path / "f1"), fold=1)
    with pytest.raises(ConfigError, match="f1 is a run of toy fold 1; this config reads toy fold 0"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [other_fold]})))
    other_world = synthetic_run(str(tmp_path / "w1"), toy={**TOY, "seed": 1})
    with pytest.raises(ConfigError, match="w1 renders another toy world"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [other_world]})))
    more_images = synthetic_run(str(tmp_path / "n"), toy={**TOY, "n_train": 500}, classes=(1,))
    with pytest.raises(ConfigError, match="n holds no generated sample of class 6"):  # same world: checked further
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [more_images]})))
    lacking = synthetic_run(str(tmp_path / "lack"), classes=(1, 6))
    with pytest.raises(ConfigError, match=r"lack holds no generated sample of class 11; it holds \{1: 2, 6: 2\}"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [lacking]})))
    real_only = synthetic_run(str(tmp_path / "real"), source="real")
    with pytest.raises(ConfigError, match="no generated sample of class 1"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [real_only]})))
    with pytest.raises(ValueError, match=r"novel.shots: 50 shots of class 1 \(red disc\)"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"shots": 50})), log=lambda m: None)
    with pytest.raises(ConfigError, match="novel stage of this config has not completed"):
        eval_gfss(parse_gfss_config(config(tmp, novel={"iterations": 7})))
    assert not list(Path(tmp / "results").glob("*.parquet")) if (tmp / "results").exists() else True


def test_config_is_validated_before_work(tmp_path):
    with pytest.raises(ConfigError, match="base.scale"):
        parse_gfss_config(config(tmp_path, base={"scale": [2.0, 1.0]}))
    with pytest.raises(ConfigError, match="fss"):
        parse_gfss_config({**config(tmp_path), "dataset": {"name": "fss", "root": "/x"}})
    with pytest.raises(ConfigError, match="novel.method"):
        parse_gfss_config(config(tmp_path, novel={"method": "pifs"}))
    with pytest.raises(ConfigError, match="model.weights must be empty"):
        parse_gfss_config(config(tmp_path, model={"weights": "/w.pth"}))
    with pytest.raises(ConfigError, match="base.batch_size"):  # used to fail at the first step (ASPP pooling's BN)
        parse_gfss_config(config(tmp_path, base={"batch_size": 1}))
    with pytest.raises(ConfigError, match="base.checkpoint is set"):
        train_gfss_base(parse_gfss_config(config(tmp_path, base={"checkpoint": "/x.pt"})))
    a = parse_gfss_config(config(tmp_path))
    b = parse_gfss_config(config(tmp_path, novel={"workers": 3}))
    c = parse_gfss_config(config(tmp_path, novel={"method": "finetune"}))
    assert a.novel_dir() == b.novel_dir() != c.novel_dir() and a.base_dir() == c.base_dir()


def test_trend_lists_gfss_rows(tmp_path):
    cfg = parse_gfss_config(config(tmp_path))
    folder = str(tmp_path / "results")

    def result(setting: str, hm: float) -> dict:
        summary = {k: 0.5 for k in ("base_miou", "novel_miou", "base_miou_last", "novel_miou_last", "hm_last")}
        summary = {**summary, "hm": hm, **{f"{k}_std": 0.0 for k in (*summary, "hm")}}
        return {
            "method": setting.split("+")[0], "backbone": "tiny", "checkpoint": "b.safetensors", "dataset": "toy",
            "fold": 0, "split": "val", "shots": 1, "setting": setting, "synthetic_runs": [], "images": 6,
            "runs": [{}, {}], "summary": summary, "class_iou_last": {"0": 0.9},
        }  # fmt: skip

    append_results(folder, benchmark_rows(cfg, result("gaps", 0.40)))
    append_results(folder, benchmark_rows(cfg, result("gaps", 0.45)) + benchmark_rows(cfg, result("finetune", 0.2)))
    text = trend_markdown(read_results(folder), "toy", 0, 1)
    assert text.startswith("# GFSS trend: toy fold 0, 1-shot")
    gaps = text.split("## gaps\n")[1]
    assert "| 2 | 50.00 | 50.00 | 40.00 |  |" in gaps and "| 2 | 50.00 | 50.00 | 45.00 | +5.00 |" in gaps
    assert "## finetune" in text and "20.00" in text.split("## gaps")[0]
    assert trend_markdown(read_results(folder), "toy", 1, 1).count("|") == 0  # other folds are other trends


def test_imprinting_sets_the_new_row_to_the_shots_mean_prototype(trained):
    tmp, cfg, base = trained
    net, _ = load_gfss(base["checkpoint"])
    dataset, _ = open_fold(cfg)
    shots = dataset.class_index("train")[6][:2]
    vectors = class_vectors(net, dataset, shots, 6, torch.device("cpu"))
    by_hand, old_way = [], []
    for image_id in shots:  # GAPS: features upsampled to the mask, L2-normalised per pixel, averaged over the mask
        record = dataset.load(image_id)
        feats = net.features(normalize([record.image])).detach()
        mask = torch.from_numpy(record.label == 6)
        up = torch.nn.functional.interpolate(feats, size=mask.shape, mode="bilinear", align_corners=False)[0]
        unit = up / (up.norm(dim=0, keepdim=True) + 1e-5)  # (C, H, W)
        by_hand.append(unit[:, mask].sum(1) / (mask.sum() + 1e-5))
        pooled = masked_average_pool(feats, mask[None])  # pooling at the feature stride, normalised after
        old_way.append(torch.nn.functional.normalize(pooled, dim=1)[0])
    torch.testing.assert_close(vectors, torch.stack(by_hand), atol=1e-5, rtol=1e-4)
    assert vectors.shape == (2, 16)
    # the vectors are means of unit vectors (norm < 1), not re-normalised pools: the old reading differs
    assert float(vectors.norm(dim=1).max()) < 0.9999
    assert not torch.allclose(vectors, torch.stack(old_way), atol=1e-3)
    prototype = torch.nn.functional.normalize(vectors.mean(0, keepdim=True), dim=1)
    head = net.head.expanded(14, prototype)
    weights = head.pixel_classifier.class_mat.weight.detach().flatten(1)
    torch.testing.assert_close(weights[:13], net.head.pixel_classifier.class_mat.weight.detach().flatten(1))
    torch.testing.assert_close(weights[13], prototype[0])
    # a feature equal to the prototype scores the new class at the head's scale (cosine 1)
    logits = head(prototype[0].view(1, -1, 1, 1))
    assert float(logits[0, 13, 0, 0].detach()) == pytest.approx(10.0, abs=1e-4)


def test_a_base_checkpoint_of_another_backbone_is_refused(trained):
    tmp, _, base = trained
    cfg = parse_gfss_config(config(tmp, model={"backbone": "resnet101"}, base={"checkpoint": base["checkpoint"]}))
    with pytest.raises(ConfigError, match="holds a tiny backbone; model.backbone says 'resnet101'"):
        train_gfss_novel(cfg, log=lambda m: None)


def test_the_replay_buffer_depends_on_the_weights_not_the_output_folder(trained, tmp_path):
    tmp, cfg, base = trained
    other = parse_gfss_config(config(tmp_path))  # the same config written elsewhere: same weights, other metadata
    moved = train_gfss_base(other, log=lambda m: None)
    first, ckpt = load_base(cfg, FOLD)
    second, moved_ckpt = load_base(other, FOLD)
    assert moved_ckpt != ckpt and moved["checkpoint"] == moved_ckpt
    dataset, _ = open_fold(cfg)
    device = torch.device("cpu")
    a = replay_buffer(cfg, first, ckpt, dataset, FOLD, device, log=lambda m: None)
    b = replay_buffer(other, second, moved_ckpt, dataset, FOLD, device, log=lambda m: None)
    assert a == b and len(a) == 12  # novel.buffer_size of the tiny config
    assert not set(a) & {i for c in FOLD.novel for i in dataset.class_index("train")[c]}  # base images only


def _norm_state(net) -> dict[str, torch.Tensor]:
    """Every BatchNorm tensor (weight, bias, running mean and var) of a network, cloned."""
    out = {}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for key in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{key}"] = getattr(module, key).detach().clone()
    return out


@pytest.mark.parametrize("method", ["gaps", "shot-only"])
def test_a_novel_step_leaves_every_batchnorm_tensor_bit_identical(trained, method):
    """GAPS freezes every norm in the novel stage: eval mode and no affine gradient (fs_incremental_trainer.py:419)."""
    tmp, _, base = trained
    cfg = parse_gfss_config(config(tmp, novel={"method": method, "iterations": 3, "lr_backbone": 0.5}))
    net, _ = load_gfss(base["checkpoint"])
    before = _norm_state(net)
    assert len(before) == 4 * 22  # 22 norm layers in the tiny net (stem, 4 bottlenecks, downsamples, ASPP)
    dataset, _ = open_fold(cfg)
    class_map = ClassMap(tuple(FOLD.base), (1,))
    shot = dataset.class_index("train")[1][0]
    net.replace_head(net.head.expanded(class_map.num_classes, None))
    data = NovelData(
        dataset=cfg.dataset, fold_novel=FOLD.novel, class_map=class_map, step_classes=(1,), method=method,
        shots={1: [shot]}, crop=48, scale=(0.5, 2.0), paste_scale=(0.1, 2.0), seed=0,
        buffer=base_image_ids(dataset, "train", FOLD)[:5], p_vrfs=1.0,
    )  # fmt: skip
    convs = {k: v.detach().clone() for k, v in net.backbone.named_parameters() if "conv" in k}
    losses = _finetune(cfg, net, NovelFeed(data), torch.device("cpu"), lambda m: None, "step")
    assert len(losses) == 3
    after = _norm_state(net)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert any(not torch.equal(v, dict(net.backbone.named_parameters())[k]) for k, v in convs.items())  # it trained
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(not m.weight.requires_grad and not m.bias.requires_grad for m in norms)


def test_novel_sgd_has_no_weight_decay_by_default(trained, monkeypatch):
    """GAPS's fine-tuning SGD has momentum and no weight decay (fs_incremental_trainer.py:427)."""
    tmp, _, base = trained
    cfg = parse_gfss_config(config(tmp, novel={"method": "shot-only", "iterations": 1}))
    assert cfg.novel.weight_decay == 0.0
    made = []

    class Spy(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            made.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    net, _ = load_gfss(base["checkpoint"])
    dataset, _ = open_fold(cfg)
    class_map = ClassMap(tuple(FOLD.base), (1,))
    net.replace_head(net.head.expanded(class_map.num_classes, None))
    data = NovelData(
        dataset=cfg.dataset, fold_novel=FOLD.novel, class_map=class_map, step_classes=(1,), method="shot-only",
        shots={1: [dataset.class_index("train")[1][0]]}, crop=48, scale=(0.5, 2.0), paste_scale=(0.1, 2.0), seed=0,
    )  # fmt: skip
    _finetune(cfg, net, NovelFeed(data), torch.device("cpu"), lambda m: None, "step")
    assert made == [{"momentum": 0.9, "weight_decay": 0.0}]


def test_finetune_pastes_onto_random_base_images_without_context(trained):
    """AlignDiff D.3: FINETUNE = GAPS's copy-paste onto buffer_size random base images, no guided buffer, no context
    sampling; shot-only keeps the real shot alone."""
    tmp, _, base = trained
    cfg = parse_gfss_config(config(tmp, novel={"method": "finetune"}))
    dataset, _ = open_fold(cfg)
    pool = base_image_ids(dataset, "train", FOLD)[:30]  # novel.buffer_images of the tiny config
    chosen = random_buffer(cfg, dataset, FOLD)
    assert len(chosen) == len(set(chosen)) == 12 and set(chosen) <= set(pool)
    assert chosen == random_buffer(cfg, dataset, FOLD)  # seeded
    net, ckpt = load_base(cfg, FOLD)
    guided = replay_buffer(cfg, net, ckpt, dataset, FOLD, torch.device("cpu"), log=lambda m: None)
    assert base_images(cfg, net, ckpt, dataset, FOLD, "cpu", print) == chosen != guided
    shot_only = parse_gfss_config(config(tmp, novel={"method": "shot-only"}))
    assert base_images(shot_only, net, ckpt, dataset, FOLD, "cpu", print) == []
    report = train_gfss_novel(cfg, log=lambda m: None)
    assert report["setting"] == "finetune" and report["buffer_images"] == 12
    # the finetune feed: base images with their base labels, the shot's class pasted on some of them
    class_map = ClassMap(tuple(FOLD.base), (1,))
    shot = dataset.class_index("train")[1][0]
    data = NovelData(
        dataset=cfg.dataset, fold_novel=FOLD.novel, class_map=class_map, step_classes=(1,), method="finetune",
        shots={1: [shot]}, crop=48, scale=(0.5, 2.0), paste_scale=(0.1, 2.0), seed=0, buffer=chosen, p_vrfs=0.5,
        context_prob=0.0,
    )  # fmt: skip
    feed = iter(NovelFeed(data))
    labels = [set(next(feed)[1].unique().tolist()) for _ in range(16)]
    assert any(13 in s for s in labels) and any(13 not in s for s in labels)  # pasted with p, pure replay otherwise
    assert any(s - {-1, 0, 13} for s in labels)  # base classes of the base images


def test_base_schedule_in_epochs_with_poly_per_epoch(tmp_path):
    """GAPS's base yaml: epochs of drop-last batches (steps from the base set's size), poly lr once per epoch."""
    cfg = parse_gfss_config(config(tmp_path, base={"steps": 0, "epochs": 3, "batch_size": 4}))
    assert parse_gfss_config({}).base.epochs == 20 and parse_gfss_config({}).base.steps == 0
    assert base_schedule(cfg, 42) == (3 * 10, 10)  # 42 // 4 = 10 full batches per epoch, 2 images dropped
    fixed = parse_gfss_config(config(tmp_path, base={"steps": 7}))
    assert base_schedule(fixed, 42) == (7, 1)
    with pytest.raises(ConfigError, match="base.batch_size: 4 is more than the 3 base images"):
        base_schedule(cfg, 3)
    net = torch.nn.Linear(2, 3)
    seen = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    batches = iter([(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))] * 30)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 1)

        def forward(self, x):
            return self.conv(x)

    net = Net()
    train_steps(net, batches, 30, Recorder(net.parameters(), lr=0.1), [0.1], 0.9, "cpu", False, print, 100, 10)
    want = [0.1 * (1 - e / 3) ** 0.9 for e in range(3) for _ in range(10)]
    assert seen == pytest.approx(want)  # constant within an epoch


def test_base_feed_epochs_are_permutations_cut_to_full_batches():
    ids = [f"img{i}" for i in range(10)]
    feed = BaseFeed(DatasetConfig(name="toy", toy=TOY), ids, ClassMap(tuple(FOLD.base)), FOLD.novel, 48, (1, 1), 0, 8)
    order = feed._order(np.random.default_rng(0))
    first, second = [next(order) for _ in range(8)], [next(order) for _ in range(8)]
    assert len(set(first)) == 8 and len(set(second)) == 8 and first != second  # no repeat inside an epoch
    uniform = BaseFeed(DatasetConfig(name="toy", toy=TOY), ids, ClassMap(tuple(FOLD.base)), FOLD.novel, 48, (1, 1), 0)
    draws = uniform._order(np.random.default_rng(0))
    assert len({next(draws) for _ in range(8)}) < 8  # with replacement (seed 0)
    with pytest.raises(ValueError, match="epoch_items must be in 0..10, got 11"):
        BaseFeed(DatasetConfig(name="toy", toy=TOY), ids, ClassMap(tuple(FOLD.base)), FOLD.novel, 48, (1, 1), 0, 11)


def test_two_cold_runs_give_identical_numbers(tmp_path):
    """Same command, same numbers: base stage, novel stage (a DataLoader worker feeding GAPS's copy-paste) and the
    evaluation, run twice from nothing into two folders, give bit-identical scores and weights."""
    results = []
    for name in ("a", "b"):
        folder = tmp_path / name
        cfg = parse_gfss_config(config(folder, novel={"method": "gaps", "workers": 1}))
        train_gfss_base(cfg, log=lambda m: None)
        report = train_gfss_novel(cfg, log=lambda m: None)
        result = eval_gfss(cfg, log=lambda m: None)
        net, _ = load_gfss(report["runs"][0]["steps"][-1]["checkpoint"])
        results.append((result["runs"], result["summary"], net.state_dict()))
    (runs_a, summary_a, weights_a), (runs_b, summary_b, weights_b) = results
    assert runs_a == runs_b and summary_a == summary_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_failing_stage_stops_its_data_workers_before_its_error_leaves_it(tmp_path):
    """The error's traceback holds the stage's frames (Prefect keeps a failed task's exception): workers held by them
    lived until interpreter exit, where their kill printed `DataLoader worker exited unexpectedly` after the error."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cfg = parse_gfss_config(config(tmp_path, base={"workers": 1, "steps": 5}))

    def log(line: str) -> None:
        if line.startswith("step 2/"):
            raise RuntimeError("cut short")

    with pytest.raises(RuntimeError, match="cut short") as caught:
        train_gfss_base(cfg, log=log)
    assert caught.tb is not None  # the traceback, and the frames it holds, are alive here
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert not left, left


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_data_workers_forked_after_a_prefect_flow_end_cleanly(tmp_path):
    """A Prefect flow leaves thread-exit hooks in the process (its API log and event services); a DataLoader worker
    forked after it ran them at its end and failed with exit code 1, which torch reported as "DataLoader worker
    exited unexpectedly": under `maskforge gfss ...` (a flow) every stage with data workers did."""
    from prefect import flow

    @flow
    def a_flow() -> int:
        return 1

    assert a_flow() == 1
    cfg = parse_gfss_config(config(tmp_path, base={"workers": 1, "steps": 2}))
    report = train_gfss_base(cfg, log=lambda m: None)
    assert report["complete"] and len(report["losses"]) == 2
