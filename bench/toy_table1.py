"""A miniature of AlignDiff Table 1 on the toy world: GFSS 1-shot base / novel mIoU and HM, four methods.

Rows (toy fold 0, its 4 novel classes learned one per step, PIFS protocol, mean over GAPS run seeds, HM of the
mean base and mean novel mIoU, ± the spread of the per-seed values):
  shot-only             fine-tune on the real shot alone (maskforge's FINETUNE before issue 30)
  finetune              AlignDiff's FINETUNE (appendix D.3): GAPS's copy-paste of the shot onto random base images
  finetune+synthetic    ... pasting the generated samples' objects as well (shipped toy models, refined masks)
  gaps                  GAPS: guided replay buffer + context-aware copy-paste of the real shot
  gaps+synthetic        ... pasting the generated samples' objects as well
The base model (tiny DeepLabV3 + cosine head) is trained once on CPU; every stage is the library's pure stage
function (the flows wrap the same functions). Prints the table and, last,
`toy_table1: best synthetic HM / best real-only HM = R`; writes OUT/toy_table1.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from toy_table2 import generate_run  # noqa: E402

from maskforge.eval.gfss_protocol import ClassMap
from maskforge.models.gfss.checkpoint import load_gfss
from maskforge.storage.yaml_config import read_yaml
from maskforge.tasks.gfss.base import train_gfss_base
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.gfss.evaluate import eval_gfss, score_checkpoint
from maskforge.tasks.gfss.novel import train_gfss_novel
from maskforge.tasks.gfss.preflight import open_fold

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (("shot-only", False), ("finetune", False), ("finetune", True), ("gaps", False), ("gaps", True))


def synthetic_run(out: Path, text: int, log, bank: str | None = None) -> str:
    """Generate (or reuse) the synthetic run: configs/demo.yaml's toy models, refined masks, diffusion samples only.

    `bank` replaces demo.yaml's embedding bank folder (shared by every invocation), e.g. to time a cold run.
    """
    overrides = {"run.out_dir": str(out / "runs"), "run.name": "table1-syn"}
    if bank:
        overrides["diffusion.embedding.bank"] = bank
    base = read_yaml(ROOT / "configs" / "demo.yaml", overrides)
    embedding = base["diffusion"]["embedding"]["samples"]
    return generate_run(base, text, embedding, refine=True, log=log)


def base_model_miou(cfg) -> float:
    """Base mIoU (background included) of the base model itself on the eval split: the ceiling the steps start from."""
    dataset, fold = open_fold(cfg)
    net, _ = load_gfss(cfg.base_checkpoint())
    records = [dataset.load(i) for i in dataset.image_ids(cfg.eval.split)]
    class_map = ClassMap(tuple(fold.base), ())
    return score_checkpoint(net.eval(), class_map, fold.novel, records, torch.device("cpu"))["base_miou"]


def main() -> None:
    """Run the four settings and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/toy_table1", help="Folder of runs, results and the JSON.")
    parser.add_argument("--config", default=str(ROOT / "configs" / "gfss-toy.yaml"))
    parser.add_argument("--seeds", type=int, default=3, help="GAPS run seeds per setting (>= 3 for the table).")
    parser.add_argument("--synthetic", default=None, help="Use this completed run instead of generating one.")
    parser.add_argument("--text", type=int, default=8, help="Text-prompted samples per class of the generated run.")
    parser.add_argument("--bank", default=None, help="Embedding bank of the generated run (default: demo.yaml's).")
    parser.add_argument("--set", nargs="*", default=[], help="Extra config overrides KEY=VALUE (YAML values).")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    overrides = {
        "run.out_dir": str(out / "runs"),
        "eval.results_dir": str(out / "results"),
        "novel.runs": args.seeds,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    cfg = load_gfss_config(args.config, overrides)
    print("base stage ...", flush=True)
    base = train_gfss_base(cfg, log=lambda m: None)
    print(f"  {base['steps']} steps, {base['seconds']} s, final loss {base['losses'][-1]:.3f}", flush=True)
    base_miou = base_model_miou(cfg)
    print(f"  base model alone: base mIoU {100 * base_miou:.1f} on {cfg.eval.split}", flush=True)
    run = args.synthetic
    if run is None:
        print("synthetic run (toy SD + ControlNet, HSNet-refined masks) ...", flush=True)
        t = time.perf_counter()
        run = synthetic_run(out, args.text, log=print, bank=args.bank)
        print(f"  {run} ({time.perf_counter() - t:.0f} s)", flush=True)
    rows = {}
    for method, synthetic in SETTINGS:
        more = {**overrides, "novel.method": method, "novel.synthetic_runs": [run] if synthetic else []}
        setting_cfg = load_gfss_config(args.config, more)
        t = time.perf_counter()
        train_gfss_novel(setting_cfg, log=lambda m: None)
        result = eval_gfss(setting_cfg, log=lambda m: None)
        rows[setting_cfg.setting()] = result["summary"] | {
            "seconds": round(time.perf_counter() - t, 1),
            "class_iou_last": result["class_iou_last"],  # per class, mean over seeds: where synthetic data acts
            "per_seed": [r["summary"] for r in result["runs"]],
        }
        s = result["summary"]
        print(
            f"  {setting_cfg.setting():20s} HM {100 * s['hm']:.1f} ± {100 * s['hm_std']:.1f} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )

    def cell(s: dict, key: str) -> str:
        return f"{100 * s[key]:5.1f} ± {100 * s[key + '_std']:4.1f}"

    print(f"\ntoy fold 0, 1-shot, {args.seeds} run seeds; PIFS average over 4 steps (last step in brackets), %")
    print(f"{'method':20s} {'base mIoU':>12s} {'novel mIoU':>12s} {'HM':>12s}   {'last: base / novel / HM':s}")
    print(f"{'(base model alone)':20s} {100 * base_miou:5.1f}{'':7s} {'-':>12s} {'-':>12s}")
    for name, s in rows.items():
        last = f"{100 * s['base_miou_last']:.1f} / {100 * s['novel_miou_last']:.1f} / {100 * s['hm_last']:.1f}"
        print(f"{name:20s} {cell(s, 'base_miou'):>12s} {cell(s, 'novel_miou'):>12s} {cell(s, 'hm'):>12s}   {last}")
    best_syn = max(s["hm"] for n, s in rows.items() if "+synthetic" in n)
    best_real = max(s["hm"] for n, s in rows.items() if "+synthetic" not in n)
    ratio = best_syn / best_real if best_real else float("inf")
    write_json(
        out / "toy_table1.json",
        {
            "rows": rows,
            "synthetic_run": run,
            "base": {k: base[k] for k in ("seconds", "steps", "base_images")} | {"base_model_miou": base_miou},
            "seconds": round(time.perf_counter() - start, 1),
            "ratio": ratio,
            "torch": torch.__version__,
            "threads": cfg.run.threads,
        },
    )
    print(f"total {time.perf_counter() - start:.0f} s")
    print(f"toy_table1: best synthetic HM / best real-only HM = {ratio:.3f}")


if __name__ == "__main__":
    main()
