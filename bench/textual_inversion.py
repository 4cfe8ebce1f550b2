"""Benchmark: textual-inversion steps/s with cached latents against re-encoding the shot every step, one run.

Prints steps/s of both, seconds per embedding at the configured step count (cached path; target <= 30 s for 500
steps at 512 px on an H100/H200), the compile (warm-up) seconds apart, and last the line
`ti_cache_speedup: cached/reencode = R (target >= 1.0)`; figures go to a JSON file. With --compile on (default with
CUDA) the UNet forward and backward run compiled, with channels-last and fused self-attention projections.

    python bench/textual_inversion.py                    # CPU: tiny model, 64 px, eager
    python bench/textual_inversion.py --full-size        # GPU: SD 1.5 architecture, random weights, 512 px, compiled
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_compile_flag,
    apply_speed_plan,
    bench_pipeline,
    setup_device,
    speed_plan,
    toy_shots,
    write_json,
)

from maskforge.models.diffusion_config import EmbeddingModeConfig
from maskforge.models.textual_inversion import learn_embedding


def main() -> None:
    """Time both variants for --measure steps each, print the figures and the ratio, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--model", help="tiny SD folder (default: build one)")
    parser.add_argument("--size", type=int)
    parser.add_argument("--measure", type=int, default=None, help="timed steps per variant")
    parser.add_argument(
        "--steps", type=int, default=500, help="steps per embedding for the seconds-per-embedding figure"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant, interleaved")
    parser.add_argument("--json", default="bench/out/textual_inversion.json")
    add_compile_flag(parser)
    args = parser.parse_args()

    device, dtype = setup_device(args.threads, None)
    pipe, size, _ = bench_pipeline(args.full_size, args.model, args.size, device, dtype)
    plan = speed_plan(args, device)
    speedups = apply_speed_plan(pipe, plan)
    measure = args.measure or (20 if args.full_size else 40)
    image, mask = toy_shots(1, size)[0]
    cfg = EmbeddingModeConfig(steps=measure)

    def run(reencode: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        out = learn_embedding(pipe, image, mask, "red disc", cfg, seed=0, reencode_every_step=reencode)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(out.losses) / out.seconds

    start = time.perf_counter()
    learn_embedding(pipe, image, mask, "red disc", cfg.model_copy(update={"steps": 3}), seed=0)  # warm-up
    warmup = time.perf_counter() - start
    compile_seconds = speedups.stats.seconds if speedups else 0.0
    rates = {"reencode": [], "cached": []}
    for _ in range(args.repeats):  # interleaved
        rates["reencode"].append(run(True))
        rates["cached"].append(run(False))
    best = {k: max(v) for k, v in rates.items()}
    seconds = args.steps / best["cached"]
    ratio = best["cached"] / best["reencode"]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": "sd15-random" if args.full_size else "tiny",
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "batch": cfg.batch_size,
        "measured_steps": measure,
        "steps_per_s": rates,
        "seconds_per_embedding": seconds,
        "steps_per_embedding": args.steps,
        "cache_speedup": ratio,
        "speedups": plan.describe(),
        "compile_seconds": compile_seconds,
        "warmup_seconds": warmup,
        "threads": torch.get_num_threads(),
    }
    print(f"device {result['device']}, {result['model']}, {result['dtype']}, {size} px, batch {cfg.batch_size}")
    print(f"speed set: {plan.describe()}")
    print(f"steps/s: cached {best['cached']:.2f}, re-encode {best['reencode']:.2f}")
    print(f"compile (first call, paid once per process): {compile_seconds:.1f} s; warm-up of 3 steps {warmup:.1f} s")
    print(f"seconds per embedding ({args.steps} steps, cached): {seconds:.1f} (target <= 30 on an H100/H200)")
    write_json(args.json, result)
    print(f"ti_cache_speedup: cached/reencode = {ratio:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()
