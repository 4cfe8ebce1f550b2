"""DiffewS on the toy world next to the toy HSNet: 1-shot mIoU with the real support alone and with 20 synthetic.

Rows (fold 0's novel classes, 1-shot, HSNet's episodes: the same queries and supports for both learners):
  DiffewS 1R / 1R+20S   the toy SD fine-tuned into DiffewS on the base classes (configs/diffews-toy.yaml); the 20
                        synthetic supports join the real one in the KV bank
  HSNet 1R / 1R+20S     the shipped toy HSNet; its 21 one-shot masks are voted
  baselines             all-background and the support-mask prior
The synthetic run is bench/toy_table2.py's "text, xattn masks" run (32 text-prompted images per class from the
shipped toy models, labelled by cross-attention masks), generated here through the pipeline's stages if absent.
Prints the table and, last, `toy_diffews: DiffewS/HSNet 1R mIoU = R`; writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from toy_table2 import evaluate as eval_hsnet_toy  # noqa: E402
from toy_table2 import generate_run  # noqa: E402

from maskforge.storage.yaml_config import read_yaml
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.diffews.evaluate import eval_diffews
from maskforge.tasks.diffews.train import train_diffews

#: The toy DiffewS shipped with the repository (trained by configs/diffews-toy.yaml, stored in float16).
SHIPPED = "models/checkpoints/diffews-toy-f0"


def main() -> None:
    """Train (or reuse) the toy DiffewS, generate (or reuse) the synthetic run, evaluate both learners, print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/diffews-toy.yaml")
    parser.add_argument(
        "--checkpoint", default=SHIPPED, help="DiffewS checkpoint folder; 'train' trains the config's model first."
    )
    parser.add_argument("--out-dir", default="runs", help="Parent folder of training and synthetic runs.")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--synthetic", type=int, default=20, help="Synthetic supports per episode (the S in 1R+20S).")
    parser.add_argument("--generate", type=int, default=32, help="Text-prompted images generated per class.")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--out", default="bench/out/toy_diffews.json")
    args = parser.parse_args()
    quiet = lambda msg: None  # noqa: E731
    start = time.perf_counter()
    overrides = {"run.out_dir": args.out_dir, "run.threads": args.threads}
    train_s = None
    if args.checkpoint == "train":
        report = train_diffews(load_diffews_config(args.config, overrides), log=print)
        checkpoint, train_s = report["checkpoint"], report["seconds"]
    else:
        checkpoint = args.checkpoint
    print("synthetic run: text, xattn masks", flush=True)
    run = generate_run(
        read_yaml("configs/toy-table2.yaml", {"run.out_dir": args.out_dir}), args.generate, 0, False, print
    )
    eval_overrides = {
        **overrides,
        "eval.checkpoint": checkpoint,
        "eval.episodes": args.episodes,
        "eval.synthetic_run": run,
        "eval.synthetic_per_class": args.synthetic,
    }
    diffews = eval_diffews(load_diffews_config(args.config, eval_overrides), log=quiet)
    hsnet = eval_hsnet_toy(run, args.episodes, args.synthetic, quiet)
    rows = {}
    for learner, result in (("DiffewS", diffews), ("HSNet", hsnet)):
        for setting, summary in result["settings"].items():
            rows[f"{learner} {setting}"] = {"miou": summary["miou"], "fb_iou": summary["fb_iou"]}
    for name, summary in diffews["baselines"].items():
        rows[f"baseline: {name}"] = {"miou": summary["miou"], "fb_iou": summary["fb_iou"]}
    seconds = round(time.perf_counter() - start, 1)
    payload = {
        "args": vars(args),
        "checkpoint": checkpoint,
        "synthetic_run": run,
        "rows": rows,
        "train_s": train_s,
        "eval_s": {"diffews": diffews["seconds"], "hsnet": hsnet["seconds"]},
        "seconds": seconds,
    }
    write_json(args.out, payload)
    print(
        f"\n{'setting (toy fold 0, 1-shot, ' + str(args.episodes) + ' episodes)':52s} {'mIoU %':>7s} {'FB-IoU %':>8s}"
    )
    for name, row in rows.items():
        print(f"{name:52s} {100 * row['miou']:7.2f} {100 * row['fb_iou']:8.2f}")
    print(f"eval: DiffewS {diffews['seconds']} s, HSNet {hsnet['seconds']} s; total {seconds} s")
    ratio = rows["DiffewS 1R"]["miou"] / max(rows["HSNet 1R"]["miou"], 1e-9)
    print(f"toy_diffews: DiffewS/HSNet 1R mIoU = {ratio:.3f}")


if __name__ == "__main__":
    main()
