"""The benchmark at a glance: each protocol's headline metrics, and every learner's newest rows of a dataset fold."""

from __future__ import annotations

from maskforge.storage.results import FSIS_PROTOCOL, GFSS_PROTOCOL, HSNET_PROTOCOL

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


def newest_per_setting(rows: list[dict]) -> list[dict]:
    """Return the newest row of each (protocol, model, shots, setting), ordered by protocol, model, shots, setting."""
    newest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["created_at"]):  # a later row of the same setting replaces an earlier one
        newest[(r["protocol"], r["model"], r["shots"], r["setting"])] = r
    return [newest[key] for key in sorted(newest)]


def overview_markdown(rows: list[dict], dataset: str, fold: int) -> str:
    """Return markdown of every learner's newest rows of one dataset fold: a table per protocol, headline metrics
    in %, the best value of the ranking metric in bold."""
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
    return "\n".join(lines) + "\n"
