"""Does DiffewS's KV fusion cost little over plain diffusers calls? Fused vs plain episode time, one run.

Both sides do one few-shot episode's work on the same seeded inputs (a query image, n support images, n support
masks), timed interleaved after a warm-up; the median of the repeats is kept:
  fused  one VAE encode of query, support images and support masks (posterior means), DiffewsNet.forward (a support
         pass through conv_in_ref over [image latent, mask latent] filling the KV bank, then the query pass whose
         self-attention reads the bank), one VAE decode of the predicted mask latent
  plain  the same VAE calls and two forwards of a UNet with the same weights and diffusers' stock attention
         processors, no bank: the n support image latents (4 channels, conv_in), then the query
Prints ms/episode per shot count and, last, `diffews_episode N-shot: fused/plain time = R (target <= 1.10)` per
shot count (the largest last); writes JSON with every figure, the device and the dtype.

With --full-size (meant for a GPU, bf16) the models are SD 2.1's architecture with random weights (timing only; no
file is read) at 512 px, and on CUDA one training step is measured as well: batch 1 (1 query, 1 support), fp32
master weights under bf16 autocast, frozen VAE (posterior samples), MSE of the UNet output to -z_mask, grad-clip 1.0,
AdamW; its peak memory (the authors train in 24 GB) and step time are printed before the ratios.

    python bench/diffews.py                                   # CPU: shipped toy SD, 64 px, fp32, 1 and 5 shots
    python bench/diffews.py --full-size                       # GPU: SD 2.1 architecture, 512 px, bf16, + training
    python bench/diffews.py --full-size --steps 1 --repeats 1 --warmup 0 --shots 1 --size 128   # CPU smoke
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sd_vae_random, write_json  # noqa: E402

from maskforge.models.device import resolve_device
from maskforge.models.diffews.checkpoint import build_from_sd, empty_prompt_embedding, load_frozen_parts
from maskforge.models.diffews.codec import decode_rgb, encode, images_to_tensor, masks_to_rgb
from maskforge.models.diffews.network import OI2M_TIMESTEP, DiffewsNet, add_conv_in_ref

ROOT = Path(__file__).resolve().parents[1]
#: The shipped toy SD pipeline folder the CPU run uses.
TOY_SD = ROOT / "models" / "toy" / "sd"
GIB = 1024**3


def quiet() -> None:
    """Silence the libraries' loading progress bars and cast notices, which would drown the bench's lines."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def sd21_random(device: torch.device):
    """Return (UNet, VAE, text embedding) of SD 2.1's architecture with random fp32 weights (timing only)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
        )
        vae = sd_vae_random()
        text = torch.randn(1, 77, 1024)  # stands in for the empty-prompt embedding of SD 2.1's text encoder
    return unet, vae.requires_grad_(False).eval(), text


def build_models(full_size: bool, sd: str, device: torch.device, dtype: torch.dtype):
    """Return (DiffewsNet, plain UNet with stock processors and the same weights, description), both on device."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if full_size:
        unet, vae, text = sd21_random(device)
        plain = copy.deepcopy(unet)  # taken before conv_in_ref and before DiffewsNet installs its processors
        add_conv_in_ref(unet)
        what = "SD 2.1 architecture, random weights"
    else:
        unet = build_from_sd(sd)
        vae, tokenizer, encoder = load_frozen_parts(sd)
        text = empty_prompt_embedding(tokenizer, encoder)
        plain = UNet2DConditionModel.from_pretrained(Path(sd) / "unet", local_files_only=True)
        what = f"toy SD ({sd})"
    net = DiffewsNet(unet, vae, text).to(device=device, dtype=dtype).eval()
    plain = plain.to(device=device, dtype=dtype).eval()
    return net, plain, what


def episode_pixels(shots: int, size: int, device: torch.device, seed: int, query_mask: bool = False):
    """Return seeded (query image, support images, support masks[, query mask]) as [-1, 1] tensors via the codec."""
    generator = torch.Generator().manual_seed(seed)
    count = 1 + shots + (1 if query_mask else 0)
    images = torch.randint(0, 256, (1 + shots, size, size, 3), generator=generator, dtype=torch.uint8).numpy()
    masks = []
    for _ in range(count - 1):  # an axis-aligned box covering a quarter to three quarters of each side
        y0, x0 = (int(v) for v in torch.randint(0, size // 4, (2,), generator=generator))
        h, w = (int(v) for v in torch.randint(size // 4, size * 3 // 4, (2,), generator=generator))
        mask = np.zeros((size, size), dtype=bool)
        mask[y0 : y0 + h, x0 : x0 + w] = True
        masks.append(mask)
    pixels = images_to_tensor(list(images), size, device)
    rgb = masks_to_rgb(masks, size, device)
    parts = [pixels[:1], pixels[1:], rgb[:shots]]
    return (*parts, rgb[shots:]) if query_mask else tuple(parts)


def fused_episode(net: DiffewsNet, query: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One DiffewS episode: encode everything, support pass + query pass (KV fusion), decode the mask latent."""
    n = images.shape[0]
    latents = encode(net.vae, torch.cat([query, images, masks]))
    q, s, m = latents.split([1, n, n])
    return decode_rgb(net.vae, net(q, s, m))


def plain_episode(unet, vae, text: torch.Tensor, query: torch.Tensor, images: torch.Tensor, masks: torch.Tensor):
    """The same VAE calls and two stock UNet forwards (n support image latents, then the query), no bank."""
    n = images.shape[0]
    latents = encode(vae, torch.cat([query, images, masks]))
    q, s, _ = latents.split([1, n, n])
    text = text.to(device=q.device, dtype=q.dtype)
    t = torch.full((n,), OI2M_TIMESTEP, device=q.device, dtype=torch.long)
    unet(s, t, encoder_hidden_states=text.expand(n, -1, -1), return_dict=False)  # output unused: nowhere to keep it
    out = unet(q, t[:1], encoder_hidden_states=text, return_dict=False)[0]
    return decode_rgb(vae, -out)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(sides: dict[str, Callable[[], object]], warmup: int, repeats: int, device) -> dict[str, list]:
    """Return seconds of each side's `repeats` calls after `warmup` untimed ones, the sides alternating in order."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(repeats):  # alternate which side goes first so drift and cache effects hit both alike
        for name in names if i % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            sides[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_gib(fn: Callable[[], object], device: torch.device) -> tuple[float, float] | None:
    """Return (peak, resident before) GPU memory in GiB of one call, or None off CUDA."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / GIB, resident / GIB


def bench_shots(net, plain, shots: int, size: int, args, device: torch.device) -> dict:
    """Time fused and plain episodes of `shots` supports; on CUDA also measure each side's peak memory."""
    query, images, masks = episode_pixels(shots, size, device, args.seed + shots)
    sides = {
        "fused": lambda: fused_episode(net, query, images, masks),
        "plain": lambda: plain_episode(plain, net.vae, net.text_embedding, query, images, masks),
    }
    with torch.inference_mode():
        times = time_interleaved(sides, args.warmup, args.repeats, device)
        memory = {name: peak_gib(fn, device) for name, fn in sides.items()}
    ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
    result = {
        "fused_ms": ms["fused"],
        "plain_ms": ms["plain"],
        "fused_episodes_per_s": 1000 / ms["fused"],
        "plain_episodes_per_s": 1000 / ms["plain"],
        "seconds": times,
        # key tokens of the largest fused layer in the last query pass: (1 + n) x its own tokens when the bank works
        "query_key_tokens_max": max(net.bank.key_tokens.values()),
        "ratio": ms["fused"] / ms["plain"],
        # the median of per-repeat ratios (each pair ran back to back): steadier than the ratio on a busy machine
        "paired_ratio_median": statistics.median(f / p for f, p in zip(times["fused"], times["plain"])),
    }
    for name, figures in memory.items():
        if figures is not None:
            result[f"{name}_peak_gib"], result["resident_gib"] = figures
    return result


def train_step(net: DiffewsNet, optimiser, pixels, autocast: torch.dtype | None, device: torch.device) -> float:
    """One DiffewS training step at batch 1: frozen-VAE posterior samples, support + query pass, MSE to -z_mask,
    backward, grad-clip 1.0, optimiser step. Returns the loss."""
    query, image, mask, target = pixels
    with torch.no_grad():
        latents = encode(net.vae, torch.cat([query, image, mask, target]), sample=True).float()
    q, s, m, z_mask = latents.split(1)
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = -net(q, s, m)  # the raw UNet output; query_pass returned its negation
    loss = F.mse_loss(out.float(), -z_mask)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.unet.parameters(), 1.0)
    optimiser.step()
    return loss.item()


def bench_training(net: DiffewsNet, size: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Time `--steps` training steps after one warm-up step; on CUDA the peak memory over all of them."""
    net.unet.float().train()  # fp32 master weights; the frozen VAE keeps the inference dtype
    autocast = dtype if dtype != torch.float32 else None
    optimiser = torch.optim.AdamW(net.unet.parameters(), lr=1e-5, weight_decay=1e-2)
    pixels = episode_pixels(1, size, device, args.seed, query_mask=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses = [train_step(net, optimiser, pixels, autocast, device)]
    seconds = []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        losses.append(train_step(net, optimiser, pixels, autocast, device))
        sync(device)
        seconds.append(time.perf_counter() - start)
    result = {
        "batch": "1 query, 1 support",
        "autocast": str(autocast).removeprefix("torch.") if autocast else None,
        "steps": args.steps,
        "seconds": seconds,
        "step_s": statistics.median(seconds) if seconds else None,
        "losses": losses,
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    return result


def main() -> None:
    """Parse arguments, time fused and plain episodes per shot count, optionally a training step; print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD 2.1 architecture, random weights, 512 px (GPU)")
    parser.add_argument("--sd", default=str(TOY_SD), help="SD pipeline folder of the default run (the toy SD)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--size", type=int, help="image side (default 64, 512 with --full-size)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="support counts n (default 1 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed episodes of each side per shot count")
    parser.add_argument(
        "--repeats", type=int, help="timed episodes of each side per shot count (default 20; 10 with --full-size)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step")
    parser.add_argument(
        "--train-step",
        action="store_true",
        help="measure training off CUDA too (done by default only for --full-size on CUDA; slow on CPU)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step even on CUDA")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench/out/diffews.json", help="where to write the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = 10 if args.full_size else 20
    quiet()
    device = resolve_device(args.device, "--device")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    size = args.size or (512 if args.full_size else 64)
    shots = sorted(set(args.shots))
    if size % 64 or shots[0] < 1:
        parser.error(f"--size must be a multiple of 64 (got {size}) and --shots at least 1 (got {shots})")

    start = time.perf_counter()
    net, plain, what = build_models(args.full_size, args.sd, device, dtype)
    build_s = time.perf_counter() - start
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    factor = 2 ** (len(net.vae.config.block_out_channels) - 1)
    print(
        f"device {device_name}, {what}, {str(dtype).removeprefix('torch.')}, {size} px ({size // factor}^2 latents), "
        f"{torch.get_num_threads()} thread(s); warm-up {args.warmup}, median of {args.repeats}; built {build_s:.1f} s"
    )
    results = {}
    for n in shots:
        r = results[f"{n}-shot"] = bench_shots(net, plain, n, size, args, device)
        line = (
            f"{n}-shot: fused {r['fused_ms']:.1f} ms/episode ({r['fused_episodes_per_s']:.2f} episodes/s), "
            f"plain {r['plain_ms']:.1f} ms/episode; query attends over up to {r['query_key_tokens_max']} key tokens"
        )
        if "fused_peak_gib" in r:
            line += f"; fused peak GPU memory {r['fused_peak_gib']:.2f} GiB (plain {r['plain_peak_gib']:.2f} GiB)"
        print(line)
    plain_processors = sorted({type(p).__name__ for p in plain.attn_processors.values()})
    del plain  # frees its weights before the training step
    training = None
    if not args.no_train and (args.train_step or (args.full_size and device.type == "cuda")):
        training = bench_training(net, size, args, device, dtype)
        memory = f"peak memory {training['peak_gib']:.2f} GiB" if "peak_gib" in training else "peak memory n/a (CPU)"
        step = f"{training['step_s']:.3f} s/step" if training["step_s"] is not None else "no timed step"
        print(
            f"training step ({training['batch']}, fp32 master weights, autocast {training['autocast']}, AdamW): "
            f"{memory} (authors: fits 24 GB), {step}, loss {training['losses'][-1]:.4f}"
        )
    write_json(
        args.out,
        {
            "device": device_name,
            "device_type": device.type,
            "dtype": str(dtype).removeprefix("torch."),
            "model": "sd21-random" if args.full_size else "toy-sd",
            "size": size,
            "latent_size": size // factor,
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "repeats": args.repeats,
            "seed": args.seed,
            "build_s": build_s,
            "fused_processors": sorted({type(p).__name__ for p in net.unet.attn_processors.values()}),
            "plain_processors": plain_processors,
            "episodes": results,
            "training": training,
        },
    )
    for n in shots:
        print(f"diffews_episode {n}-shot: fused/plain time = {results[f'{n}-shot']['ratio']:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
