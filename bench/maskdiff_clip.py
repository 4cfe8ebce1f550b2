"""Does DDIM's x0 clipping hurt MaskDiff under guidance? Novel segm AP of DDIM with clip_sample on against off.

One run on a trained K-shot stage (default: configs/maskdiff-toy.yaml under runs/, as bench/toy_fsis.py trains it):
eval_maskdiff on the first --images val images, one sampling seed, DDIM with --steps steps at each guidance weight
of --w, once with x0 clipping (diffusers' default, which the ancestral sampler keeps) and once without (what
make_scheduler gives DDIM). Prints novel and base
segm AP of each and, last, `maskdiff_ddim_clip: clipped/unclipped novel segm AP at w = W = R`; writes JSON.

    python bench/maskdiff_clip.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from maskforge.models.maskdiff import mask_head
from maskforge.tasks.maskdiff.config import load_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import eval_maskdiff


def main() -> None:
    """Evaluate the stage with and without DDIM clipping at each weight; print the table and the ratio; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/maskdiff-toy.yaml")
    parser.add_argument("--out-dir", default="runs", help="run.out_dir of the trained stages")
    parser.add_argument("--images", type=int, default=16, help="first N val images (1..10000)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (1..1000)")
    parser.add_argument(
        "--w", type=float, nargs="+", default=[1.0, 5.0], help="guidance weights; the last is the ratio's"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/out/maskdiff_clip.json")
    args = parser.parse_args()
    if not (1 <= args.images <= 10_000 and 1 <= args.steps <= 1000):
        parser.error(f"--images must be in 1..10000 and --steps in 1..1000, got {args.images}, {args.steps}")
    torch.set_num_threads(args.threads)
    config = load_maskdiff_config(
        args.config,
        {
            "run.out_dir": args.out_dir,
            "eval.max_images": args.images,
            "eval.sampling_seeds": 1,
            "head.sampler": "ddim",
            "head.ddim_steps": args.steps,
        },
    )
    stock = mask_head.make_scheduler
    rows = []
    try:
        for clip in (True, False):
            # sample_masks looks make_scheduler up in its module at every call
            mask_head.make_scheduler = lambda kind, pt="epsilon", _c=clip: stock(kind, pt, clip_sample=_c)
            for w in args.w:
                cfg = config.model_copy(update={"head": config.head.model_copy(update={"guidance": w})})
                result = eval_maskdiff(cfg, log=lambda _: None)
                row = {"clip_sample": clip, "w": w, **{k: 100 * result["segm"][k]["ap"] for k in ("novel", "base")}}
                rows.append(row)
                print(
                    f"DDIM {args.steps} steps, clip_sample {clip}, w = {w:g}: novel segm AP {row['novel']:.2f}, "
                    f"base {row['base']:.2f} ({result['detections']} detections on {args.images} images)",
                    flush=True,
                )
    finally:
        mask_head.make_scheduler = stock
    last = args.w[-1]
    clipped = next(r["novel"] for r in rows if r["clip_sample"] and r["w"] == last)
    unclipped = next(r["novel"] for r in rows if not r["clip_sample"] and r["w"] == last)
    ratio = clipped / unclipped if unclipped else float("nan")
    write_json(args.out, {"args": vars(args), "rows": rows, "ratio": ratio})
    print(f"maskdiff_ddim_clip: clipped/unclipped novel segm AP at w = {last:g} = {ratio:.3f}")


if __name__ == "__main__":
    main()
