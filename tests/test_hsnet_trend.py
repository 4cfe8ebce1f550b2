"""The evaluation trend artifact: earlier benchmark rows of the same dataset, fold and shots, per setting, over time."""

import pyarrow as pa
import pyarrow.parquet as pq

from maskforge.storage.results import OLD_RESULTS_SCHEMA, append_results, read_results
from maskforge.tasks.hsnet.eval import trend_markdown


def _row(created, setting, miou, shots=1, fold=0):
    return {
        "created_at": created,
        "model": "hsnet",
        "backbone": "tiny",
        "checkpoint": f"runs/x/{created[-2:]}.safetensors",
        "dataset": "toy",
        "fold": fold,
        "split": "val",
        "shots": shots,
        "protocol": "fss-episodes",
        "setting": setting,
        "synthetic_source": "none",
        "synthetic_per_class": 0,
        "evaluated": 10,
        "runs": 1,
        "seed": 0,
        "metrics": {"miou": miou, "fb_iou": 0.5},
        "class_iou": {"1": miou},
        "config_hash": "h",
        "code_version": "0.1.0",
    }


def test_trend_lists_runs_per_setting_with_deltas(tmp_path):
    folder = str(tmp_path / "results")
    append_results(folder, [_row("2026-11-20T02:00:01", "1R", 0.30), _row("2026-11-20T02:00:01", "1R+20S", 0.35)])
    append_results(folder, [_row("2026-11-21T02:00:02", "1R", 0.325)])
    append_results(
        folder, [_row("2026-11-22T02:00:03", "1R", 0.9, shots=5), _row("2026-11-22T02:00:03", "1R", 0.9, fold=1)]
    )
    gfss = {"protocol": "gfss-pifs", "model": "gfss-gaps", "runs": 3, "metrics": {"base_miou": 0.9, "hm": 0.9}}
    append_results(folder, [{**_row("2026-11-23T02:00:04", "1R", 0.9), **gfss}])  # same dataset, fold and shots
    text = trend_markdown(read_results(folder), "toy", 0, 1)
    assert text.startswith("# HSNet trend: toy fold 0, 1-shot")
    one_r = text.split("## 1R\n")[1].split("## ")[0]
    assert "| 2026-11-20T02:00:01 | none | tiny | 01.safetensors | 30.00 | 50.00 |  |" in one_r
    assert "| 2026-11-21T02:00:02 | none | tiny | 02.safetensors | 32.50 | 50.00 | +2.50 |" in one_r
    assert "90.00" not in text and "2026-11-23" not in text  # other shots, folds and protocols are other trends
    assert "## 1R+20S" in text and text.count("| 35.00 |") == 1


def test_trend_of_old_schema_files_is_byte_identical(tmp_path):
    rows = [_row("2026-11-20T02:00:01", "1R", 0.30), _row("2026-11-21T02:00:02", "1R", 0.325)]
    new_folder = str(tmp_path / "new")
    for r in rows:
        append_results(new_folder, [r])
    old = [
        {
            **{k: v for k, v in r.items() if k not in ("protocol", "evaluated", "runs", "metrics")},
            "episodes": r["evaluated"],
            "miou": r["metrics"]["miou"],
            "fb_iou": r["metrics"]["fb_iou"],
            "class_iou": list(r["class_iou"].items()),
        }
        for r in rows
    ]
    (tmp_path / "old").mkdir()
    pq.write_table(
        pa.Table.from_pylist(old, schema=OLD_RESULTS_SCHEMA), str(tmp_path / "old" / "results-2026-old.parquet")
    )
    text = trend_markdown(read_results(new_folder), "toy", 0, 1)
    assert trend_markdown(read_results(str(tmp_path / "old")), "toy", 0, 1) == text
    assert "| 2026-11-21T02:00:02 | none | tiny | 02.safetensors | 32.50 | 50.00 | +2.50 |" in text
