"""Benchmark: images/s of generation with cross-attention capture against the stock StableDiffusionPipeline call.

Rows: `stock-eager` (the pipeline as loaded), then, with --compile on (default with CUDA), `stock-compiled` and
`ours-compiled`: the same pipeline object after models/speedups.py (torch.compile of the UNet, channels-last, fused
self-attention projections), the stock call and generate_batch with capture, interleaved in one process. With
--compile off the rows are `stock-eager` and `ours-eager`, interleaved. Same prompts, seeds, batch, steps and dtype
everywhere. Compile (warm-up) seconds are reported apart. The last line is
`capture_overhead: ours-compiled/stock-compiled = R (target >= 0.95)`; the figures go to a JSON file.

    python bench/generation.py                      # CPU: tiny model built in a temp folder, 64 px, eager
    python bench/generation.py --compile on         # CPU: the compiled path on the tiny model (minutes to compile)
    python bench/generation.py --full-size          # GPU: SD 1.5 architecture with random weights, 512 px, bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_compile_flag,
    apply_speed_plan,
    bench_pipeline,
    run_header,
    setup_device,
    speed_plan,
    write_json,
)

from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.xattn_mask import coarse_mask, soft_map
from maskforge.tasks.diffusion import GenItem, generate_batch

#: UNet FLOPs of one SD 1.5 forward pass for one sample at 64x64 latents (performance-anchors.md, measured count).
SD15_UNET_GFLOP = 803.0


def roofline_img_per_s(peak_tflops: float, steps: int) -> float:
    """Images/s at the UNet's roofline: CFG runs the UNet on 2 samples per image per step (VAE and text encoder
    are left out of the bound)."""
    return peak_tflops * 1e12 / (SD15_UNET_GFLOP * 1e9 * 2 * steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command line's settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD 1.5 architecture, random weights (GPU)")
    parser.add_argument("--model", help="tiny SD folder (default: build one)")
    parser.add_argument("--size", type=int, help="image side (default 64 tiny, 512 full size)")
    parser.add_argument("--batch", type=int, default=None, help="images per call (default 8 tiny, 8 full size)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10 tiny, 25 full size)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each kind")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak for the roofline fraction")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 = steadier on a busy machine)")
    parser.add_argument("--json", default="bench/out/generation.json", help="where to write the figures")
    add_compile_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Time the rows, print img/s, roofline fractions, compile seconds and the capture ratio last; write JSON."""
    args = parse_args(argv)
    device, dtype = setup_device(args.threads, args.dtype)
    pipe, size, factors = bench_pipeline(args.full_size, args.model, args.size, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    batch, steps = args.batch or 8, args.steps or (25 if args.full_size else 10)
    cfg = DiffusionConfig(model="bench", steps=steps, image_size=size, batch_size=batch, xattn={"factors": factors})
    items = [GenItem("text", i, 1000 + i, "a photo of a red disc", "", 7.5) for i in range(batch)]
    plan = speed_plan(args, device)

    def stock() -> None:
        pipe(
            prompt=[i.prompt for i in items],
            negative_prompt=[""] * batch,
            guidance_scale=7.5,
            num_inference_steps=steps,
            height=size,
            width=size,
            output_type="np",
            generator=[torch.Generator("cpu").manual_seed(i.seed) for i in items],
        )

    def ours() -> None:
        images, maps, _ = generate_batch(pipe, items, "red disc", cfg, (size, size))
        for row in range(batch):
            coarse_mask(soft_map({f: m[row] for f, m in maps.items()}, (size, size)), 0.4)

    def timed(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {}
    compile_seconds: dict[str, float] = {}
    warmup_seconds: dict[str, float] = {}
    if plan.compile:
        # the pipeline as loaded first: the reference every speed-up is measured against
        warmup_seconds["stock-eager"] = timed(stock)
        times["stock-eager"] = [timed(stock) for _ in range(args.repeats)]
        # kept if the compile below runs past a time limit; the full figures replace it at the end
        write_json(args.json, {"partial": True, "seconds": times, "warmup_seconds": warmup_seconds})
        speedups = apply_speed_plan(pipe, plan)
        kinds = {"stock-compiled": stock, "ours-compiled": ours}
        for kind, fn in kinds.items():  # each first call compiles its graph (stock and capture differ)
            before = speedups.stats.seconds
            warmup_seconds[kind] = timed(fn)
            compile_seconds[kind.removesuffix("-compiled")] = speedups.stats.seconds - before
        compared = ("ours-compiled", "stock-compiled")
    else:
        kinds = {"stock-eager": stock, "ours-eager": ours}
        for kind, fn in kinds.items():  # kernels, allocator, first-call costs
            warmup_seconds[kind] = timed(fn)
        compared = ("ours-eager", "stock-eager")
    for kind in kinds:
        times[kind] = []
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        for kind, fn in kinds.items():
            times[kind].append(timed(fn))
    # median of interleaved calls: robust to the odd slow call on a shared machine; min is reported too
    img_s = {k: batch / statistics.median(v) for k, v in times.items()}
    best = {k: batch / min(v) for k, v in times.items()}
    ratio = img_s[compared[0]] / img_s[compared[1]]
    result = {
        **run_header(device, args.full_size, dtype, size, batch, steps, factors),
        "repeats": args.repeats,
        "speedups": plan.describe(),
        "seconds": times,
        "warmup_seconds": warmup_seconds,
        "compile_seconds": compile_seconds,
        "img_per_s": img_s,
        "img_per_s_best": best,
        "compared": list(compared),
        "capture_overhead_ratio": ratio,
        "capture_overhead_ratio_best": best[compared[0]] / best[compared[1]],
        "threads": torch.get_num_threads(),
    }
    roofline = roofline_img_per_s(args.peak_tflops, steps) if args.full_size and size == 512 else None
    if roofline:
        result["peak_tflops"] = args.peak_tflops
        result["roofline_img_per_s"] = roofline
        result["roofline_fraction"] = {k: v / roofline for k, v in img_s.items()}
    print(f"device {result['device']}, {result['model']}, {result['dtype']}, {size} px, batch {batch}, {steps} steps")
    print(f"speed set: {plan.describe()}")
    for kind in times:
        share = f"{img_s[kind] / roofline:.1%} of the UNet roofline" if roofline else "roofline n/a (not SD 1.5 512 px)"
        print(f"{kind:15s} {img_s[kind]:8.3f} img/s (median; best {best[kind]:.3f}), {share}")
    if roofline:
        print(f"UNet roofline at {args.peak_tflops:.0f} TFLOP/s: {roofline:.2f} img/s")
    if compile_seconds:
        print(
            "compile (first call, paid once per process): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in compile_seconds.items())
            + f"; first calls took {', '.join(f'{k} {v:.1f} s' for k, v in warmup_seconds.items())}"
        )
    write_json(args.json, result)
    print(f"capture_overhead: {compared[0]}/{compared[1]} = {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
