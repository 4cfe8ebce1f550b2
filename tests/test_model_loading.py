"""Model loading: local folders only, clear errors for missing or incomplete checkpoints, provenance ids."""

import shutil

import pytest
import torch
from tiny import diffusion_section

from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.loading import (
    ModelLoadError,
    check_pipeline_folder,
    content_id,
    load_hed,
    load_pipelines,
    resolve_device_dtype,
    resolve_model_path,
)
from maskforge.models.speedups import CompiledForward, is_compiled


def test_loads_tiny_models_with_provenance(tiny_models):
    cfg = DiffusionConfig(**diffusion_section(tiny_models))
    pipes = load_pipelines(cfg)
    assert pipes.device == torch.device("cpu") and pipes.dtype == torch.float32
    assert set(pipes.controlnet) == {"mask", "hed", "scribble"} and pipes.hed is not None
    assert set(pipes.refs) == {"sd", "controlnet-mask", "controlnet-hed", "controlnet-scribble", "hed"}
    assert pipes.refs["sd"].id == tiny_models["sd"] and len(pipes.refs["sd"].revision) == 16
    # ControlNet pipelines share the SD pipeline's modules (one UNet in memory)
    assert pipes.controlnet["mask"].unet is pipes.sd.unet
    assert type(pipes.sd.scheduler).__name__ == "DDIMScheduler"
    assert type(load_pipelines(cfg.model_copy(update={"scheduler": "dpm-solver"})).sd.scheduler).__name__ == (
        "DPMSolverMultistepScheduler"
    )


def test_speed_settings_apply_to_every_model_once(tiny_models):
    """compile / channels_last / fuse_qkv forced on (CPU): the shared UNet once, each ControlNet, the VAE's layout.
    Nothing compiles until the first call, so loading stays as fast as before."""
    section = diffusion_section(tiny_models, compile=True, channels_last=True, fuse_qkv=True)
    pipes = load_pipelines(DiffusionConfig(**section))
    plan = pipes.speedups.plan
    assert (plan.compile, plan.channels_last, plan.fuse_qkv) == (True, True, True)
    assert pipes.speedups.compiled == ["unet", "controlnet", "controlnet", "controlnet"]
    assert pipes.compile_seconds == 0.0 and pipes.compile_report() is None
    unet = pipes.sd.unet
    assert is_compiled(unet) and not isinstance(unet.forward.eager, CompiledForward)  # not compiled twice
    assert all(is_compiled(p.controlnet) and p.unet is unet for p in pipes.controlnet.values())
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipes.sd.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    kinds = {type(p).__name__ for name, p in unet.attn_processors.items() if ".attn1." in name}
    assert kinds == {"FusedAttnProcessor2_0"}
    eager = load_pipelines(DiffusionConfig(**diffusion_section(tiny_models)))  # auto on CPU: all off
    assert not is_compiled(eager.sd.unet) and eager.speedups.plan.describe() == "eager"
    assert eager.sd.unet.conv_in.weight.is_contiguous()


def test_content_id_changes_with_the_weights(tiny_models, tmp_path):
    copy = tmp_path / "sd"
    shutil.copytree(tiny_models["sd"], copy)
    assert content_id(copy) == content_id(copy) == content_id(type(copy)(tiny_models["sd"]))
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert content_id(copy) != content_id(type(copy)(tiny_models["sd"]))


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=f"diffusion.model: model folder {tmp_path / 'nope'} does not exist"):
        resolve_model_path(str(tmp_path / "nope"), "diffusion.model")


def test_uncached_hub_id_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        ModelLoadError,
        match="'stable-diffusion-v1-5/stable-diffusion-v1-5' is neither a folder nor a hub id in the local cache"
        ".*never downloads",
    ):
        resolve_model_path("stable-diffusion-v1-5/stable-diffusion-v1-5", "diffusion.model")


def test_incomplete_pipeline_folders(tiny_models, tmp_path):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models["sd"], sd)
    (sd / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=rf"{sd / 'unet'} has no weights; expected one of"):
        check_pipeline_folder(sd)
    shutil.rmtree(sd)
    shutil.copytree(tiny_models["sd"], sd)
    shutil.rmtree(sd / "vae")
    with pytest.raises(ModelLoadError, match=rf"component folder {sd / 'vae'} listed in .*model_index.json is missing"):
        check_pipeline_folder(sd)
    (sd / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match=rf"{sd} has no model_index.json"):
        check_pipeline_folder(sd)


def test_missing_controlnet_and_hed(tiny_models, tmp_path):
    empty = tmp_path / "cn"
    empty.mkdir()
    cfg = DiffusionConfig(
        **diffusion_section(
            tiny_models,
            controlnet={
                "models": {
                    "mask": str(empty),
                    "hed": tiny_models["controlnet-hed"],
                    "scribble": tiny_models["controlnet-scribble"],
                }
            },
        )
    )
    with pytest.raises(ModelLoadError, match=rf"diffusion.controlnet.models.mask: {empty} has no config.json"):
        load_pipelines(cfg)
    with pytest.raises(ModelLoadError, match=rf"{tmp_path / 'ControlNetHED.pth'} not found"):
        load_hed(str(tmp_path))


def test_device_and_dtype_rules():
    assert resolve_device_dtype("cpu", "auto") == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="float16 on CPU is not supported"):
        resolve_device_dtype("cpu", "float16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' requested but no CUDA device"):
            resolve_device_dtype("cuda", "auto")


def test_run_identity_follows_model_content(tmp_path, tiny_models):
    from maskforge.tasks.config import parse_config
    from maskforge.tasks.write_run import run_url

    models = {name: str(tmp_path / name) for name in tiny_models}
    for name, folder in tiny_models.items():
        shutil.copytree(folder, models[name])
    config = parse_config({"run": {"out_dir": str(tmp_path / "runs")}, "diffusion": diffusion_section(models)})
    first = run_url(config)
    assert run_url(config) == first  # same config, same files: the same run
    weights = tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained weights under the same path
    weights.write_bytes(bytes(data))
    assert run_url(config) != first and config.hash() == parse_config(config.resolved()).hash()
    shutil.rmtree(models["controlnet-hed"])
    with pytest.raises(ModelLoadError, match="diffusion.controlnet.models.hed"):
        run_url(config)
