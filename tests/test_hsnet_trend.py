"""The evaluation trend artifact: earlier benchmark rows of the same dataset, fold and shots, per setting, over time."""

from maskforge.storage.results import append_results, read_results
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
        "synthetic_source": "none",
        "synthetic_per_class": 0,
        "setting": setting,
        "episodes": 10,
        "seed": 0,
        "miou": miou,
        "fb_iou": 0.5,
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
    text = trend_markdown(read_results(folder), "toy", 0, 1)
    assert text.startswith("# HSNet trend: toy fold 0, 1-shot")
    one_r = text.split("## 1R\n")[1].split("## ")[0]
    assert "| 2026-11-20T02:00:01 | tiny | 01.safetensors | 30.00 | 50.00 |  |" in one_r
    assert "| 2026-11-21T02:00:02 | tiny | 02.safetensors | 32.50 | 50.00 | +2.50 |" in one_r
    assert "90.00" not in text  # other shots and folds are other trends
    assert "## 1R+20S" in text and text.count("| 35.00 |") == 1
