"""Fan-out over Dask: the generate flow on a 2-process LocalCluster writes exactly what the sequential run writes."""

from pathlib import Path

import pytest
import torch
from tiny import diffusion_section

from maskforge.flows.generate import generate, generate_flow
from maskforge.flows.runners import dask_runner
from maskforge.storage.reader import RunReader
from maskforge.tasks.config import parse_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]


def _config(out: Path, tiny: dict) -> dict:
    return parse_config(
        {
            "run": {"name": "fan", "seed": 4, "out_dir": str(out)},
            "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "base": {"subset_size": 10},
            "generation": {"samples_per_class": 2, "classes": ["red disc", "green square", "blue triangle"]},
            "diffusion": diffusion_section(tiny, text={"samples": 2}, controlnet={"conditions": ["mask"]}),
        }
    ).resolved()


def _files(run: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    files.pop("config.yaml"), files.pop("_COMPLETE.json")  # they record out_dir
    return files


def test_dask_fan_out_equals_the_sequential_run(tmp_path, tiny_models):
    # Dask's nanny starts workers with OMP_NUM_THREADS=1; the sequential run uses one torch thread too, since the
    # summation order of a convolution can depend on the thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = Path(generate(config=_config(tmp_path / "seq", tiny_models))["url"])
    finally:
        torch.set_num_threads(threads)
    fanned = Path(
        generate.with_options(task_runner=dask_runner(workers=2))(config=_config(tmp_path / "dask", tiny_models))["url"]
    )
    keys = RunReader(str(fanned)).manifest.column("key").to_pylist()
    assert keys == RunReader(str(sequential)).manifest.column("key").to_pylist() and len(keys) == len(set(keys)) == 15
    assert _files(fanned) == _files(sequential)


def test_runner_choice():
    assert generate_flow() is generate
    assert type(generate_flow(dask_workers=2).task_runner).__name__ == "DaskTaskRunner"
    assert generate_flow(dask_address="tcp://127.0.0.1:8786").task_runner.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="--dask-workers must be >= 1"):
        dask_runner(workers=0)
    with pytest.raises(
        ValueError, match=r"--dask-address 'tcp://h:8786' connects to a running scheduler; --dask-workers"
    ):
        generate_flow(dask_workers=2, dask_address="tcp://h:8786")  # not silently one or the other
    with pytest.raises(ValueError, match="give one or the other"):
        generate_flow(dask_address="tcp://h:8786", dask_cluster_class="dask_cuda.LocalCUDACluster")
    with pytest.raises(ValueError, match="--dask-address: empty"):
        generate_flow(dask_address="")  # not the sequential runner


def test_cli_refuses_conflicting_dask_options_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from maskforge.flows.cli import app

    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"),
            "--out",
            str(out),
            "--dask-workers",
            "2",
            "--dask-address",
            "tcp://h:8786",
        ],
    )
    assert result.exit_code == 1 and "give one or the other" in result.output
    assert not out.exists()  # refused before a run folder (and before the Prefect server)
