"""The benchmark at a glance: each protocol's headline metrics, and every learner's newest rows of a dataset fold."""

from __future__ import annotations

from collections.abc import Callable

from maskforge.eval.gfss_metrics import fold_mean
from maskforge.storage.results import FSIS_PROTOCOL, GFSS_PROTOCOL, HSNET_PROTOCOL, ResultsError, read_config
from maskforge.storage.yaml_config import digest

#: The folds whose mean is a row of its own (AlignDiff's Table 1 reports the mean over the four folds).
MEAN_FOLDS = (0, 1, 2, 3)
#: The `fold` of a mean-over-folds row (no real fold has it).
MEAN_FOLD = -1

#: The metrics a protocol's rows are compared by, first the one that ranks them.
HEADLINE = {
    HSNET_PROTOCOL: ("miou", "fb_iou"),
    GFSS_PROTOCOL: ("hm", "base_miou", "novel_miou"),
    FSIS_PROTOCOL: ("segm_ap_novel", "segm_ap_base", "bbox_ap_novel"),
}


def headline(protocol: str, rows: list[dict]) -> tuple[str, ...]:
    """Return the metrics to show for a protocol's rows: HEADLINE's, or every metric they hold (an unknown one)."""
    return HEADLINE.get(protocol) or tuple(sorted({name for r in rows for name in dict(r["metrics"])}))


def metric_cells(row: dict, metrics: tuple[str, ...]) -> list[str]:
    """Return a row's `metrics` as table cells in % with two decimals, '–' for one the row lacks."""
    held = dict(row["metrics"])
    return [f"{100 * held[m]:.2f}" if m in held else "–" for m in metrics]


def synthetic_label(row: dict) -> str:
    """Return a row's synthetic data as a short cell: 'none', or the runs' folder names (and N per class if set)."""
    if row["synthetic_source"] == "none":
        return "none"
    names = ", ".join(part.rstrip("/").rsplit("/", 1)[-1] for part in row["synthetic_source"].split(","))
    return f"{names} ({row['synthetic_per_class']}/class)" if row["synthetic_per_class"] else names


def stored_configs(table_dir: str) -> Callable[[str], dict | None]:
    """Return config_of(hash): the config stored beside the table for that row hash, None when none is stored."""

    def config_of(config_hash: str) -> dict | None:
        try:
            return read_config(table_dir, config_hash)[1]
        except ResultsError:
            return None

    return config_of


def _without_fold(config: dict) -> str:
    """Digest of a config with dataset.fold removed: the same config run on another fold has the same digest."""
    dataset = {k: v for k, v in dict(config.get("dataset") or {}).items() if k != "fold"}
    return digest({**config, "dataset": dataset})


def fold_mean_rows(rows: list[dict], config_of: Callable[[str], dict | None]) -> list[dict]:
    """Return Table 1's mean-over-folds rows of the GFSS rows: one per (model, dataset, shots, setting, synthetic
    data, split, runs, config without its fold) whose newest rows cover all of MEAN_FOLDS.

    Its metrics are eval/gfss_metrics.py:fold_mean of the four rows (HM of the mean base and mean novel mIoU);
    its fold is MEAN_FOLD, its config_hash the digest of the fold-less config. Rows whose config is not stored
    (config_of gives None) cannot be shown to share a config and join no mean.
    """
    groups: dict[tuple, dict[int, dict]] = {}
    for r in sorted(rows, key=lambda r: r["created_at"]):  # a later row of a fold replaces an earlier one
        if r["protocol"] != GFSS_PROTOCOL or r["fold"] not in MEAN_FOLDS:
            continue
        config = config_of(r["config_hash"])
        if config is None:
            continue
        key = (
            r["model"], r["dataset"], r["shots"], r["setting"], r["synthetic_source"], r["split"], r["runs"],
            _without_fold(config),
        )  # fmt: skip
        groups.setdefault(key, {})[r["fold"]] = r
    out = []
    for key, by_fold in sorted(groups.items(), key=lambda item: item[0][:7]):
        if set(by_fold) != set(MEAN_FOLDS):
            continue
        folds = [by_fold[f] for f in MEAN_FOLDS]
        summaries = [{k: v for k, v in dict(r["metrics"]).items() if not k.endswith("_std")} for r in folds]
        shared = set.intersection(*(set(s) for s in summaries))
        metrics = fold_mean([{k: s[k] for k in sorted(shared)} for s in summaries])
        metrics.pop("folds")
        newest = max(folds, key=lambda r: r["created_at"])
        out.append(
            {
                **newest,
                "fold": MEAN_FOLD,
                "evaluated": sum(r["evaluated"] for r in folds),
                "metrics": metrics,
                "class_iou": {},
                "checkpoint": ",".join(r["checkpoint"] for r in folds),
                "config_hash": key[-1],
            }
        )
    return out


def newest_per_setting(rows: list[dict]) -> list[dict]:
    """Return the newest row of each (protocol, model, shots, setting), ordered by protocol, model, shots, setting."""
    newest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["created_at"]):  # a later row of the same setting replaces an earlier one
        newest[(r["protocol"], r["model"], r["shots"], r["setting"])] = r
    return [newest[key] for key in sorted(newest)]


def overview_markdown(
    rows: list[dict], dataset: str, fold: int, config_of: Callable[[str], dict | None] | None = None
) -> str:
    """Return markdown of every learner's newest rows of one dataset fold: a table per protocol, headline metrics
    in %, the best value of the ranking metric in bold; with config_of (stored_configs), also the GFSS rows' mean
    over the four folds of the dataset where all four have a row of the same config (fold_mean_rows)."""
    chosen = newest_per_setting([r for r in rows if (r["dataset"], r["fold"]) == (dataset, fold)])
    lines = [f"# Benchmark: {dataset} fold {fold}", "", "The newest row of each learner, shot count and setting."]
    for protocol in sorted({r["protocol"] for r in chosen}):
        group = [r for r in chosen if r["protocol"] == protocol]
        metrics = headline(protocol, group)
        best = max(dict(r["metrics"]).get(metrics[0], float("-inf")) for r in group)
        # narrow enough for the UI's artifact pane: episodes, runs, time and config hash are in `results ls`
        headers = ["learner", "setting", "synthetic", *(f"{m} %" for m in metrics), "date"]
        lines += ["", f"## {protocol}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for r in group:
            cells = metric_cells(r, metrics)
            if dict(r["metrics"]).get(metrics[0]) == best:
                cells[0] = f"**{cells[0]}**"
            who = f"{r['model']}, {r['shots']}-shot"
            row = [who, r["setting"], synthetic_label(r), *cells, r["created_at"][:10]]
            lines.append("| " + " | ".join(row) + " |")
    if not chosen:
        lines += ["", "No rows yet."]
    means = fold_mean_rows([r for r in rows if r["dataset"] == dataset], config_of) if config_of else []
    if means:
        metrics = headline(GFSS_PROTOCOL, means)
        headers = ["learner", "setting", "synthetic", *(f"{m} %" for m in metrics), "date"]
        lines += ["", f"## {GFSS_PROTOCOL}: mean over folds 0-3", "", "Table 1's aggregation: HM of the mean base and "
                  "mean novel mIoU.", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]  # fmt: skip
        for r in means:
            row = [f"{r['model']}, {r['shots']}-shot", r["setting"], synthetic_label(r), *metric_cells(r, metrics)]
            lines.append("| " + " | ".join([*row, r["created_at"][:10]]) + " |")
    return "\n".join(lines) + "\n"
