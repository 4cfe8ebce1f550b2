"""`maskforge results ls`: the benchmark table filtered, per protocol, as CSV and JSON; bad folders named."""

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from test_results_table import GFSS, HSNET
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.console import console
from maskforge.storage.results import (
    ResultsError,
    append_results,
    read_config,
    read_results,
    rows_as_dicts,
    select_rows,
    store_config,
)
from maskforge.storage.yaml_config import digest
from maskforge.tasks.benchmark import overview_markdown

MASKDIFF = {
    **HSNET, "model": "maskdiff", "protocol": "fsis-coco", "setting": "K-shot", "shots": 5, "evaluated": 16, "runs": 10,
    "metrics": {"segm_ap_novel": 0.1216, "segm_ap_base": 0.1844, "bbox_ap_novel": 0.0754, "segm_ap_all": 0.17},
    "class_iou": {"1": 0.2},
}  # fmt: skip


@pytest.fixture
def folder(tmp_path):
    """A results folder with an HSNet row (newest), a GFSS row and a MaskDiff row, appended in that order."""
    out = tmp_path / "results"
    append_results(str(out), [{**HSNET, "created_at": "2026-11-25T00:00:00+00:00"}])
    append_results(str(out), [GFSS])  # created 2026-11-23
    append_results(str(out), [{**MASKDIFF, "created_at": "2026-11-24T00:00:00+00:00"}])
    return out


@pytest.fixture(autouse=True)
def wide_console():
    """Render tables 240 columns wide, whatever terminal (or none) the tests run in; restored after."""
    before = console._width
    console.width = 240
    yield
    console._width = before


def ls(*args: str):
    """Run `maskforge results ls ARGS`."""
    return CliRunner().invoke(app, ["results", "ls", *args])


def test_a_table_per_protocol_with_its_headline_metrics_in_percent(folder):
    result = ls(str(folder))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("fsis-coco: 1 row(s)") < out.index("fss-episodes: 1 row(s)") < out.index("gfss-pifs: 1 row(s)")
    header = next(line for line in out.splitlines() if "segm_ap_novel" in line)
    assert "segm_ap_base" in header and "bbox_ap_novel" in header and "segm_ap_all" not in header
    assert "12.16" in out and "18.44" in out and "7.54" in out  # MaskDiff in %
    assert "30.00" in out and "60.00" in out  # HSNet mIoU 0.1 + 0.2, FB-IoU
    assert "toy f0 1-shot" in out and "syn (20/class)" in out and "40 × 3" in out
    hm = 2 * 0.71 * 0.123456789 / (0.71 + 0.123456789)
    assert f"{100 * hm:.2f}" in out and "12.35" in out and "71.00" in out


def test_filters_and_last_pick_rows_oldest_first(folder):
    out = ls(str(folder), "--model", "gfss-gaps").output
    assert "gfss-pifs: 1 row(s)" in out and "fss-episodes" not in out and "fsis-coco" not in out
    newest = json.loads(ls(str(folder), "--last", "1", "--format", "json").output)
    assert [r["model"] for r in newest] == ["hsnet"]  # by created_at, not by file order
    both = json.loads(ls(str(folder), "--last", "2", "--format", "json").output)
    assert [r["model"] for r in both] == ["maskdiff", "hsnet"]
    assert "no benchmark rows match (3 in all)" in ls(str(folder), "--shots", "7").output
    assert ls(str(folder), "--fold", "4").exit_code == 2  # bounded option


def test_csv_and_json_keep_the_stored_values(folder):
    rows = list(csv.DictReader(io.StringIO(ls(str(folder), "--format", "csv").output)))
    assert [r["model"] for r in rows] == ["gfss-gaps", "maskdiff", "hsnet"]
    hsnet = rows[2]
    assert float(hsnet["metric:miou"]) == 0.1 + 0.2 and hsnet["metric:hm"] == "" and hsnet["fold"] == "0"
    assert "class_iou" not in hsnet and "metric:segm_ap_all" in hsnet
    stored = sorted(rows_as_dicts(read_results(str(folder))), key=lambda r: r["created_at"])
    assert json.loads(ls(str(folder), "--format", "json").output) == stored


def test_chosen_metrics_and_unknown_ones(folder):
    out = ls(str(folder), "--model", "maskdiff", "--metric", "segm_ap_all").output
    assert "17.00" in out and "12.16" not in out
    result = ls(str(folder), "--model", "hsnet", "--metric", "hm")
    assert result.exit_code == 1
    assert "error: --metric: no selected row has ['hm']; they have ['fb_iou', 'miou']" in result.output


def test_errors_go_to_stderr_not_into_the_data(folder):
    (folder / "results-29990101T000000000000-deadbeef.parquet").write_bytes(b"not parquet")
    result = ls(str(folder), "--format", "csv")
    assert result.exit_code == 1 and result.stdout == ""  # `> table.csv` gets no error line
    assert result.stderr.startswith("error: ") and "deadbeef.parquet" in result.stderr


def test_bad_folders_are_one_line(folder, tmp_path):
    missing = ls(str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "nope: no such folder" in missing.output
    (tmp_path / "file").write_text("x")
    assert "file: is a file; expected the benchmark table's folder" in ls(str(tmp_path / "file")).output
    (folder / "results-29990101T000000000000-deadbeef.parquet").write_bytes(b"not parquet")
    broken = ls(str(folder))
    assert broken.exit_code == 1 and "deadbeef.parquet: not a readable Parquet file" in broken.output
    assert "move the file away to read the others" in broken.output


def test_select_rows_names_an_unknown_column():
    with pytest.raises(ResultsError, match=r"select_rows: no column \['metrics'\]"):
        select_rows([HSNET], metrics=1)
    assert select_rows([HSNET, GFSS], model="hsnet") == [HSNET]
    assert select_rows([HSNET, GFSS], fold=None, last=1) == [GFSS]  # a created_at tie keeps table order


def test_configs_are_stored_by_their_hash_and_checked_on_read(tmp_path):
    folder = str(tmp_path / "results")
    config = {"run": {"name": "toy"}, "eval": {"episodes": 1000, "shots": 1}}
    full = digest(config)
    url = store_config(folder, full, config)
    assert url.endswith(f"configs/{full}.json") and store_config(folder, full, config) == url  # once, idempotent
    assert read_config(folder, full[:8].upper()) == (full, config)
    with pytest.raises(ResultsError, match="the config's sha256 is .*, not the row's abc"):
        store_config(folder, "abc", config)
    with pytest.raises(ResultsError, match="no stored config 0000"):
        read_config(folder, "0000")
    with pytest.raises(ResultsError, match="expected 4 to 64 hex digits"):
        read_config(folder, "xyz!")
    for twin in ("abcd1", "abcd2"):
        (tmp_path / "results" / "configs" / f"{twin}.json").write_text("{}")
    with pytest.raises(ResultsError, match=r"2 stored configs start with abcd: \['abcd1', 'abcd2'\]"):
        read_config(folder, "abcd")
    Path(url).write_text(Path(url).read_text().replace("1000", "100"))
    with pytest.raises(ResultsError, match="does not hash to its name; the file was changed"):
        read_config(folder, full)
    assert read_results(folder).num_rows == 0  # the configs folder is no table file


def test_results_config_prints_the_stored_config(tmp_path):
    folder = tmp_path / "results"
    config = {"eval": {"episodes": 1000}, "run": {"name": "toy"}}
    store_config(str(folder), digest(config), config)
    result = CliRunner().invoke(app, ["results", "config", digest(config)[:6], str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"# config {digest(config)} (from {folder})"
    assert yaml.safe_load("\n".join(lines[1:])) == config
    missing = CliRunner().invoke(app, ["results", "config", "beef", str(folder)])
    assert missing.exit_code == 1 and "no stored config beef" in missing.output


def test_the_overview_shows_each_learners_newest_rows_of_a_fold():
    older = {**HSNET, "created_at": "2026-11-20T00:00:00+00:00", "metrics": {"miou": 0.9, "fb_iou": 0.9}}
    other_fold = {**HSNET, "fold": 1, "model": "elsewhere"}
    diffews = {**HSNET, "model": "diffews", "metrics": {"miou": 0.4, "fb_iou": 0.7}}
    text = overview_markdown([older, HSNET, other_fold, diffews, GFSS, MASKDIFF], "toy", 0)
    lines = text.splitlines()
    assert lines[0] == "# Benchmark: toy fold 0"
    assert [line for line in lines if line.startswith("## ")] == ["## fsis-coco", "## fss-episodes", "## gfss-pifs"]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| learner")]
    learners = ["| maskdiff, 5-shot", "| diffews, 1-shot", "| hsnet, 1-shot", "| gfss-gaps, 1-shot"]
    assert [r.split(" | ")[0] for r in rows] == learners
    hsnet = next(r for r in rows if r.startswith("| hsnet"))
    assert "| 30.00 | 60.00 |" in hsnet and "90.00" not in text  # the newer row of the setting, not the older one
    assert "| **40.00** | 70.00 |" in next(r for r in rows if r.startswith("| diffews"))  # the best mIoU
    assert "| **12.16** | 18.44 | 7.54 |" in rows[0] and "elsewhere" not in text
    assert "syn (20/class)" in rows[3] and rows[3].endswith("| 2026-11-23 |")
    assert overview_markdown([GFSS], "coco", 2).endswith("No rows yet.\n")


def test_folders_where_files_belong_are_named(tmp_path):
    folder = tmp_path / "results"
    (folder / "results-29990101T000000000000-deadbeef.parquet").mkdir(parents=True)
    with pytest.raises(ResultsError, match=r"deadbeef\.parquet: cannot be read as a table file"):
        read_results(str(folder))
    stored = tmp_path / "stored"
    (stored / "configs" / f"{'ab' * 32}.json").mkdir(parents=True)
    with pytest.raises(ResultsError, match=r"abab.*\.json: cannot be read as a stored config"):
        read_config(str(stored), "abab")
    (tmp_path / "flat" / "configs").parent.mkdir()
    (tmp_path / "flat" / "configs").write_text("x")
    with pytest.raises(ResultsError, match=r"configs: is a file; expected the folder of stored configs"):
        read_config(str(tmp_path / "flat"), "abab")


@pytest.mark.parametrize(
    "args",
    [
        ["results", "ls", ""],
        ["results", "config", "abcd", ""],
        ["hsnet", "load", ""],
        ["diffews", "load", ""],
        ["gfss", "load", ""],
        ["hsnet", "eval", ""],
        ["shards", "ls", ""],
        ["shards", "show", "runs/x", "key", "--out", ""],
        ["datasets", "check", ""],
    ],
    ids=lambda args: "-".join(a or "EMPTY" for a in args[:2]),
)
def test_an_empty_path_argument_is_a_usage_error(args):
    """'' would quietly mean the current folder (or crash a lookup): typer refuses it, naming the parameter."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "empty; expected a" in result.output and "Traceback" not in result.output


def test_empty_filters_are_refused_and_a_metric_twice_is_one_column(folder):
    empty = ls(str(folder), "--model", "")
    assert empty.exit_code == 2 and "empty; expected a value" in empty.output
    twice = ls(str(folder), "--model", "hsnet", "--metric", "miou", "--metric", "miou")
    header = next(line for line in twice.output.splitlines() if "miou" in line)
    assert header.count("miou") == 1
