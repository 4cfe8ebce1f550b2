"""Generation-run artifacts for the Prefect UI: per-class table, contact sheet within budget, manifest link."""

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from maskforge.flows.generate import generate
from maskforge.storage.preview import class_colours
from maskforge.storage.reader import RunReader
from maskforge.tasks.artifacts import (
    SHEET_GAP,
    SHEET_HEADER,
    artifact_key,
    class_rows,
    contact_sheet,
    contact_sheet_image,
)
from maskforge.tasks.config import parse_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    out = tmp_path_factory.mktemp("artifacts")
    config = parse_config(
        {
            "run": {"name": "art", "out_dir": str(out)},
            "dataset": {"toy": {"image_size": 48, "n_train": 60, "n_val": 8}},
            "base": {"subset_size": 10},
            "generation": {"samples_per_class": 3, "classes": ["red disc", "green square"]},
        }
    ).resolved()
    return generate(config=config)["url"]


def test_class_rows_and_sheet(run):
    reader = RunReader(run)
    rows = class_rows(reader)
    assert [r["class"] for r in rows] == ["green square", "red disc"]
    assert all(r["samples"] == 3 and r["source real"] == 3 and r["mask methods"] == "gt 3" for r in rows)
    assert all(r["shards"].startswith("c00") for r in rows)
    sheet = contact_sheet(reader, per_source=2, side=48)
    # one labelled grid image for the page of both classes, the same picture `maskforge shards sheet` draws
    assert sheet.count("data:image/jpeg;base64,") == 1 and "## green square, red disc\n" in sheet
    assert f"Run folder `{run}`" in sheet and f"`rejected-{Path(run).name}`" in sheet
    data = sheet.split("data:image/jpeg;base64,")[1].split(")")[0]
    page = Image.open(io.BytesIO(base64.b64decode(data)))
    assert page.format == "JPEG" and page.size[::-1] == contact_sheet_image(reader, 2, 48).shape[:2]
    paged = contact_sheet(reader, per_source=2, side=48, classes_per_page=1)
    assert paged.count("data:image/jpeg;base64,") == 2 and "## green square\n" in paged and "## red disc\n" in paged
    small = contact_sheet(reader, per_source=2, budget=200)
    assert small.count("data:image/jpeg") == 0 and "(1 page(s) left out to keep the artifact under 200 bytes)" in small


def test_sheet_png_from_cli(run, tmp_path):
    from typer.testing import CliRunner

    from maskforge.flows.cli import app

    reader = RunReader(run)
    sheet = contact_sheet_image(reader, per_source=2, side=48)
    height = SHEET_HEADER + 2 * (48 + SHEET_GAP)  # a header, then a row per class
    assert sheet.shape[0] == height and sheet.shape[1] > 2 * (48 + SHEET_GAP)  # class names, two real samples
    label_width = sheet.shape[1] - 2 * (48 + SHEET_GAP)
    assert (sheet[:SHEET_HEADER, label_width:] < 100).any()  # the source name is written above its columns
    assert (sheet[SHEET_HEADER:, :label_width] < 100).any()  # class names on the left
    # the first cell holds the first green-square sample, its mask outlined in the class's colour
    first = next(r for r in reader.manifest.to_pylist() if r["class_name"] == "green square")
    cell = sheet[SHEET_HEADER : SHEET_HEADER + 48, label_width : label_width + 48].reshape(-1, 3)
    colour = class_colours((first["class_id"],))[first["class_id"]]
    assert (cell == colour).all(axis=1).sum() >= 20
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["shards", "sheet", run, "--out", str(out), "--per-source", "1"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[1] == SHEET_HEADER + 2 * (128 + SHEET_GAP)  # default 128 px cells


def test_flow_publishes_artifacts(run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = {kind: artifact_key(run, kind) for kind in ("samples", "contact-sheet", "rejected", "scores", "manifest")}
    assert keys["samples"] == f"samples-{Path(run).name}"

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys.values()))))
    artifacts = {a.key: a for a in found}
    assert artifacts[keys["samples"]].type == "table" and "red disc" in str(artifacts[keys["samples"]].data)
    assert artifacts[keys["contact-sheet"]].type == "markdown"
    assert str(artifacts[keys["contact-sheet"]].data).count("data:image/jpeg;base64,") == 1
    assert "No refinement ran" in str(artifacts[keys["rejected"]].data)  # a copy-paste-only run
    assert "No sample carries a score" in str(artifacts[keys["scores"]].data)
    # Prefect stores a link artifact as markdown "[text](url)"
    assert "manifest.parquet](file://" in str(artifacts[keys["manifest"]].data)
