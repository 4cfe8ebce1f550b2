"""Table 1's aggregation: the mean over the four folds of GFSS rows with the same config, in `results ls` and the
benchmark artifact; HM of the mean base and mean novel mIoU."""

import pytest
from test_results_table import GFSS, HSNET
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.console import console
from maskforge.storage.results import append_results, read_results, rows_as_dicts, store_config
from maskforge.storage.yaml_config import digest
from maskforge.tasks.benchmark import MEAN_FOLD, fold_mean_rows, overview_markdown, stored_configs

SCORES = {0: (0.6, 0.2), 1: (0.4, 0.4), 2: (0.5, 0.3), 3: (0.5, 0.1)}  # fold: (base, novel)


def _config(fold: int, lr: float = 0.01) -> dict:
    return {"dataset": {"name": "toy", "fold": fold}, "novel": {"method": "gaps", "lr_head": lr}}


def _row(fold: int, config: dict, created: str = "2026-12-01T00:00:00+00:00") -> dict:
    base, novel = SCORES[fold]
    metrics = {"base_miou": base, "novel_miou": novel, "hm": 2 * base * novel / (base + novel)}
    more = {"fold": fold, "dataset": "toy", "metrics": metrics, "config_hash": digest(config), "created_at": created}
    return {**GFSS, **more}


@pytest.fixture
def folder(tmp_path):
    """Four folds of one config, three folds of another (lr differs), stored configs beside the table."""
    out = str(tmp_path / "results")
    rows = []
    for fold in range(4):
        rows.append(_row(fold, _config(fold)))
        store_config(out, digest(_config(fold)), _config(fold))
    for fold in range(3):
        rows.append({**_row(fold, _config(fold, 0.02)), "setting": "other"})
        store_config(out, digest(_config(fold, 0.02)), _config(fold, 0.02))
    append_results(out, rows + [HSNET])
    return out


def test_the_fold_mean_is_a_row_of_its_own_with_the_hm_of_the_means(folder):
    rows = rows_as_dicts(read_results(folder))
    (mean,) = fold_mean_rows(rows, stored_configs(folder))  # the 3-fold group and the HSNet row give none
    assert mean["fold"] == MEAN_FOLD and mean["setting"] == GFSS["setting"] and mean["evaluated"] == 4 * 40
    metrics = dict(mean["metrics"])
    assert metrics["base_miou"] == pytest.approx(0.5) and metrics["novel_miou"] == pytest.approx(0.25)
    assert metrics["hm"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)  # not the mean of the fold HMs
    fold_hms = [2 * b * n / (b + n) for b, n in SCORES.values()]
    assert metrics["hm"] != pytest.approx(sum(fold_hms) / 4, abs=1e-4)
    # configs that differ in more than the fold, or rows without a stored config, make no mean
    other = _config(3, 0.5)
    more = rows + [{**_row(3, other), "setting": "other"}]
    assert len(fold_mean_rows(more, stored_configs(folder))) == 1  # fold 3's config is not stored
    assert fold_mean_rows(rows, lambda h: None) == []
    # a newer row of a fold replaces the older one
    newer = rows + [{**_row(0, _config(0)), "created_at": "2026-12-02T00:00:00+00:00", "metrics": {
        "base_miou": 1.0, "novel_miou": 0.2, "hm": 1 / 3}}]  # fmt: skip
    (mean,) = fold_mean_rows(newer, stored_configs(folder))
    assert dict(mean["metrics"])["base_miou"] == pytest.approx(0.6)


def test_results_ls_and_the_overview_show_the_fold_mean(folder):
    before = console._width
    console.width = 240
    try:
        result = CliRunner().invoke(app, ["results", "ls", folder])
    finally:
        console._width = before
    assert result.exit_code == 0, result.output
    assert "gfss-pifs, mean over folds 0-3" in result.output and "toy f0-3 mean" in result.output
    assert "33.33" in result.output  # HM(50, 25) in %
    text = overview_markdown(rows_as_dicts(read_results(folder)), "toy", 0, stored_configs(folder))
    assert "## gfss-pifs: mean over folds 0-3" in text
    assert "| gfss-gaps, 1-shot | 1R+20S | syn (20/class) | 33.33 | 50.00 | 25.00 |" in text
    assert "mean over folds" not in overview_markdown(rows_as_dicts(read_results(folder)), "toy", 0)
