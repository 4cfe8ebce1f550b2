"""The `maskforge` CLI through Typer's runner: generate, shards ls/show, datasets check, and its errors."""

from pathlib import Path

import pytest
import yaml
from PIL import Image
from tiny import diffusion_section
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.storage.catalogue import CATALOGUE_DIR

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, prefect_harness, tiny_models):
    """Generate a small toy run (copy-paste and diffusion on the tiny models) through the CLI once for this module."""
    out = tmp_path_factory.mktemp("cli")
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    cfg["dataset"]["toy"].update(image_size=48, n_train=60, n_val=8)
    cfg["generation"].update(samples_per_class=2)
    cfg["base"]["subset_size"] = 20
    cfg["diffusion"] = diffusion_section(tiny_models, text={"samples": 1}, embedding={"samples": 1, "steps": 3})
    cfg["diffusion"]["embedding"]["bank"] = str(out / "bank")
    cfg["refinement"]["beta"] = 0.0  # the demo's refinement runs; the OOD filter keeps everything, so counts are fixed
    path = out / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["generate", str(path), "--out", str(out / "runs")])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in (out / "runs").iterdir() if p.name != CATALOGUE_DIR]  # beside it: the catalogue of runs
    return run, result.output


@pytest.mark.prefect
def test_generate_prints_run_folder_and_summary(demo_run):
    run, output = demo_run
    assert f"run folder: {run}" in output.replace("\n", "")
    for name in ("red disc", "green square", "blue triangle", "yellow star"):
        assert name in output
    # per class: 2 composed scenes, 1 text image, 1 embedding image, 3 conditions x 2 shots x 1 ControlNet image;
    # refinement drops samples left without a class pixel (beta 0 keeps every OOD score), and says how many
    from maskforge.storage.reader import RunReader

    summary = RunReader(str(run)).summary
    assert summary["n_samples"] + sum(summary["empty_rejected"].values()) == 40
    assert sum(summary["ood_rejected"].values()) == 0
    assert f"{summary['n_samples']} samples" in output
    for source in ("real", "cn-mask", "cn-hed", "cn-scribble"):
        assert source in output


@pytest.mark.prefect
def test_shards_ls_and_show(demo_run, tmp_path):
    run, _ = demo_run
    listing = runner.invoke(app, ["shards", "ls", str(run)])
    assert listing.exit_code == 0, listing.output
    assert "c0001-000000.tar" in listing.output and "red disc" in listing.output
    key = "toy-f0-c0001-real-00000"
    png = tmp_path / "show.png"
    shown = runner.invoke(app, ["shards", "show", str(run), key, "--out", str(png)])
    assert shown.exit_code == 0, shown.output
    image = Image.open(png)
    assert image.mode == "RGB" and min(image.size) >= 384
    missing = runner.invoke(app, ["shards", "show", str(run), "no-such-key", "--out", str(png)])
    assert missing.exit_code == 1 and "no-such-key" in missing.output
    nested = tmp_path / "new" / "folder" / "show.png"  # the folder is created
    assert runner.invoke(app, ["shards", "show", str(run), key, "--out", str(nested)]).exit_code == 0
    assert Image.open(nested).size == image.size
    for command in (["shards", "show", str(run), key], ["shards", "sheet", str(run)]):
        for out, expected in (
            (tmp_path, f"error: --out {tmp_path}: is a folder; expected a file path ending in .png"),
            (tmp_path / "x.txt", f"error: --out {tmp_path / 'x.txt'}: expected a file name ending in .png"),
            (Path("/proc/x.png"), "error: --out: cannot write in /proc"),
        ):
            bad = runner.invoke(app, [*command, "--out", str(out)])
            assert bad.exit_code == 1 and bad.output.startswith(expected), bad.output  # one line, no traceback


def test_generate_reports_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  name: pascal\n")
    result = runner.invoke(app, ["generate", str(bad)])
    assert result.exit_code == 1
    assert "dataset.root is required" in result.output and "bad.yaml" in result.output


@pytest.mark.parametrize(
    "command, config_file, hint",
    [
        (["generate"], "hsnet-toy.yaml", "is a valid HSNet config: run it with `maskforge hsnet train|eval`"),
        (["hsnet", "train"], "demo.yaml", "is a valid generation config: run it with `maskforge generate`"),
        (["models", "check"], "maskdiff-toy.yaml", "is a valid MaskDiff config: run it with `maskforge maskdiff"),
        (["maskdiff", "eval"], "gfss-toy.yaml", "is a valid GFSS config: run it with `maskforge gfss"),
        (["gfss", "eval"], "diffews-toy.yaml", "is a valid DiffewS config: run it with `maskforge diffews"),
        (["diffews", "train"], "toy-train.yaml", "is a valid toy training config: run it with `maskforge toy"),
    ],
)
def test_a_config_given_to_the_wrong_command_names_the_right_one(command, config_file, hint):
    path = Path(__file__).resolve().parents[1] / "configs" / config_file
    result = runner.invoke(app, [*command, str(path)])
    assert result.exit_code == 1 and "Extra inputs are not permitted" in result.output
    assert result.output.splitlines()[-1].strip().startswith(f"{path} {hint}")  # the last line of the error


def test_an_invalid_config_of_the_right_kind_gets_no_hint(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  fold: 7\n")
    result = runner.invoke(app, ["generate", str(bad)])
    assert result.exit_code == 1 and "field 'dataset.fold'" in result.output and "is a valid" not in result.output


def test_file_writing_commands_check_out_before_any_work(tmp_path):
    coco = runner.invoke(
        app, ["datasets", "coco-json", "-", "--dataset", "toy", "--out", str(tmp_path), "--limit", "1"]
    )
    assert coco.exit_code == 1 and coco.output.startswith(f"error: --out {tmp_path}: is a folder; expected a file")
    tiny = runner.invoke(app, ["models", "tiny", "--out", "/proc/tiny"])
    assert tiny.exit_code == 1 and tiny.output.startswith("error: --out: cannot write in /proc")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "toy-train.yaml")
    (tmp_path / "file.txt").write_text("")
    for command in ("train-diffusion", "ground", "train-controlnet"):  # before training, not at its first write
        toy = runner.invoke(app, ["toy", command, config, "--out", str(tmp_path / "file.txt")])
        assert toy.exit_code == 1 and toy.output.startswith(f"error: --out: {tmp_path / 'file.txt'} is a file"), (
            toy.output
        )


def test_datasets_check_toy():
    result = runner.invoke(app, ["datasets", "check", "-", "--dataset", "toy"])
    assert result.exit_code == 0, result.output
    assert "red disc" in result.output and "fold" in result.output


def test_datasets_check_missing_root(tmp_path):
    result = runner.invoke(app, ["datasets", "check", str(tmp_path / "VOC"), "--dataset", "pascal"])
    assert result.exit_code == 1 and str(tmp_path / "VOC") in result.output.replace("\n", "")


def test_help_everywhere():
    for args in ([], ["shards"], ["datasets"], ["generate"], ["shards", "show"], ["datasets", "check"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_datasets_coco_json_exports_instances_pycocotools_reads(tmp_path):
    from pycocotools.coco import COCO

    from maskforge.eval.datasets import build_dataset

    out = tmp_path / "toy_val.json"
    result = runner.invoke(app, ["datasets", "coco-json", "-", "--dataset", "toy", "--out", str(out), "--limit", "6"])
    assert result.exit_code == 0, result.output
    coco = COCO(str(out))
    ds = build_dataset("toy", None)
    records = [ds.load(i) for i in ds.image_ids("val")[:6]]
    assert len(coco.imgs) == 6 and len(coco.anns) == sum(len(r.instances) for r in records) > 6
    assert f"6 images, {len(coco.anns)} annotations" in result.output
    bad = runner.invoke(app, ["datasets", "coco-json", "-", "--dataset", "toy", "--out", str(out), "--split", "x"])
    assert bad.exit_code == 1 and "unknown split 'x'" in bad.output
