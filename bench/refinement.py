"""Benchmark: seconds per image of mask refinement (AlignDiff Algorithm 1, HSNet) against image generation, one run.

Generation runs the diffusion pipeline through `generate_batch` with cross-attention capture and cuts coarse masks;
refinement runs `refine_masks` on exactly those images and coarse masks with K real toy shots. Both are timed
interleaved in one process; the last line is `refinement/generation = R (target <= 0.05)`, figures go to JSON.

The generation side runs the pipeline's default step count (`diffusion.steps`, 50 as in AlignDiff) unless --steps
says otherwise: the ratio is meant to say what refinement adds to a real run.

    python bench/refinement.py --threads 1          # CPU: tiny SD (64 px, 50 steps, batch 8), tiny HSNet (64 px)
    python bench/refinement.py --full-size          # GPU: SD 1.5 architecture at 512 px, HSNet(ResNet-50) at 400 px
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_compile_flag,
    apply_speed_plan,
    bench_pipeline,
    run_header,
    setup_device,
    speed_plan,
    toy_shots,
    write_json,
)

from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.hsnet.backbone import TinySpec
from maskforge.models.hsnet.checkpoint import load_checkpoint
from maskforge.models.hsnet.model import HSNetSpec, build_hsnet
from maskforge.models.hsnet.segmenter import HSNetSegmenter
from maskforge.models.xattn_mask import coarse_mask, soft_map
from maskforge.tasks.diffusion import GenItem, generate_batch
from maskforge.tasks.refine import refine_masks

#: The small trained toy HSNet shipped with the repo (used for the CPU run when present; timing is weight-independent).
TOY_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "checkpoints" / "hsnet-toy-f0.safetensors"


def build_segmenter(full_size: bool, checkpoint: str | None, device: torch.device, batch: int):
    """Return (HSNetSegmenter, description): the given/shipped checkpoint, else a random-weight HSNet (timing only)."""

    path = checkpoint or (None if full_size else (str(TOY_CHECKPOINT) if TOY_CHECKPOINT.is_file() else None))
    if path:
        net, _ = load_checkpoint(path)
        what = f"checkpoint {Path(path).name}"
    else:
        torch.manual_seed(0)
        spec = HSNetSpec("resnet50", 400) if full_size else HSNetSpec("tiny", 64, TinySpec(maxpool=True))
        net = build_hsnet(spec, None)
        what = "random weights"
    return HSNetSegmenter(net, device, batch_size=batch), f"HSNet({net.spec.backbone}, {net.spec.img_size} px, {what})"


def main() -> None:
    """Parse arguments, time generation and refinement of the same images interleaved, print figures, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full-size", action="store_true", help="SD 1.5 architecture + HSNet(ResNet-50), random weights (GPU)"
    )
    parser.add_argument("--model", help="tiny SD folder (default: build one)")
    parser.add_argument(
        "--checkpoint", help="HSNet checkpoint (default: the shipped toy one on CPU, random at full size)"
    )
    parser.add_argument("--size", type=int, help="image side (default 64 tiny, 512 full size)")
    parser.add_argument("--batch", type=int, default=8, help="images per generation call = images per refinement call")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: diffusion.steps, 50)")
    parser.add_argument("--shots", type=int, default=1, help="real shots K (D_good)")
    parser.add_argument("--hsnet-batch", type=int, default=16, help="HSNet passes per forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 = steadier on a busy machine)")
    parser.add_argument("--json", default="bench/out/refinement.json", help="where to write the figures")
    # off by default: the ratio is against eager generation, as in the table; `--compile on` makes it stricter
    add_compile_flag(parser, default="off")
    args = parser.parse_args()

    device, dtype = setup_device(args.threads, None)
    pipe, size, factors = bench_pipeline(args.full_size, args.model, args.size, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    plan = speed_plan(args, device)
    apply_speed_plan(pipe, plan)
    batch, steps = args.batch, args.steps or DiffusionConfig.model_fields["steps"].default
    cfg = DiffusionConfig(model="bench", steps=steps, image_size=size, batch_size=batch, xattn={"factors": factors})
    segmenter, seg_desc = build_segmenter(args.full_size, args.checkpoint, device, args.hsnet_batch)
    real = toy_shots(args.shots, size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def generate(call: int) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
        items = [GenItem("text", i, 1000 + call * batch + i, "a photo of a red disc", "", 7.5) for i in range(batch)]
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            images, maps, _ = generate_batch(pipe, items, "red disc", cfg, (size, size))
            masks = [
                coarse_mask(soft_map({f: m[row] for f, m in maps.items()}, (size, size)), 0.4)[0]
                for row in range(batch)
            ]
        sync()
        return time.perf_counter() - start, list(zip(images, masks))

    def refine(generated: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list]:
        sync()
        start = time.perf_counter()
        out = refine_masks(segmenter, real, generated)
        sync()
        return time.perf_counter() - start, out

    _, warm = generate(-1)
    refine(warm)  # warm-up: kernels, allocator, first-call costs
    times: dict[str, list[float]] = {"generation": [], "refinement": []}
    branches = {"semi-accepted": 0, "semi-reestimated": 0}
    for call in range(args.repeats):  # interleaved so drift hits both alike
        seconds, generated = generate(call)
        times["generation"].append(seconds)
        seconds, refined = refine(generated)
        times["refinement"].append(seconds)
        for r in refined:
            branches[r.method] += 1
    per_image = {k: statistics.median(v) / batch for k, v in times.items()}
    ratio = per_image["refinement"] / per_image["generation"]
    result = {
        **run_header(device, args.full_size, dtype, size, batch, steps, factors),
        "shots": args.shots,
        "segmenter": seg_desc,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "seconds": times,
        "seconds_per_image": per_image,
        "branches": branches,
        "refinement_generation_ratio": ratio,
        "speedups": plan.describe(),
    }
    print(
        f"device {result['device']}, {result['model']} SD {result['dtype']}, {size} px, batch {batch}, {steps} steps; "
        f"{seg_desc}, K={args.shots}, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"seconds/image (median of {args.repeats}): generation {per_image['generation']:.4f}, "
        f"refinement {per_image['refinement']:.4f} (target <= 0.02 on GPU); branches {branches}"
    )
    write_json(args.json, result)
    print(f"refinement/generation = {ratio:.3f} (target <= 0.05)")


if __name__ == "__main__":
    main()
