"""The benchmark table shared by learner families: named metrics, old HSNet-only files converted on read."""

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskforge.storage.results import (
    OLD_RESULTS_SCHEMA,
    RESULTS_SCHEMA,
    ResultsError,
    append_results,
    read_results,
    row_metric,
    rows_as_dicts,
)

COMMON = {
    "created_at": "2026-11-23T00:00:00+00:00", "backbone": "tiny", "checkpoint": "c.safetensors", "dataset": "toy",
    "fold": 0, "split": "val", "shots": 1, "synthetic_source": "none", "synthetic_per_class": 0, "seed": 3,
    "config_hash": "abc", "code_version": "0.1.0",
}  # fmt: skip
# 0.1 + 0.2 is not 0.3: the round trip must keep every bit
HSNET = {
    **COMMON, "model": "hsnet", "protocol": "fss-episodes", "setting": "1R", "evaluated": 10, "runs": 1,
    "metrics": {"miou": 0.1 + 0.2, "fb_iou": 0.6}, "class_iou": {"1": 0.25, "2": 0.35},
}  # fmt: skip
GFSS = {
    **COMMON, "model": "gfss-gaps", "protocol": "gfss-pifs", "setting": "1R+20S", "evaluated": 40, "runs": 3,
    "synthetic_source": "runs/syn", "synthetic_per_class": 20,
    "metrics": {"base_miou": 0.71, "novel_miou": 0.123456789, "hm": 2 * 0.71 * 0.123456789 / (0.71 + 0.123456789),
                "base_miou_std": 0.01, "novel_miou_std": 0.02},
    "class_iou": {},
}  # fmt: skip


def old_row(miou, fb_iou, episodes, setting="1R"):
    """A row of the schema before named metrics."""
    return {
        **COMMON, "model": "hsnet", "setting": setting, "episodes": episodes, "miou": miou, "fb_iou": fb_iou,
        "class_iou": {"1": miou},
    }  # fmt: skip


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write a table as one Parquet file, as an earlier maskforge (or a stranger) would have."""
    pq.write_table(table, str(path))


def test_hsnet_and_gfss_rows_share_one_folder(tmp_path):
    folder = str(tmp_path / "results")
    append_results(folder, [HSNET])
    append_results(folder, [GFSS])
    table = read_results(folder)
    assert table.schema.equals(RESULTS_SCHEMA) and table.num_rows == 2
    assert table.column_names[8:16] == [
        "protocol", "setting", "synthetic_source", "synthetic_per_class", "evaluated", "runs", "seed", "metrics",
    ]  # fmt: skip
    hsnet, gfss = rows_as_dicts(table)
    assert hsnet == HSNET and gfss == GFSS  # every field, metrics bit-exact
    assert hsnet["metrics"]["miou"] == 0.1 + 0.2 != 0.3
    assert list(gfss["metrics"]) == ["base_miou", "novel_miou", "hm", "base_miou_std", "novel_miou_std"]
    assert (gfss["protocol"], gfss["runs"], gfss["evaluated"]) == ("gfss-pifs", 3, 40)


def test_old_schema_files_are_converted_on_read(tmp_path):
    assert OLD_RESULTS_SCHEMA.names == [
        "created_at", "model", "backbone", "checkpoint", "dataset", "fold", "split", "shots", "synthetic_source",
        "synthetic_per_class", "setting", "episodes", "seed", "miou", "fb_iou", "class_iou", "config_hash",
        "code_version",
    ]  # fmt: skip
    old = pa.Table.from_pylist(
        [{**r, "class_iou": list(r["class_iou"].items())} for r in (old_row(0.3, 0.55, 1000), old_row(0.45, 0.7, 20))],
        schema=OLD_RESULTS_SCHEMA,
    )
    write_parquet(tmp_path / "results-20250101T000000000000-00000000.parquet", old)
    write_parquet(tmp_path / "results-20250101T000000000001-00000000.parquet", OLD_RESULTS_SCHEMA.empty_table())
    append_results(str(tmp_path), [GFSS])
    table = read_results(str(tmp_path))
    assert table.schema.equals(RESULTS_SCHEMA) and table.num_rows == 3
    first, second, gfss = rows_as_dicts(table)
    assert first["metrics"] == {"miou": 0.3, "fb_iou": 0.55} and second["metrics"] == {"miou": 0.45, "fb_iou": 0.7}
    assert [(r["protocol"], r["evaluated"], r["runs"]) for r in (first, second)] == [
        ("fss-episodes", 1000, 1),
        ("fss-episodes", 20, 1),
    ]
    assert first == {
        **COMMON, "model": "hsnet", "protocol": "fss-episodes", "setting": "1R", "evaluated": 1000, "runs": 1,
        "metrics": {"miou": 0.3, "fb_iou": 0.55}, "class_iou": {"1": 0.3},
    }  # fmt: skip
    assert gfss == GFSS


def test_a_file_of_another_schema_is_refused_by_name(tmp_path):
    append_results(str(tmp_path), [HSNET])
    other = pa.table({"miou": pa.array([0.5]), "model": pa.array(["x"])})
    name = "results-20250101T000000000000-stranger.parquet"
    write_parquet(tmp_path / name, other)
    with pytest.raises(ResultsError, match=rf"{name}: schema differs from the benchmark schema") as err:
        read_results(str(tmp_path))
    assert "'protocol'" in str(err.value) and "'metrics'" in str(err.value) and "'episodes'" in str(err.value)


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"miou": 0.5, "fb_iou": math.nan}, r"benchmark row 1: metric 'fb_iou' is nan; expected a finite float"),
        ({"hm": math.inf}, r"benchmark row 1: metric 'hm' is inf; expected a finite float"),
        ({"hm": "0.5"}, r"benchmark row 1: metric 'hm' is '0.5'; expected a finite float"),
        ({"hm": True}, r"benchmark row 1: metric 'hm' is True; expected a finite float"),
        ({}, r"benchmark row 1: metrics is \{\}; expected a non-empty dict"),
        ([("miou", 0.5)], r"benchmark row 1: metrics is \[\('miou', 0.5\)\]; expected a non-empty dict"),
        ({1: 0.5}, r"benchmark row 1: metric name 1 is not a non-empty string"),
    ],
)
def test_metrics_must_be_named_finite_floats(tmp_path, metrics, message):
    with pytest.raises(ResultsError, match=message):
        append_results(str(tmp_path), [HSNET, {**GFSS, "metrics": metrics}])
    assert not list(tmp_path.iterdir())  # nothing written


def test_integer_metrics_are_stored_as_floats(tmp_path):
    append_results(str(tmp_path), [{**GFSS, "metrics": {"hm": 1}}])
    (row,) = rows_as_dicts(read_results(str(tmp_path)))
    assert row["metrics"] == {"hm": 1.0} and isinstance(row["metrics"]["hm"], float)


def test_row_metric_reads_pylist_rows_and_dicts(tmp_path):
    append_results(str(tmp_path), [GFSS])
    (raw,) = read_results(str(tmp_path)).to_pylist()
    assert isinstance(raw["metrics"], list)  # pyarrow gives a map cell as (key, value) pairs
    assert row_metric(raw, "novel_miou") == 0.123456789
    assert row_metric(HSNET, "miou") == 0.1 + 0.2
    with pytest.raises(KeyError, match=r"metric 'miou' not in this benchmark row; it has \['base_miou', "):
        row_metric(raw, "miou")
    with pytest.raises(KeyError, match=r"metric 'hm' not in this benchmark row; it has \['fb_iou', 'miou'\]"):
        row_metric(HSNET, "hm")
