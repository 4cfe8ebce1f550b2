"""Why does synthetic data not raise GFSS HM on the toy world? A synthetic-share sweep and what the pasted objects are.

On a finished `bench/toy_table1.py --out DIR` folder (its base stage and synthetic run are reused; nothing else is
trained twice):
  sweep    `gaps` and `finetune` with the synthetic run at each novel.synthetic_share of --shares (default 1.0:
           every pasted object of the step's class synthetic; the table already has 0 = real only and 0.5), the
           table's 3 run seeds: base / novel mIoU and HM (HM of the means), the last step's IoU per novel class;
  objects  the objects each source hands copy-paste (tasks/gfss/copy_paste.py:cut_object): per novel class, the
           synthetic samples' count, their label's IoU to the toy oracle segment (eval/toy_oracle.py, what the
           object truly covers; a real shot's label is the ground truth), the object's share of its bounding box
           and its box side in pixels, against the real shots the run seeds drew.
Prints both tables and, last, `toy_table1_synthetic: gaps HM at share 1.0 / share 0 = R`; writes
DIR/toy_table1_synthetic.json.

    python bench/toy_table1_synthetic.py --out bench-out/toy_table1     # about 7 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from maskforge.eval.datasets import open_dataset
from maskforge.eval.episode_data import synthetic_keys
from maskforge.eval.folds import TOY_CLASSES
from maskforge.eval.gfss_protocol import ClassMap, vrfs_probability
from maskforge.eval.metrics import iou
from maskforge.eval.toy_oracle import oracle_mask
from maskforge.storage.reader import RunReader
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.gfss.copy_paste import cut_object
from maskforge.tasks.gfss.evaluate import eval_gfss
from maskforge.tasks.gfss.feed import NovelData, NovelFeed
from maskforge.tasks.gfss.novel import random_buffer, train_gfss_novel
from maskforge.tasks.gfss.preflight import open_fold

ROOT = Path(__file__).resolve().parents[1]


def _object_stats(objects: list, truths: list | None = None) -> dict:
    """Count, mean box side (px), mean mask share of the box and, with truths, mean IoU of mask to oracle."""
    if not objects:
        return {"n": 0}
    out = {
        "n": len(objects),
        "box_side_px": round(float(np.mean([np.sqrt(o.mask.size) for o in objects])), 1),
        "fill": round(float(np.mean([o.mask.mean() for o in objects])), 3),
    }
    if truths is not None:
        out["oracle_iou"] = round(float(np.mean(truths)), 3)
    return out


def objects_table(cfg, run: str, novel_dirs: list[str]) -> dict:
    """Per novel class: the synthetic run's generated objects against the real shots' objects."""
    dataset = open_dataset(cfg.dataset)
    reader = RunReader(run)
    # the samples GFSS draws: generated ones only (tasks/gfss/novel.py:open_synthetic)
    wanted = {k for keys in synthetic_keys(reader, (1, 6, 11, 16), generated_only=True).values() for k in keys}
    synthetic: dict[int, list] = {}
    truths: dict[int, list] = {}
    for sample in reader:
        if sample.key not in wanted:
            continue
        cid = int(sample.meta["class_id"])
        mask = sample.label == cid
        synthetic.setdefault(cid, []).append(cut_object(sample.image, sample.label, cid, "synthetic", sample.key))
        truths.setdefault(cid, []).append(iou(mask, oracle_mask(sample.image, TOY_CLASSES[cid - 1].split()[0])))
    shots: dict[int, set[str]] = {}
    for folder in novel_dirs:
        for r in json.loads(Path(folder, "novel.json").read_text())["runs"]:
            for cid, ids in r["shots"].items():
                shots.setdefault(int(cid), set()).update(ids)
    table = {}
    for cid in sorted(shots):
        records = [dataset.load(i) for i in sorted(shots[cid])]
        real = [cut_object(rec.image, rec.label, cid, "real", rec.image_id) for rec in records]
        table[TOY_CLASSES[cid - 1]] = {  # a real shot's mask is the ground truth (oracle IoU 1 by definition)
            "synthetic": _object_stats(synthetic.get(cid, []), truths.get(cid)),
            "real": _object_stats(real, [1.0] * len(real)),
        }
    return table


def feed_table(cfg, run: str, novel_dir: str, shares: list[float], items: int) -> dict:
    """Per novel class and synthetic share: what the `finetune` feed's labels hold (no training).

    The class learned alone at its step with run seed 0's shot, AlignDiff D.3's random base images, vRFS p of the
    first step; `items` samples each: the mean share of pixels labelled base class, the novel class, background and
    ignore, and the share of samples with a novel pixel at all.
    """
    dataset, fold = open_fold(cfg)
    shots = json.loads(Path(novel_dir, "novel.json").read_text())["runs"][0]["shots"]
    buffer = random_buffer(cfg, dataset, fold)
    keys = synthetic_keys(RunReader(run), fold.novel, generated_only=True)
    n = cfg.novel
    out = {}
    for cid in sorted(fold.novel):
        class_map = ClassMap(tuple(fold.base), (cid,))
        novel_id = class_map.model_ids()[cid]
        for share in shares:
            data = NovelData(
                dataset=cfg.dataset, fold_novel=tuple(fold.novel), class_map=class_map, step_classes=(cid,),
                method="finetune", shots={cid: shots[str(cid)]}, crop=cfg.base.crop_size, scale=tuple(cfg.base.scale),
                paste_scale=tuple(n.paste_scale), seed=0, synthetic_share=share if keys[cid] else 0.0,
                synthetic={run: keys[cid]} if keys[cid] else {}, buffer=buffer, context_prob=0.0,
                p_vrfs=vrfs_probability(len(fold.base), 1, n.shots, n.buffer_size),
            )  # fmt: skip
            feed = iter(NovelFeed(data))
            counts = np.zeros(4)
            with_novel = 0
            for _ in range(items):
                label = next(feed)[1].numpy()
                shares_of = [((label >= 1) & (label < novel_id)).mean(), (label == novel_id).mean()]
                counts += [*shares_of, (label == 0).mean(), (label < 0).mean()]
                with_novel += bool((label == novel_id).any())
            base_px, novel_px, bg_px, ignore_px = (round(float(x), 3) for x in counts / items)
            out[f"{TOY_CLASSES[cid - 1]} share {share:g}"] = {
                "base_px": base_px, "novel_px": novel_px, "background_px": bg_px, "ignore_px": ignore_px,
                "samples_with_novel": round(with_novel / items, 3), "synthetic_samples": len(keys[cid]),
            }  # fmt: skip
    return out


def main() -> None:
    """Run the sweep on the bench folder's base stage and synthetic run, then the objects table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/toy_table1", help="A finished bench/toy_table1.py folder.")
    parser.add_argument("--config", default=str(ROOT / "configs" / "gfss-toy.yaml"))
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0], help="novel.synthetic_share values.")
    parser.add_argument("--methods", nargs="+", default=["gaps", "finetune"], help="Methods swept.")
    parser.add_argument("--feed-items", type=int, default=400, help="Feed samples per class and share (no training).")
    parser.add_argument("--feed-only", action="store_true", help="Only the objects and feed tables (no training).")
    args = parser.parse_args()
    out = Path(args.out)
    table1 = json.loads((out / "toy_table1.json").read_text())
    run, seeds = table1["synthetic_run"], table1["rows"]["gaps"]["runs"]
    start = time.perf_counter()
    common = {"run.out_dir": str(out / "runs"), "eval.results_dir": str(out / "results"), "novel.runs": seeds}
    rows = {}
    for method in [] if args.feed_only else args.methods:
        real = table1["rows"][method]
        rows[f"{method} share 0"] = {k: real[k] for k in ("base_miou", "novel_miou", "hm", "class_iou_last")}
        half = table1["rows"][f"{method}+synthetic"]
        rows[f"{method} share 0.5"] = {k: half[k] for k in ("base_miou", "novel_miou", "hm", "class_iou_last")}
        for share in args.shares:
            cfg = load_gfss_config(
                args.config,
                {**common, "novel.method": method, "novel.synthetic_runs": [run], "novel.synthetic_share": share},
            )
            t = time.perf_counter()
            train_gfss_novel(cfg, log=lambda m: None)
            result = eval_gfss(cfg, log=lambda m: None)
            s = result["summary"]
            rows[f"{method} share {share:g}"] = {k: s[k] for k in ("base_miou", "novel_miou", "hm")} | {
                "class_iou_last": result["class_iou_last"],
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(f"  {method} share {share:g}: HM {100 * s['hm']:.1f} ({time.perf_counter() - t:.0f} s)", flush=True)
    cfg = load_gfss_config(args.config, common)
    novel_dirs = [
        load_gfss_config(args.config, {**common, "novel.method": m, "novel.synthetic_runs": []}).novel_dir()
        for m in args.methods
    ]
    objects = objects_table(cfg, run, novel_dirs)
    feed = feed_table(cfg, run, novel_dirs[-1], [0.0, 0.5, *args.shares], args.feed_items)
    novel_names = [TOY_CLASSES[c - 1] for c in (1, 6, 11, 16)]
    print(f"\n{seeds} run seeds; PIFS average over 4 steps, %; last step's IoU per novel class")
    print(f"{'setting':20s} {'base':>6s} {'novel':>6s} {'HM':>6s}   " + " ".join(f"{n:>14s}" for n in novel_names))
    for name, r in rows.items():
        per_class = " ".join(f"{100 * r['class_iou_last'].get(str(c), float('nan')):14.1f}" for c in (1, 6, 11, 16))
        print(f"{name:20s} {100 * r['base_miou']:6.1f} {100 * r['novel_miou']:6.1f} {100 * r['hm']:6.1f}   {per_class}")
    print("\nobjects pasted per class: n, box side (px), mask share of the box, IoU of the mask to the oracle segment")
    for name, o in objects.items():
        cells = []
        for source in ("real", "synthetic"):
            x = o[source]
            cells.append(
                f"{source} n {x['n']}"
                + (f", side {x['box_side_px']}, fill {x['fill']}, oracle IoU {x['oracle_iou']}" if x["n"] else "")
            )
        print(f"  {name:14s} " + "; ".join(cells))
    print(f"\nthe finetune feed's labels ({args.feed_items} samples per row): mean pixel share, %")
    print(f"{'class, synthetic share':28s} {'base':>6s} {'novel':>6s} {'bg':>6s} {'ignore':>6s} {'w/ novel':>9s}")
    for name, f in feed.items():
        print(
            f"{name:28s} {100 * f['base_px']:6.1f} {100 * f['novel_px']:6.1f} {100 * f['background_px']:6.1f} "
            f"{100 * f['ignore_px']:6.1f} {100 * f['samples_with_novel']:9.1f}"
        )
    if args.feed_only:
        write_json(out / "toy_table1_synthetic.json", {"objects": objects, "feed": feed, "synthetic_run": run})
        return
    top = max(args.shares)
    ratio = rows[f"gaps share {top:g}"]["hm"] / rows["gaps share 0"]["hm"] if "gaps" in args.methods else float("nan")
    write_json(
        out / "toy_table1_synthetic.json",
        {
            "rows": rows,
            "objects": objects,
            "feed": feed,
            "seconds": round(time.perf_counter() - start, 1),
            "synthetic_run": run,
        },
    )
    print(f"total {time.perf_counter() - start:.0f} s")
    print(f"toy_table1_synthetic: gaps HM at share {top:g} / share 0 = {ratio:.3f}")


if __name__ == "__main__":
    main()
