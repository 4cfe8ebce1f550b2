"""Normalized masked textual inversion: Eq. 3 by hand, only v* changes, the loss falls, the bank round-trips."""

import numpy as np
import pytest
import torch
from tiny import diffusion_section, sd_pipeline

from maskforge.eval.datasets import build_dataset
from maskforge.eval.datasets.config import ToyConfig
from maskforge.models.diffusion_config import EmbeddingModeConfig
from maskforge.models.loading import load_pipelines
from maskforge.models.speedups import SpeedupPlan, apply_speedups
from maskforge.models.textual_inversion import (
    Draws,
    InversionProblem,
    latent_mask,
    learn_embedding,
    load_embeddings,
    masked_noise_loss,
    token_position,
    unload_embeddings,
)
from maskforge.storage.embeddings import STORED_TOKEN, EmbeddingMissingError, read_embedding, save_embedding
from maskforge.storage.labels import binary_mask
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import parse_config
from maskforge.tasks.diffusion import diffusion_samples
from maskforge.tasks.fold_plan import plan_fold
from maskforge.tasks.textual_inversion import shot_embedding


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return sd_pipeline(tiny_models["sd"])


@pytest.fixture(scope="module")
def shot():
    dataset = build_dataset("toy", None, ToyConfig(image_size=64, n_train=20, n_val=4))
    record = dataset.load("train_000001")
    cid = record.class_ids[0]
    return record.image, binary_mask(record.label, cid)


def test_loss_equals_a_hand_computation():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    fg = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    # sample 0: fg mean (1) = 1; bg mean (4 + 9 + 16) / 3 = 29/3; sample 1: fg 1, bg 1
    expected = torch.tensor([1.0 + 0.6 * 29 / 3, 1.0 + 0.6 * 1.0])
    torch.testing.assert_close(masked_noise_loss(pred, target, fg, 0.6), expected)
    # two channels: each region's sum divides by pixels x channels
    two = masked_noise_loss(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2) * 2, fg[:1], 0.5)
    torch.testing.assert_close(two, torch.tensor([4.0 + 0.5 * 4.0]))


def test_empty_regions_give_no_nan():
    pred, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    fg = torch.stack([torch.zeros(3, 3), torch.ones(3, 3)])  # sample 0: no foreground; sample 1: no background
    loss = masked_noise_loss(pred, target, fg, 0.6)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, torch.tensor([0.6, 1.0]))  # only the region that exists counts
    with pytest.raises(ValueError, match="shapes"):
        masked_noise_loss(pred, target, fg[:1], 0.6)


def test_latent_mask_rules():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:3] = True  # 3 of 4 columns of the top-left 4x4 cell
    area = latent_mask(mask, (2, 2), "area", 0.5)
    assert area.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert latent_mask(mask, (2, 2), "area", 0.8).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert latent_mask(mask, (2, 2), "nearest", 0.5).tolist() == [[1.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="unknown rule 'bilinear'"):
        latent_mask(mask, (2, 2), "bilinear", 0.5)


def test_token_sits_at_the_adjective_position(pipe):
    ids, position = token_position(pipe.tokenizer, "a photo of a {token} {class}", "red disc", "good")
    good = pipe.tokenizer("good", add_special_tokens=False).input_ids[0]
    # <start> a photo of a v* red disc <end>
    assert position == 5 and ids[position] == good
    assert ids[1:5] == pipe.tokenizer("a photo of a", add_special_tokens=False).input_ids
    assert ids[6:8] == pipe.tokenizer("red disc", add_special_tokens=False).input_ids
    assert len(ids) == 77
    with pytest.raises(ValueError, match="initializer 'goodness gracious' must be one token"):
        token_position(pipe.tokenizer, "a photo of a {token} {class}", "red disc", "goodness gracious")
    with pytest.raises(ConfigError, match=r"\{token\} must come before \{class\}"):
        parse_config({"diffusion": {"model": "x", "embedding": {"template": "a {class} {token}"}}})


def test_only_v_changes_and_the_loss_falls(pipe, shot):
    image, mask = shot
    weights = {name: p.detach().clone() for name, p in pipe.text_encoder.named_parameters()}
    unet_before = {name: p.detach().clone() for name, p in pipe.unet.named_parameters()}
    cfg = EmbeddingModeConfig(steps=40, learning_rate=5e-2)
    learned = learn_embedding(pipe, image, mask, "red disc", cfg, seed=0)
    assert len(learned.losses) == 40 and all(np.isfinite(learned.losses))
    # the text encoder (embedding matrix included) and the UNet are byte-identical, and hold no gradients
    for name, p in pipe.text_encoder.named_parameters():
        assert torch.equal(p, weights[name]) and p.grad is None, name
    for name, p in pipe.unet.named_parameters():
        assert torch.equal(p, unet_before[name]) and p.grad is None, name
    problem = InversionProblem(pipe, image, mask, "red disc", cfg)
    assert not torch.equal(learned.vector, problem.initial.cpu())
    # on the same fixed draws, the learned vector has a lower Eq. 3 loss than its initialisation ("good")
    before, after = (
        problem.evaluate(problem.initial, seed=123, draws=64),
        problem.evaluate(learned.vector, seed=123, draws=64),
    )
    assert after < before, (before, after)


def test_early_stop_and_reproducibility(pipe, shot):
    image, mask = shot
    cfg = EmbeddingModeConfig(steps=20, learning_rate=1e-2)
    a = learn_embedding(pipe, image, mask, "red disc", cfg, seed=7)
    b = learn_embedding(pipe, image, mask, "red disc", cfg, seed=7)
    assert torch.equal(a.vector, b.vector) and a.losses == b.losses
    stopped = learn_embedding(pipe, image, mask, "red disc", cfg.model_copy(update={"early_stop_patience": 3}), seed=7)
    assert 3 <= len(stopped.losses) < 20


def test_draws_in_chunks_equal_step_by_step_draws(pipe, shot):
    """A GPU draws 50 steps at a time (one copy per chunk): the values are those of drawing step by step."""
    image, mask = shot
    problem = InversionProblem(pipe, image, mask, "red disc", EmbeddingModeConfig())
    one = Draws(problem, torch.Generator().manual_seed(3), 4)
    chunked = Draws(problem, torch.Generator().manual_seed(3), 4, chunk=7)
    assert one.chunk == 1  # on CPU: no prefetch
    for _ in range(10):
        a, b = one.next(), chunked.next()
        assert all(torch.equal(x, y) for x, y in zip(a.parts(), b.parts()))
    assert a.view.shape == (4,) and a.eps.shape == (4, 4, 16, 16) and a.t.max() < 1000


def test_loss_is_read_only_every_log_every_steps(pipe, shot):
    image, mask = shot
    cfg = EmbeddingModeConfig(steps=11, learning_rate=1e-2)
    seen = []
    learned = learn_embedding(
        pipe, image, mask, "red disc", cfg, seed=2, on_step=lambda *a: seen.append(a), log_every=4
    )
    assert [step for step, _ in seen] == [4, 8, 11]
    assert [loss for _, loss in seen] == [learned.losses[i - 1] for i in (4, 8, 11)]
    assert len(learned.losses) == 11


def test_compiled_unet_learns_the_same_embedding(tiny_models, shot):
    """With the UNet forward (and its backward) compiled, v* follows the eager run up to float rounding."""
    image, mask = shot
    cfg = EmbeddingModeConfig(steps=6, learning_rate=1e-2)
    sd = sd_pipeline(tiny_models["sd"])
    eager = learn_embedding(sd, image, mask, "red disc", cfg, seed=4)
    torch._dynamo.reset()
    speedups = apply_speedups(sd, SpeedupPlan(True, backend="aot_eager"))
    compiled = learn_embedding(sd, image, mask, "red disc", cfg, seed=4)
    assert speedups.stats.graphs == 1  # forward and backward of one training graph
    torch.testing.assert_close(compiled.vector, eager.vector, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)


def test_saved_embedding_loads_through_stock_diffusers(pipe, tmp_path):
    vector = torch.randn(pipe.text_encoder.config.hidden_size) * 0.1
    path = save_embedding(tmp_path / "e.safetensors", vector, {"class": "red disc"})
    loaded, meta = read_embedding(path)
    assert torch.equal(loaded, vector) and meta == {"class": "red disc"}
    from safetensors.torch import load_file

    assert list(load_file(str(path))) == [STORED_TOKEN]
    ids = pipe.tokenizer(
        "a photo of a good red disc", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    base = pipe.text_encoder(ids)[0]
    pipe.load_textual_inversion(str(path), token="<v_9>")  # stock diffusers loader
    try:
        token_id = pipe.tokenizer.convert_tokens_to_ids("<v_9>")
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], vector)
        with_v = pipe.tokenizer(
            "a photo of a <v_9> red disc", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        assert with_v[0, 5] == token_id
        out = pipe.text_encoder(with_v)[0]
        assert not torch.allclose(out[0, 5:], base[0, 5:])  # v* changes the encoding from its position on
        torch.testing.assert_close(out[0, :5], base[0, :5])  # causal mask: earlier tokens unchanged
    finally:
        pipe.unload_textual_inversion("<v_9>")
    assert "<v_9>" not in pipe.tokenizer.get_vocab()
    with pytest.raises(ValueError, match="holds NaN"):
        save_embedding(tmp_path / "nan.safetensors", torch.full((4,), float("nan")), {})


def test_bank_reuses_checks_and_feeds_generation(tiny_models, tmp_path):
    config = parse_config(
        {
            "run": {"out_dir": str(tmp_path / "runs"), "seed": 1},
            "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "shots": {"k": 2},
            "base": {"subset_size": 10},
            "generation": {"classes": ["red disc"]},
            "diffusion": diffusion_section(
                tiny_models, text={"samples": 1}, embedding={"samples": 3, "steps": 5}, controlnet={"conditions": []}
            ),
        }
    )
    dataset = build_dataset("toy", None, config.dataset.toy)
    plan = plan_fold(dataset, config)
    pipes = load_pipelines(config.diffusion)
    cls = plan.novel[0]
    with pytest.raises(EmbeddingMissingError, match=rf"class 'red disc' shot '{cls.shot_ids[0]}': no embedding at"):
        diffusion_samples(pipes, dataset, config, plan, cls)
    files = [shot_embedding(pipes, dataset, config, plan, cls, shot) for shot in cls.shot_ids]
    assert all(f.parent == tmp_path / "runs" / "embeddings" / "toy-f0" / "c0001" for f in files)
    stamp = [f.stat().st_mtime_ns for f in files]
    assert [shot_embedding(pipes, dataset, config, plan, cls, s) for s in cls.shot_ids] == files  # cached
    assert [f.stat().st_mtime_ns for f in files] == stamp
    _, meta = read_embedding(files[0])
    assert (
        meta["steps_run"] == 5
        and meta["shot_id"] == cls.shot_ids[0]
        and meta["cache_key"].startswith(files[0].stem[-12:])
    )
    other = config.model_copy(
        update={
            "diffusion": config.diffusion.model_copy(
                update={"embedding": config.diffusion.embedding.model_copy(update={"learning_rate": 1e-3})}
            )
        }
    )
    with pytest.raises(EmbeddingMissingError):
        shot_embedding(pipes, dataset, other, plan, cls, cls.shot_ids[0], learn=False)  # new hyper-parameters

    samples = diffusion_samples(pipes, dataset, config, plan, cls)
    emb = [s for s in samples if s.meta["source"] == "embedding"]
    assert [s.meta["prompt"] for s in emb] == [
        "a photo of a <v_0> red disc",
        "a photo of a <v_1> red disc",
        "a photo of a <v_0> red disc",
    ]
    assert [s.meta["embedding_id"] for s in emb] == [files[0].name, files[1].name, files[0].name]
    assert [s.meta["shot_ids"] for s in emb] == [[cls.shot_ids[0]], [cls.shot_ids[1]], [cls.shot_ids[0]]]
    assert all(s.meta["xattn"]["token_indices"] == [6, 7] and s.meta["mask_method"] == "xattn" for s in emb)
    assert "<v_0>" not in pipes.sd.tokenizer.get_vocab()  # unloaded after the class
    # loading checks that each token resolves to its stored vector
    load_embeddings(pipes.sd, {"<v_0>": files[0]})
    token_id = pipes.sd.tokenizer.convert_tokens_to_ids("<v_0>")
    torch.testing.assert_close(
        pipes.sd.text_encoder.get_input_embeddings().weight[token_id], read_embedding(files[0])[0]
    )
    unload_embeddings(pipes.sd, ["<v_0>"])
