"""Tiny random-init Stable Diffusion, ControlNets and HED in the real formats, so tests and the demo run offline."""

from __future__ import annotations

from pathlib import Path

import torch

from maskforge.models.clip_tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, build_clip_tokenizer

#: Sub-folders written by build_tiny_models (the demo config points at them).
SD_DIR = "sd"
HED_DIR = "hed"
HED_FILE = "ControlNetHED.pth"


def controlnet_dir(kind: str) -> str:
    """Return the sub-folder of the tiny ControlNet for one condition ("mask", "hed", "scribble")."""
    return f"controlnet-{kind}"


def sd1_scheduler():
    """Return a DDIM scheduler with SD 1.x's settings (scaled-linear betas 0.00085..0.012, 1000 steps, leading
    spacing with offset 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def tiny_sd_components(seed: int = 0) -> dict:
    """Return the components of a tiny SD pipeline: 4x VAE, UNet with cross-attention only at 1/2 and 1/4 latent size.

    The UNet's full-resolution level and the VAE carry no attention: on CPU, attention over many tokens dominates.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,  # diffusers reads this legacy field as the number of heads
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        mid_block_add_attention=False,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=32,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=CLIP_VOCAB_SIZE - 1,
        )
    )
    scheduler = sd1_scheduler()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": build_clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_controlnet(unet, seed: int, zero_out: bool = False):
    """Return a ControlNet initialised from `unet`, its condition embedding downsampling 4x like the tiny VAE.

    zero_out keeps diffusers' zero output convolutions (the start of ControlNet training); otherwise they get
    random weights so an untrained model visibly changes the image.
    """
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32))
    if zero_out:
        return net
    # from_unet zero-initialises the output convolutions (a fresh ControlNet changes nothing); give the random
    # model a visible effect so tests can tell conditions apart.
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            block.weight.normal_(0, 0.02)
    return net


def edge_hed(seed: int = 0) -> torch.nn.Module:
    """Return controlnet-aux's HED network with hand-set weights that compute an image-gradient edge map.

    Block 1 holds Sobel filters on the grey image (both signs, so ReLU keeps magnitudes) and its side output sums
    them; blocks 2-5 keep random weights but zero side outputs. HEDdetector's sigmoid(mean of the 5 side outputs)
    is then bright on edges and dark on flat regions: a working stand-in with the real checkpoint format.
    """
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(seed)
    net = ControlNetHED_Apache2()
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    grey = torch.tensor([0.299, 0.587, 0.114])
    with torch.no_grad():
        conv1, conv2 = net.block1.convs[0], net.block1.convs[1]
        conv1.weight.zero_(), conv1.bias.zero_(), conv2.weight.zero_(), conv2.bias.zero_()
        for i, kernel in enumerate([sobel_x, -sobel_x, sobel_x.T, -sobel_x.T]):
            conv1.weight[i] = grey[:, None, None] * kernel  # input is 0..255 RGB
            conv2.weight[i, i, 1, 1] = 1.0
        net.block1.projection.weight.zero_()
        net.block1.projection.weight[0, :4] = 0.1
        net.block1.projection.bias.fill_(-10.0)
        for block in (net.block2, net.block3, net.block4, net.block5):
            block.projection.weight.zero_(), block.projection.bias.zero_()
    return net


def build_tiny_models(out: str | Path, seed: int = 0) -> dict[str, str]:
    """Write tiny SD (diffusers format, safetensors), one ControlNet per condition and a HED checkpoint under out.

    Returns {"sd": dir, "controlnet-mask": dir, ..., "hed": dir}. Building is deterministic in `seed`.
    """
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    components = tiny_sd_components(seed)
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.save_pretrained(out / SD_DIR, safe_serialization=True)
    written = {SD_DIR: str(out / SD_DIR)}
    for i, kind in enumerate(("mask", "hed", "scribble")):
        tiny_controlnet(components["unet"], seed + 10 + i).save_pretrained(
            out / controlnet_dir(kind), safe_serialization=True
        )
        written[controlnet_dir(kind)] = str(out / controlnet_dir(kind))
    (out / HED_DIR).mkdir(parents=True, exist_ok=True)
    # controlnet-aux reads a torch state dict named ControlNetHED.pth; half precision halves the file, and
    # load_state_dict casts back to the float32 network.
    state = {k: v.half() for k, v in edge_hed(seed).state_dict().items()}
    tmp = out / HED_DIR / (HED_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.rename(out / HED_DIR / HED_FILE)
    written[HED_DIR] = str(out / HED_DIR)
    return written
