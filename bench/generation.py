"""Benchmark: images/s of generation with cross-attention capture against the stock StableDiffusionPipeline call.

Both run the same pipeline object, prompts, seeds, batch, steps and dtype, interleaved in one process; the last
line is `capture_overhead: ours/stock = R (target >= 0.95)`, and the figures go to a JSON file.

    python bench/generation.py                      # CPU: tiny model built in a temp folder, 64 px
    python bench/generation.py --full-size          # GPU: SD 1.5 architecture with random weights, 512 px, bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_pipeline, run_header, setup_device, write_json  # noqa: E402

from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.xattn_mask import coarse_mask, soft_map
from maskforge.tasks.diffusion import GenItem, generate_batch

#: UNet FLOPs of one SD 1.5 forward pass for one sample at 64x64 latents (performance-anchors.md, measured count).
SD15_UNET_GFLOP = 803.0


def main() -> None:
    """Parse arguments, time stock and capture calls interleaved, print figures and the ratio, write JSON."""
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
    args = parser.parse_args()

    device, dtype = setup_device(args.threads, args.dtype)
    pipe, size, factors = bench_pipeline(args.full_size, args.model, args.size, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    batch, steps = args.batch or 8, args.steps or (25 if args.full_size else 10)
    cfg = DiffusionConfig(model="bench", steps=steps, image_size=size, batch_size=batch, xattn={"factors": factors})
    items = [GenItem("text", i, 1000 + i, "a photo of a red disc", "", 7.5) for i in range(batch)]

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

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(stock), timed(ours)  # warm-up: kernels, allocator, first-call costs
    times = {"stock": [], "ours": []}
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        times["stock"].append(timed(stock))
        times["ours"].append(timed(ours))
    # median of interleaved calls: robust to the odd slow call on a shared machine; min is reported too
    img_s = {k: batch / statistics.median(v) for k, v in times.items()}
    best = {k: batch / min(v) for k, v in times.items()}
    ratio = img_s["ours"] / img_s["stock"]
    result = {
        **run_header(device, args.full_size, dtype, size, batch, steps, factors),
        "repeats": args.repeats,
        "seconds": times,
        "img_per_s": img_s,
        "img_per_s_best": best,
        "capture_overhead_ratio": ratio,
        "capture_overhead_ratio_best": best["ours"] / best["stock"],
        "threads": torch.get_num_threads(),
    }
    print(f"device {result['device']}, {result['model']}, {result['dtype']}, {size} px, batch {batch}, {steps} steps")
    print(
        f"median: stock {img_s['stock']:.2f} img/s, capture {img_s['ours']:.2f} img/s; "
        f"best: stock {best['stock']:.2f}, capture {best['ours']:.2f} (ratio {best['ours'] / best['stock']:.3f})"
    )
    if args.full_size and size == 512:
        # CFG runs the UNet on 2 samples per image per step; the VAE and text encoder are left out of the bound
        roofline = args.peak_tflops * 1e12 / (SD15_UNET_GFLOP * 1e9 * 2 * steps)
        result["roofline_img_per_s"] = roofline
        result["roofline_fraction"] = {k: v / roofline for k, v in img_s.items()}
        print(
            f"UNet bf16 roofline {roofline:.1f} img/s: stock {img_s['stock'] / roofline:.1%}, "
            f"capture {img_s['ours'] / roofline:.1%}"
        )
    write_json(args.json, result)
    print(f"capture_overhead: ours/stock = {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
