"""MaskDiff reported as its paper reports: K-shot stages for several TFA data seeds (draws), each sampled with
eval.sampling_seeds seeds, summarised as mean and spread over draws and over samplings.

For a metric m (segm or bbox AP / AP50 / AP75 of all, base or novel classes) and D completed draws d, each with
sampling values m_{d,s} (s = 1..S; bbox has one value per draw: detections are made once):

    per-draw mean     m_d   = mean_s m_{d,s}
    mean              M     = mean_d m_d                (= the mean of all D x S values: S is the same for all)
    std over draws          = std_d m_d                 (ddof 0: how much the K-shot draw moves the number)
    std over samplings      = mean_d std_s m_{d,s}      (ddof 0: how much the sampler moves it within a draw)

A draw that fails is retried (`retries` times) and, if it still fails, reported in "failed" with its error; the
summary then says "D of N draws" and `complete` is False. A draw is never dropped silently.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

from maskforge.storage.fs import atomic_write_bytes, join
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.learner import Shown, table_of
from maskforge.tasks.maskdiff.config import MaskdiffConfig

#: Class subsets and COCO numbers aggregated (tasks/maskdiff/evaluate.py's SUBSETS and AP_KEYS).
SUBSETS = ("all", "base", "novel")
AP_KEYS = ("ap", "ap50", "ap75")
#: TFA's data seeds (eval/fsis_protocol.py:DATA_SEEDS): 0 (the official split) to 9.
MAX_DATA_SEED = 9


def parse_data_seeds(text: str) -> list[int]:
    """Return the data seeds of a CLI value: "0-9", "3", "0,2,5" or "0-2,7"; each 0-9, listed once, in order given;
    anything else is a ConfigError naming the value."""
    seeds: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ConfigError(f"--data-seeds: {text!r}; expected seeds 0-{MAX_DATA_SEED} like 0-9, 3 or 0,2,5")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if lo > hi or hi > MAX_DATA_SEED:
            raise ConfigError(
                f"--data-seeds: {part.strip()!r} in {text!r}; expected seeds in 0-{MAX_DATA_SEED}, low-high"
            )
        for seed in range(lo, hi + 1):
            if seed in seeds:
                raise ConfigError(f"--data-seeds: seed {seed} is listed twice in {text!r}")
            seeds.append(seed)
    return seeds


def _values(result: dict, kind: str, subset: str, key: str) -> list[float]:
    """Return one draw's values of a metric: per sampling for segm, the one bbox value."""
    if kind == "segm":
        return [float(p[subset][key]) for p in result["per_seed_segm"]]
    return [float(result["bbox"][subset][key])]


def aggregate_draws(results: Sequence[dict]) -> dict:
    """Return {kind: {subset: {key: {mean, std_draws, std_samplings, per_draw}}}} over completed draws' evaluation
    results (eval_maskdiff's dicts: per_seed_segm, bbox), by the formulas of the module docstring. COCO's -1 (no
    ground truth of a subset, e.g. base classes on VOC) stays -1."""
    if not results:
        raise ValueError("aggregate_draws: no completed draw to aggregate")
    out: dict = {}
    for kind in ("segm", "bbox"):
        out[kind] = {}
        for subset in SUBSETS:
            out[kind][subset] = {}
            for key in AP_KEYS:
                values = [_values(r, kind, subset, key) for r in results]
                if any(v < 0 for draw in values for v in draw):
                    out[kind][subset][key] = {"mean": -1.0, "std_draws": 0.0, "std_samplings": 0.0, "per_draw": []}
                    continue
                per_draw = [float(np.mean(v)) for v in values]
                out[kind][subset][key] = {
                    "mean": float(np.mean(per_draw)),
                    "std_draws": float(np.std(per_draw)),
                    "std_samplings": float(np.mean([np.std(v) for v in values])),
                    "per_draw": per_draw,
                }
    return out


def run_draws(
    seeds: Sequence[int],
    run_one: Callable[[int], dict],
    retries: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Run run_one(data seed) (train the K-shot stage if needed, evaluate it) for every seed; retry a failure up to
    `retries` times; return {"seeds", "completed" ({seed: result}), "failed" ([{data_seed, attempts, error}]),
    "complete", "summary" (aggregate_draws of the completed; None when none completed)}."""
    completed: dict[int, dict] = {}
    failed: list[dict] = []
    for seed in seeds:
        for attempt in range(1, retries + 2):
            try:
                completed[seed] = run_one(seed)
                break
            except Exception as err:  # noqa: BLE001 -- any failure of one draw is recorded, the others still run
                line = f"{type(err).__name__}: {err}".splitlines()[0]
                log(f"data seed {seed}: attempt {attempt} of {retries + 1} failed ({line})")
                if attempt == retries + 1:
                    failed.append(
                        {"data_seed": seed, "attempts": attempt, "error": line, "traceback": traceback.format_exc()}
                    )
    ok = [completed[s] for s in seeds if s in completed]
    return {
        "seeds": list(seeds),
        "completed": {str(s): r for s, r in completed.items()},
        "failed": failed,
        "complete": not failed,
        "draws": len(ok),
        "summary": aggregate_draws(ok) if ok else None,
    }


def _pct(value: float) -> str:
    """An AP in % with two decimals, "n/a" for COCO's -1."""
    return "n/a" if value < 0 else f"{100 * value:.2f}"


def draws_table(report: dict) -> list[dict]:
    """Return table rows (one per subset) of a run_draws report: segm and bbox AP and AP50 as mean ± std over draws,
    and the segm std over samplings, in %."""
    rows = []
    summary = report["summary"]
    if summary is None:
        return rows
    for subset in SUBSETS:
        s, b = summary["segm"][subset], summary["bbox"][subset]
        rows.append(
            {
                "classes": subset,
                "segm AP": f"{_pct(s['ap']['mean'])} ± {100 * s['ap']['std_draws']:.2f}",
                "segm AP std (samplings)": f"{100 * s['ap']['std_samplings']:.2f}",
                "segm AP50": f"{_pct(s['ap50']['mean'])} ± {100 * s['ap50']['std_draws']:.2f}",
                "bbox AP": f"{_pct(b['ap']['mean'])} ± {100 * b['ap']['std_draws']:.2f}",
                "bbox AP50": f"{_pct(b['ap50']['mean'])} ± {100 * b['ap50']['std_draws']:.2f}",
            }
        )
    return rows


def draws_caption(report: dict, what: str) -> str:
    """One line naming the benchmark and how many draws completed, and any failed seeds with their errors."""
    line = f"{what}: {report['draws']} of {len(report['seeds'])} draws (data seeds {report['seeds']})"
    for f in report["failed"]:
        line += f"; data seed {f['data_seed']} FAILED after {f['attempts']} attempt(s): {f['error']}"
    return line


def seed_config(config: MaskdiffConfig, data_seed: int) -> MaskdiffConfig:
    """Return the config of one draw: finetune.data_seed replaced (0-9, checked by parse_data_seeds)."""
    return config.model_copy(update={"finetune": config.finetune.model_copy(update={"data_seed": int(data_seed)})})


def draws_file(config: MaskdiffConfig, seeds: Sequence[int]) -> str:
    """Return where a draws report is written: RESULTS_DIR/maskdiff-draws/NAME-SPLIT-kK-seedsA-B-HASH12.json (the
    hash of the config, data seed left at the config's: the same study names the same file)."""
    span = (
        f"{min(seeds)}-{max(seeds)}"
        if list(seeds) == list(range(min(seeds), max(seeds) + 1))
        else "-".join(str(s) for s in seeds)
    )
    name = f"{config.run.name}-{config.split}-k{config.finetune.shots}-seeds{span}-{config.hash()[:12]}.json"
    return join(config.eval.results_dir, "maskdiff-draws", name)


def write_draws(config: MaskdiffConfig, report: dict) -> str:
    """Write a run_draws report (plus the config and the time) as JSON; return its location."""
    url = draws_file(config, report["seeds"])
    payload = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "benchmark": {"split": config.split, "eval_split": config.eval.split, "shots": config.finetune.shots},
        "config": config.resolved(),
        **report,
    }
    atomic_write_bytes(url, json.dumps(payload, indent=2, default=str).encode())
    return url


def study_name(config: MaskdiffConfig) -> str:
    """What a draws study is of: "MaskDiff SPLIT K-shot on EVAL_SPLIT"."""
    return f"MaskDiff {config.split} {config.finetune.shots}-shot on {config.eval.split}"


def study_caption(report: dict, config: MaskdiffConfig) -> str:
    """The draws flow's closing line: the study, draws completed, failed seeds (draws_caption)."""
    return draws_caption(report, study_name(config))


def show_draws(report: dict, config: MaskdiffConfig) -> Shown:
    """What `maskforge maskdiff eval --data-seeds` prints: the draws table, the caption and the report's location; a
    problem (exit 1) when a seed failed (it is in the report)."""
    problem = None
    if report["failed"]:
        problem = f"{len(report['failed'])} data seed(s) failed; see {report['draws_file']}"
    caption = (study_caption(report, config), f"draws report: {report['draws_file']}")
    rows = draws_table(report)
    title = f"{study_name(config)}: mean ± std over draws, segm std over samplings (%)" if rows else ""
    return replace(table_of(title, rows, *caption), problem=problem)
