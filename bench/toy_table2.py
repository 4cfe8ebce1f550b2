"""A miniature of AlignDiff Table 2 on the toy world: HSNet 1-shot mIoU with 1 real + 20 synthetic supports.

Rows (fold 0's novel classes, held out from the toy diffusion model's training):
  1R                               the real support only
  1R+20S text, xattn masks          text-prompted images labelled by their cross-attention masks
  1R+20S text, semi-supervised      the same images, masks refined by AlignDiff Alg. 1 (tasks/refine.py)
  1R+20S TI+text, semi-supervised   half textual-inversion prompts, half text prompts, refined masks
Every synthetic set is generated from each class's single real shot (configs/toy-table2.yaml). The toy oracle
(eval/toy_oracle.py) stands in for ground truth on generated images: coarse and refined mask IoU to it is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from maskforge.eval.folds import TOY_CLASSES
from maskforge.eval.metrics import iou
from maskforge.eval.toy_oracle import oracle_mask
from maskforge.storage.reader import RunReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from maskforge.eval.datasets import open_dataset
from maskforge.storage.yaml_config import read_yaml
from maskforge.tasks.config import parse_config
from maskforge.tasks.fold_plan import plan_fold
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.hsnet.eval import eval_hsnet
from maskforge.tasks.textual_inversion import learn_shot_embedding
from maskforge.tasks.write_run import finish_run, start_run, write_generated_part, write_refined_part

#: name -> (share of text prompts, share of embedding prompts, refine)
ROWS = {
    "text, xattn masks": (1.0, 0.0, False),
    "text, semi-supervised masks": (1.0, 0.0, True),
    "TI+text, semi-supervised masks": (0.5, 0.5, True),
}


def generate_run(base: dict, text: int, embedding: int, refine: bool, log) -> str:
    """Generate one synthetic run without Prefect (the flow's pure stages in order); return its folder."""

    data = {
        **base,
        "diffusion": {
            **base["diffusion"],
            "text": {**base["diffusion"]["text"], "samples": text},
            "embedding": {**base["diffusion"]["embedding"], "samples": embedding},
        },
    }
    if not refine:
        data["refinement"] = None
    cfg = parse_config(data, source="configs/toy-table2.yaml (bench row)")
    run = start_run(cfg)
    if run["complete"]:
        return run["url"]
    plan = plan_fold(open_dataset(cfg.dataset), cfg)
    parts = []
    for c in plan.novel:
        if embedding:
            for shot in c.shot_ids:
                learn_shot_embedding(cfg, plan, c.class_id, shot)
        part = write_generated_part(cfg, plan, c.class_id, run["url"])
        if refine:
            part = write_refined_part(cfg, plan, c.class_id, run["url"])
        parts.append(part)
        log(f"  {c.class_name}: {part['samples_per_source']}")
    finish_run(cfg, plan, parts, run["url"])
    return run["url"]


def oracle_iou(run: str) -> dict[str, float]:
    """Mean IoU to the oracle segment of each sample's coarse (cross-attention) mask and of its label.

    Refined samples keep their coarse mask as the extra coarse.png; in an unrefined run the label is the coarse mask.
    """
    coarse, label = [], []
    for sample in RunReader(run):
        cid = int(sample.meta["class_id"])
        truth = oracle_mask(sample.image, TOY_CLASSES[cid - 1].split()[0])
        label.append(iou(sample.label == cid, truth))
        coarse.append(iou(sample.extras["coarse.png"] > 0, truth) if "coarse.png" in sample.extras else label[-1])
    return {"coarse": round(float(np.mean(coarse)), 4), "label": round(float(np.mean(label)), 4)}


def evaluate(run: str | None, episodes: int, per_class: int, log) -> dict:
    """HSNet 1-shot evaluation (shipped toy checkpoint) with the run's samples as extra supports."""

    overrides = {
        "eval.checkpoint": "models/checkpoints/hsnet-toy-f0.safetensors",
        "eval.episodes": episodes,
        "eval.synthetic_run": run,
        "eval.synthetic_per_class": per_class,
        "run.threads": 0,
    }
    return eval_hsnet(load_hsnet_config("configs/hsnet-toy-refine.yaml", overrides), log=log)


def main() -> None:
    """Generate the three synthetic runs, evaluate each, print the table; the last line compares best to 1R."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy-table2.yaml")
    parser.add_argument("--out-dir", default="runs", help="Parent folder of the synthetic runs.")
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--synthetic", type=int, default=20, help="Synthetic supports per episode (the S in 1R+20S).")
    parser.add_argument(
        "--generate",
        type=int,
        default=32,
        help="Images generated per class (refinement drops empty masks; at least --synthetic must stay).",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config field (YAML value), e.g. diffusion.embedding.steps=100.",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--out", default="bench/out/toy_table2.json")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import yaml

    overrides = {"run.out_dir": args.out_dir}
    overrides.update({k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)})
    base = read_yaml(args.config, overrides)
    start = time.perf_counter()
    quiet = lambda msg: None  # noqa: E731
    rows: dict[str, dict] = {}
    for name, (text_share, embedding_share, refine) in ROWS.items():
        t0 = time.perf_counter()
        text, embedding = round(args.generate * text_share), round(args.generate * embedding_share)
        print(f"generating: {name}", flush=True)
        run = generate_run(base, text, embedding, refine, print)
        gen_s = time.perf_counter() - t0
        result = evaluate(run, args.episodes, args.synthetic, quiet)
        settings = result["settings"]
        real_name, syn_name = [k for k in settings if "+" not in k][0], [k for k in settings if "+" in k][0]
        rows.setdefault(real_name, {"miou": settings[real_name]["miou"], "fb_iou": settings[real_name]["fb_iou"]})
        rows[f"{syn_name} {name}"] = {
            "miou": settings[syn_name]["miou"],
            "fb_iou": settings[syn_name]["fb_iou"],
            "run": run,
            "mask_iou_to_oracle": oracle_iou(run),
            "generate_s": round(gen_s, 1),
            "eval_s": result["seconds"],
        }
        rows["baselines"] = {k: v["miou"] for k, v in result["baselines"].items()}
    baselines = rows.pop("baselines")
    seconds = round(time.perf_counter() - start, 1)
    write_json(args.out, {"args": vars(args), "rows": rows, "baselines": baselines, "seconds": seconds})
    print(f"\n{'setting':58s} {'mIoU %':>7s} {'FB-IoU %':>8s} {'coarse->oracle':>14s} {'label->oracle':>13s}")
    for name, row in rows.items():
        masks = row.get("mask_iou_to_oracle")
        extra = f"{masks['coarse']:14.3f} {masks['label']:13.3f}" if masks else ""
        print(f"{name:58s} {100 * row['miou']:7.2f} {100 * row['fb_iou']:8.2f} {extra}")
    print("baselines (mIoU %): " + ", ".join(f"{k} {100 * v:.2f}" for k, v in baselines.items()))
    print(f"total {seconds} s")
    real = next(iter(rows.values()))["miou"]
    best_name, best = max(((n, r["miou"]) for n, r in rows.items() if "+" in n), key=lambda x: x[1])
    print(f"toy_table2: best synthetic / 1R mIoU = {best / real:.3f} ({best_name})")


if __name__ == "__main__":
    main()
