"""GFSS under Prefect and from the CLI: the flows end to end, the deployment flow, `maskforge gfss load` exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_gfss_stages import config, synthetic_run
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.deployments import train_gfss_novel_fold
from maskforge.models.gfss.checkpoint import save_gfss, write_authors_layout
from maskforge.models.gfss.network import GfssSpec, build_gfss
from maskforge.storage.results import read_results, rows_as_dicts

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()


def test_the_chain_entry_point_trains_the_base_first_only_when_asked_and_only_once(tmp_path):
    """The nightly chain's GFSS deployment (train_base: true) needs no person: with no base model it trains one,
    then the novel stage on the run the trigger passes as synthetic_run, then evaluates; the next night reuses the
    base. Without train_base the same config fails on its pre-flight's one line, before any stage."""
    path = tmp_path / "gfss.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    night = synthetic_run(str(tmp_path / "night1"))
    with pytest.raises(Exception, match="train it first"):
        train_gfss_novel_fold(config_path=str(path), dataset="toy", fold=0, synthetic_run=night)
    assert not (tmp_path / "results").exists()
    result = train_gfss_novel_fold(config_path=str(path), dataset="toy", fold=0, synthetic_run=night, train_base=True)
    assert result["setting"] == "gaps+synthetic" and result["synthetic_runs"] == [night]
    assert Path(result["table_file"]).is_file()
    (row,) = rows_as_dicts(read_results(str(tmp_path / "results")))
    assert row["setting"] == "gaps+synthetic" and row["synthetic_source"] == night and row["evaluated"] == 3
    assert row["metrics"]["hm"] == pytest.approx(result["summary"]["hm"])
    base_dir = next((tmp_path / "runs").glob("*base*"))
    checkpoint = next(base_dir.glob("*.safetensors"))
    trained_at = checkpoint.stat().st_mtime_ns
    other = synthetic_run(str(tmp_path / "night2"))
    again = train_gfss_novel_fold(config_path=str(path), dataset="toy", fold=0, synthetic_run=other, train_base=True)
    assert again["synthetic_runs"] == [other] and checkpoint.stat().st_mtime_ns == trained_at  # base reused
    rows = rows_as_dicts(read_results(str(tmp_path / "results")))
    assert [r["synthetic_source"] for r in rows] == [night, other]


def test_cli_train_novel_eval_and_errors(tmp_path):
    path = tmp_path / "gfss.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    out = runner.invoke(app, ["gfss", "train-base", str(path)])
    assert out.exit_code == 0, out.output
    assert "checkpoint:" in out.output
    out = runner.invoke(app, ["gfss", "train-novel", str(path), "--method", "finetune"])
    assert out.exit_code == 0, out.output
    assert "finetune: 1 runs x 4 steps" in out.output
    out = runner.invoke(app, ["gfss", "eval", str(path), "--method", "finetune"])
    assert out.exit_code == 0, out.output
    assert "PIFS average over steps" in out.output and "last step" in out.output
    out = runner.invoke(app, ["gfss", "train-novel", str(path), "--synthetic", str(tmp_path / "missing-run")])
    assert out.exit_code == 1 and "missing-run" in out.output and "Traceback" not in out.output
    out = runner.invoke(app, ["gfss", "train-base", str(tmp_path / "nope.yaml")])
    assert out.exit_code == 1 and "nope.yaml" in out.output


def test_cli_load_checks_the_authors_layout_strictly(tmp_path):
    spec = GfssSpec("tiny", 16, aspp_channels=256, aspp_rates=(6, 12, 18))
    good = tmp_path / "GIFS_toy_final.pt"
    write_authors_layout(str(good), build_gfss(spec))
    ours = tmp_path / "gfss.safetensors"
    save_gfss(str(ours), build_gfss(spec), {"run": {"name": "t"}})
    out = runner.invoke(app, ["gfss", "load", str(ours)])
    assert out.exit_code == 0 and "backbone tiny, 16 classes" in out.output and "loaded strictly" in out.output
    out = runner.invoke(app, ["gfss", "load", str(good)])
    # the tiny layout is not ResNet-101's: every layer3/4 block beyond the tiny ones is missing, shapes differ
    assert out.exit_code == 1 and "missing keys:" in out.output and "layer3.22.conv1.weight" in out.output
    net = build_gfss(GfssSpec("resnet101", 16))
    full = tmp_path / "GIFS_pascal_voc_split0_final.pt"
    write_authors_layout(str(full), net)
    out = runner.invoke(app, ["gfss", "load", str(full)])
    assert out.exit_code == 0, out.output
    assert "16 classes" in out.output and "backbone tensors: 550" in out.output and "loaded strictly" in out.output
    state = torch.load(full, weights_only=True)
    state["backbone"].pop("aspp.bn2.running_var")
    state["head"]["extra.weight"] = torch.zeros(1)
    torch.save(state, full)
    out = runner.invoke(app, ["gfss", "load", str(full)])
    assert out.exit_code == 1 and "aspp.bn2.running_var" in out.output and "extra.weight" in out.output
