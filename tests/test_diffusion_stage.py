"""The diffusion stage on the tiny models: every mode writes valid samples with provenance, seeds are per item."""

import dataclasses

import numpy as np
import pytest
import torch
from tiny import diffusion_section

import maskforge.models.loading as loading
from maskforge.eval.datasets import build_dataset
from maskforge.models.loading import load_pipelines
from maskforge.models.speedups import is_compiled
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import parse_config
from maskforge.tasks.diffusion import diffusion_samples, generate_items, plan_items
from maskforge.tasks.fold_plan import plan_fold
from maskforge.tasks.prompts import class_word
from maskforge.tasks.write_run import part_url, write_generated_part


def _config(tiny, **diffusion):
    return parse_config(
        {
            "run": {"name": "gen", "seed": 3},
            "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "shots": {"k": 2},
            "base": {"subset_size": 10},
            "generation": {"classes": ["red disc"]},
            "diffusion": diffusion_section(tiny, **diffusion),
        }
    )


@pytest.fixture(scope="module")
def setup(tiny_models):
    config = _config(tiny_models)
    dataset = build_dataset("toy", None, config.dataset.toy)
    plan = plan_fold(dataset, config)
    return config, dataset, plan, load_pipelines(config.diffusion)


def test_plan_items_seeds_and_prompts(tiny_models):
    cfg = _config(tiny_models, controlnet={"per_shot": 2}).diffusion
    items = plan_items(cfg, 3, 1, "red disc", ("s0", "s1"))
    assert [i.source for i in items] == ["text"] * 2 + ["cn-mask"] * 4 + ["cn-hed"] * 4 + ["cn-scribble"] * 4
    assert [i.index for i in items if i.source == "cn-hed"] == [0, 1, 2, 3]
    assert [i.shot_id for i in items if i.source == "cn-hed"] == ["s0", "s0", "s1", "s1"]
    assert items[0].prompt == "a photo of a red disc" and items[0].guidance_scale == 7.5
    assert items[2].prompt == "a real shot photo of red disc, best quality, extremely detailed"
    assert items[2].negative_prompt.startswith("longbody, lowres") and items[2].guidance_scale == 9.0
    assert len({i.seed for i in items}) == len(items)
    # the seed depends on (run seed, class, index, source) only
    again = plan_items(
        cfg.model_copy(update={"text": cfg.text.model_copy(update={"samples": 5})}), 3, 1, "red disc", ("s0", "s1")
    )
    assert again[1].seed == items[1].seed and plan_items(cfg, 4, 1, "red disc", ("s0", "s1"))[0].seed != items[0].seed
    assert class_word("bald_eagle") == "bald eagle"


def test_every_mode_writes_valid_samples(setup, tmp_path):
    config, dataset, plan, _ = setup
    run = str(tmp_path / "run")
    part = write_generated_part(config, plan, 1, run)
    assert part["url"] == part_url(run, 1, "diffusion")
    assert part["samples_per_source"] == {"text": 2, "cn-mask": 2, "cn-hed": 2, "cn-scribble": 2}
    reader = RunReader(part["url"])
    samples = {s.key: s for s in reader}
    assert sorted(samples) == sorted(
        [f"toy-f0-c0001-text-{i:05d}" for i in range(2)]
        + [f"toy-f0-c0001-cn-{k}-{i:05d}" for k in ("mask", "hed", "scribble") for i in range(2)]
    )
    shots = list(plan.novel[0].shot_ids)
    for key, s in samples.items():
        meta = s.meta
        assert s.image.shape == (64, 64, 3) and s.label.shape == (64, 64)
        assert set(np.unique(s.label)) <= {0, 1} and (s.label == 1).any()
        assert s.extras["xattn.npy"].shape == (64, 64) and s.extras["xattn.npy"].dtype == np.float16
        soft = s.extras["xattn.npy"].astype(np.float32)
        assert 0 <= soft.min() and soft.max() == pytest.approx(1.0, abs=1e-3)
        assert meta["model_ids"]["sd"]["id"].endswith("sd") and meta["generation"]["steps"] == 2
        assert meta["generation"]["scheduler"] == "DDIMScheduler" and meta["embedding_id"] is None
        assert meta["xattn"]["factors"] == [2, 4] and meta["xattn"]["threshold"] == 0.4
        if meta["source"] == "text":
            assert meta["mask_method"] == "xattn" and meta["prompt"] == "a photo of a red disc"
            assert meta["xattn"]["token_indices"] == [5, 6] and meta["shot_ids"] == shots
            # the label is the thresholded soft map
            assert abs((s.label == 1).mean() - (soft > 0.4).mean()) < 0.02
            assert set(meta["model_ids"]) == {"sd"} and "control.png" not in s.extras
        else:
            kind = meta["source"].removeprefix("cn-")
            assert meta["mask_method"] == "support" and meta["generation"]["control"] == kind
            assert meta["xattn"]["token_indices"] == [6, 7] and len(meta["shot_ids"]) == 1
            assert meta["shot_ids"][0] in shots and meta["generation"]["guidance_scale"] == 9.0
            # the label is the support mask the image was conditioned on
            shot = dataset.load(meta["shot_ids"][0])
            assert (s.label == 1).sum() == pytest.approx((shot.label == 1).sum(), rel=0.05)  # shots are 64 px too
            assert s.extras["xattn_mask.png"].shape == (64, 64) and s.extras["control.png"].shape == (64, 64)
            assert 0.0 <= meta["scores"]["xattn_support_iou"] <= 1.0
            expected_models = {"sd", f"controlnet-{kind}"} | ({"hed"} if kind != "mask" else set())
            assert set(meta["model_ids"]) == expected_models
            if kind == "scribble":
                assert set(np.unique(s.extras["control.png"])) <= {0, 255}
            if kind == "mask":
                np.testing.assert_array_equal(s.extras["control.png"] > 0, s.label == 1)
    # ControlNet conditions change the images
    assert not np.array_equal(samples["toy-f0-c0001-cn-mask-00000"].image, samples["toy-f0-c0001-cn-hed-00000"].image)


def test_rerun_and_batching_reproduce_items(setup, capsys):
    config, dataset, plan, pipes = setup
    cfg = config.diffusion
    first = diffusion_samples(pipes, dataset, config, plan, plan.novel[0])
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("red disc: diffusion: ")]
    assert progress and progress[-1].startswith(f"red disc: diffusion: {len(first)}/{len(first)} images")
    second = diffusion_samples(pipes, dataset, config, plan, plan.novel[0])
    for a, b in zip(first, second):
        assert a.key == b.key and np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    # one item generated on its own equals the same item generated inside a batch (up to float rounding)
    items = plan_items(cfg, config.run.seed, 1, "red disc", plan.novel[0].shot_ids)
    alone = generate_items(pipes, [items[1]], "red disc", cfg.model_copy(update={"batch_size": 1}), {})
    batch = [s for s in first if s.key.endswith("text-00001")][0]
    assert np.abs(alone[0].image.astype(int) - batch.image.astype(int)).max() <= 2


def test_config_errors_name_the_field(tiny_models):
    with pytest.raises(ConfigError, match=r"diffusion.text.*must contain \{class\} exactly once"):
        _config(tiny_models, text={"template": "a photo of something"})
    with pytest.raises(ConfigError, match=r"diffusion.embedding.*must contain \{token\} exactly once"):
        _config(tiny_models, embedding={"template": "a photo of a {class}"})
    with pytest.raises(ConfigError, match=r"conditions \['hed'\] have no ControlNet in models"):
        _config(tiny_models, controlnet={"conditions": ["hed"], "models": {}})
    with pytest.raises(ConfigError, match="hed_annotator is required"):
        _config(tiny_models, controlnet={"hed_annotator": None})
    with pytest.raises(ConfigError, match="factors must be distinct powers of two"):
        _config(tiny_models, xattn={"factors": [3]})
    with pytest.raises(ConfigError, match=r"diffusion.model.*Field required"):
        parse_config({"diffusion": {}})


def test_out_of_memory_retries_the_batch_at_half_size(setup, monkeypatch):

    import maskforge.tasks.diffusion as diffusion

    config, dataset, plan, pipes = setup
    cfg = config.diffusion.model_copy(
        update={"batch_size": 4, "text": config.diffusion.text.model_copy(update={"samples": 4})}
    )
    items = plan_items(
        cfg.model_copy(update={"controlnet": cfg.controlnet.model_copy(update={"conditions": ()})}),
        config.run.seed,
        1,
        "red disc",
        plan.novel[0].shot_ids,
    )
    real = diffusion.generate_batch
    sizes = []

    def small_gpu(pipe, batch, *args, **kwargs):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pipe, batch, *args, **kwargs)

    monkeypatch.setattr(diffusion, "generate_batch", small_gpu)
    out = generate_items(pipes, items, "red disc", cfg, {})
    assert sizes == [4, 2, 1, 1, 2, 1, 1] and [g.item.index for g in out] == [0, 1, 2, 3]
    monkeypatch.setattr(diffusion, "generate_batch", real)
    whole = generate_items(pipes, items, "red disc", cfg, {})
    for a, b in zip(out, whole):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2 and a.item == b.item


def test_the_stage_compiles_once_per_process(tiny_models, tmp_path, monkeypatch, capsys):
    """cached_pipelines keeps the compiled models: a second class task compiles nothing and logs no compile line."""
    real = loading.resolve_speedups
    monkeypatch.setattr(
        loading, "resolve_speedups", lambda cfg, device: dataclasses.replace(real(cfg, device), backend="aot_eager")
    )
    monkeypatch.setattr(loading, "_CACHE", {})
    section = diffusion_section(tiny_models, compile=True, controlnet={"conditions": []}, text={"samples": 2})
    config = parse_config(
        {
            "run": {"out_dir": str(tmp_path)},
            "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "generation": {"classes": ["red disc"]},
            "diffusion": section,
        }
    )
    dataset = build_dataset("toy", None, config.dataset.toy)
    plan = plan_fold(dataset, config)
    pipes = loading.cached_pipelines(config.diffusion)
    assert pipes.speedups.plan.compile and pipes.compile_seconds == 0.0
    first = diffusion_samples(pipes, dataset, config, plan, plan.novel[0])
    printed = [line for line in capsys.readouterr().out.splitlines() if "compiled" in line]
    assert len(printed) == 1 and printed[0].startswith("red disc: diffusion: compiled 1 graph(s) in ")
    assert printed[0].endswith("(paid once per process); compile default")
    seconds = pipes.compile_seconds
    assert seconds > 0
    assert loading.cached_pipelines(config.diffusion) is pipes  # the next class task of the process
    second = diffusion_samples(pipes, dataset, config, plan, plan.novel[0])
    assert pipes.compile_seconds == seconds and "compiled" not in capsys.readouterr().out
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
    # the speed settings are part of the cache key: turning compile off loads eager models
    eager = loading.cached_pipelines(config.diffusion.model_copy(update={"compile": False}))
    assert eager is not pipes and not is_compiled(eager.sd.unet)
