"""GFSS evaluation (PIFS protocol): every (run, step) checkpoint on the whole val split; base / novel mIoU and HM."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import torch

from maskforge.eval.datasets.base import DatasetError, ImageRecord
from maskforge.eval.gfss_metrics import GfssAccumulator, pifs_summary, seed_summary
from maskforge.eval.gfss_protocol import ClassMap
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.gfss.checkpoint import load_gfss
from maskforge.models.gfss.network import GfssNet
from maskforge.storage.fs import join, read_bytes
from maskforge.storage.results import GFSS_PROTOCOL, code_version, rows_as_dicts
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks import charts
from maskforge.tasks.charts import percent
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.feed import normalize
from maskforge.tasks.gfss.preflight import NOVEL_MANIFEST, check_eval_inputs, open_fold
from maskforge.tasks.learner import Record, Shown, table_of
from maskforge.tasks.progress import eta

#: Val splits up to this many images are decoded once and kept for every (run, step) checkpoint.
CACHE_IMAGES = 512
#: The metrics of a GFSS row, in display order (each also has a "_std" over run seeds).
GFSS_METRICS = ("base_miou", "novel_miou", "hm", "base_miou_last", "novel_miou_last", "hm_last")


@torch.no_grad()
def predict(net: GfssNet, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Return the (H, W) argmax model ids of one image at full resolution."""
    return net(normalize([image]).to(device))[0].argmax(0).cpu().numpy()


def score_checkpoint(net: GfssNet, class_map: ClassMap, fold_novel, records, device: torch.device) -> dict:
    """Score one checkpoint on the val records: PIFS masking (unlearned novel pixels excluded), ignore excluded."""
    acc = GfssAccumulator(class_map.num_classes)
    for record in records:
        if record.image.shape[:2] != record.label.shape:
            raise DatasetError(
                f"{record.image_id}: image size {record.image.shape[:2]} differs from its mask size "
                f"{record.label.shape}"
            )
        acc.add(predict(net, record.image, device), class_map.to_model(record.label, fold_novel))
    scores = acc.scores(class_map.base_model_ids(), class_map.learned_novel_model_ids())
    to_dataset = {m: d for d, m in class_map.model_ids().items()}
    scores["class_iou"] = {str(to_dataset[int(k)]): v for k, v in scores["class_iou"].items()}
    return scores


def eval_gfss(config: GfssConfig, log: Callable[[str], None] = print) -> dict:
    """Evaluate every (run, step) checkpoint of the novel stage; return per-step scores and their summaries.

    Per run: PIFS average over steps and last step (base mIoU with background, novel mIoU over learned classes, HM);
    over runs: mean and std. Runs with run.threads torch CPU threads (restored afterwards).
    """
    with torch_threads(config.run.threads):
        return _evaluate(config, log)


def _records(dataset, ids: list[str]):
    """Yield val records, decoded once into a list when the split is small (it is read once per checkpoint)."""
    if len(ids) <= CACHE_IMAGES:
        cached = [dataset.load(i) for i in ids]
        return lambda: cached
    return lambda: (dataset.load(i) for i in ids)


def _evaluate(config: GfssConfig, log: Callable[[str], None]) -> dict:
    """The body of eval_gfss."""
    e = config.eval
    check_eval_inputs(config)  # before a checkpoint loads: a wrong input fails in a second
    manifest = json.loads(read_bytes(join(config.novel_dir(), NOVEL_MANIFEST)))
    dataset, fold = open_fold(config)
    ids = dataset.image_ids(e.split)
    if e.max_images:
        ids = ids[: e.max_images]
    records: Callable[[], list[ImageRecord]] = _records(dataset, ids)
    device = resolve_device(config.run.device)
    start, per_run = time.perf_counter(), []
    total, scored = len(ids) * sum(len(run["steps"]) for run in manifest["runs"]), 0
    last_class_iou: list[dict[str, float]] = []
    for run in manifest["runs"]:
        steps = []
        for step in run["steps"]:
            net, _ = load_gfss(step["checkpoint"])
            class_map = ClassMap(tuple(fold.base), tuple(step["novel_learned"]))
            if net.spec.num_classes != class_map.num_classes:
                raise ConfigError(
                    f"{step['checkpoint']}: {net.spec.num_classes} classes, expected {class_map.num_classes} "
                    f"(background + {len(fold.base)} base + {len(step['novel_learned'])} learned novel)"
                )
            scores = score_checkpoint(net.to(device).eval(), class_map, fold.novel, records(), device)
            steps.append({**scores, "classes": step["classes"]})
            scored += len(ids)
            elapsed = time.perf_counter() - start
            log(
                f"images {scored}/{total}: run seed {run['seed']} step {len(steps) - 1}: base "
                f"{100 * scores['base_miou']:.2f} novel {100 * scores['novel_miou']:.2f} HM {100 * scores['hm']:.2f} "
                f"({elapsed:.1f} s, {eta(scored, total, elapsed)})"
            )
        per_run.append({"seed": run["seed"], "steps": steps, "summary": pifs_summary(steps)})
        last_class_iou.append(steps[-1]["class_iou"])
    keys = sorted({k for c in last_class_iou for k in c}, key=int)
    class_iou = {k: float(np.mean([c[k] for c in last_class_iou if k in c])) for k in keys}
    return {
        "setting": manifest["setting"],
        "method": manifest["method"],
        "backbone": config.model.backbone,
        "checkpoint": manifest["base_checkpoint"],
        "novel_dir": config.novel_dir(),
        "dataset": dataset.name,
        "fold": fold.index,
        "split": e.split,
        "shots": manifest["shots"],
        "images": len(ids),
        "synthetic_runs": manifest["synthetic_runs"],
        "runs": per_run,
        "summary": seed_summary([r["summary"] for r in per_run]),
        "class_iou_last": class_iou,
        "seconds": round(time.perf_counter() - start, 2),
    }


def benchmark_rows(config: GfssConfig, result: dict) -> list[dict]:
    """Return the benchmark-table row of a GFSS evaluation (metrics: PIFS average and last step, mean and std)."""
    summary = result["summary"]
    metrics = {k: float(summary[k]) for k in GFSS_METRICS} | {
        f"{k}_std": float(summary[f"{k}_std"]) for k in GFSS_METRICS
    }
    return [
        {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": f"gfss-{result['method']}",
            "backbone": result["backbone"],
            "checkpoint": result["checkpoint"],
            "dataset": result["dataset"],
            "fold": result["fold"],
            "split": result["split"],
            "shots": result["shots"],
            "protocol": GFSS_PROTOCOL,
            "setting": result["setting"],
            "synthetic_source": ",".join(result["synthetic_runs"]) or "none",
            "synthetic_per_class": 0,
            "evaluated": result["images"],
            "runs": len(result["runs"]),
            "seed": config.novel.master_seed,
            "metrics": metrics,
            "class_iou": result["class_iou_last"],
            "config_hash": config.hash(),
            "code_version": code_version(),
        }
    ]


def summary_table(result: dict) -> list[dict]:
    """Return the table-artifact rows of an evaluation: base / novel / HM in %, mean ± std over run seeds."""
    s = result["summary"]

    def cell(key: str) -> str:
        return f"{100 * s[key]:.1f} ± {100 * s[key + '_std']:.1f}"

    return [
        {"setting": result["setting"], "report": "PIFS average over steps"}
        | {"base mIoU": cell("base_miou"), "novel mIoU": cell("novel_miou"), "HM": cell("hm")},
        {"setting": result["setting"], "report": "last step"}
        | {"base mIoU": cell("base_miou_last"), "novel mIoU": cell("novel_miou_last"), "HM": cell("hm_last")},
    ]


def record(config: GfssConfig, result: dict) -> Record:
    """What an evaluation appends and publishes (the learner protocol's record): its row, the summary table artifact
    and the trend artifact."""
    key = f"gfss-{result['dataset']}-f{result['fold']}-{result['shots']}shot"
    return Record(
        rows=benchmark_rows(config, result),
        table_key=f"{key}-{result['setting'].replace('+', '-')}",
        table=summary_table(result),
        about=f"GFSS {result['setting']} (%, mean ± std over {len(result['runs'])} run seeds)",
        trend_key=f"{key}-trend",
        trend=trend_markdown,
    )


def log_line(result: dict) -> str:
    """The line the evaluation flow logs: PIFS-average base, novel and HM in %."""
    s = result["summary"]
    return (
        f"{result['setting']}: base {100 * s['base_miou']:.2f}  novel {100 * s['novel_miou']:.2f}  "
        f"HM {100 * s['hm']:.2f} (PIFS average, {len(result['runs'])} runs)"
    )


def show(result: dict) -> Shown:
    """What `maskforge gfss eval` prints: base / novel / HM (mean ± std over run seeds) per report, then the rows."""
    title = (
        f"GFSS {result['setting']} on {result['dataset']} fold {result['fold']}, {result['shots']}-shot: "
        f"{result['images']} images, {len(result['runs'])} run seeds (mean ± std, %)"
    )
    columns = ("report", "base mIoU", "novel mIoU", "HM")
    rows = [{c: row[c] for c in columns} for row in summary_table(result)]
    return table_of(title, rows, f"benchmark rows: {result['table_file']}")


def trend_markdown(table, dataset: str, fold: int, shots: int, last: int = 20) -> str:
    """Return markdown of the GFSS rows of one (dataset, fold, shots) over time per setting: HM chart and table."""
    rows = [
        r
        for r in rows_as_dicts(table)
        if r["protocol"] == GFSS_PROTOCOL and (r["dataset"], r["fold"], r["shots"]) == (dataset, fold, shots)
    ]
    columns = [
        ("runs", lambda r: str(r["runs"])),
        ("base mIoU", percent("base_miou")),
        ("novel mIoU", percent("novel_miou")),
        ("HM", percent("hm")),
    ]
    return charts.trend_markdown(rows, "GFSS", f"{dataset} fold {fold}, {shots}-shot", "hm", "HM", columns, last)
