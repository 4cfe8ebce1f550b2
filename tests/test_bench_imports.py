"""The benches a bare GPU box runs: they import neither Prefect nor webdataset (`python -X importtime bench/X.py
--help`), and bench/gpu_suite.sh runs them from the checkout, one JSON each, in its CPU dry mode."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Benches the GPU suite runs with only torch, diffusers, transformers, pydantic and a few small wheels installed.
BENCHES = ("generation.py", "textual_inversion.py", "refinement.py", "diffews_checkpointing.py", "common.py")
HEAVY = re.compile(r"\|\s+(prefect|webdataset)(\.|$)")


def _module_level_imports(path: Path) -> set[str]:
    """Return the top-level package names a file imports at module level."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("bench", BENCHES)
def test_bench_imports_without_prefect_or_webdataset(bench):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "bench" / bench), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    heavy = sorted({m.group(1) for line in done.stderr.splitlines() if (m := HEAVY.search(line))})
    assert "prefect" not in heavy, heavy
    assert heavy == [], heavy


def _suite(out, **env):
    """Run bench/gpu_suite.sh into `out` with extra environment; return the finished process."""
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",
        env={**os.environ, "OMP_NUM_THREADS": "1", "GPU_SUITE_DRY": "1", **env},
    )


def test_gpu_suite_dry_run_of_one_bench(tmp_path):
    """The suite imports maskforge through its PYTHONPATH link, runs a bench, keeps its JSON and log, and sums up
    each bench's last line; a budget too small for a bench skips it instead of starting it."""
    done = _suite(tmp_path / "out", GPU_SUITE_ONLY="gen-b8-bf16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"maskforge from /tmp/maskforge-path\.\w+/maskforge", done.stdout)
    result = json.loads((tmp_path / "out" / "gen-b8-bf16.json").read_text())
    assert (result["batch"], result["steps"], result["repeats"], result["model"]) == (2, 2, 1, "tiny")
    assert result["compared"] == ["ours-eager", "stock-eager"] and result["capture_overhead_ratio"] > 0
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert len(summary) == 1 and re.fullmatch(
        r"gen-b8-bf16 \(\d+ s\): capture_overhead: ours-eager/stock-eager = [\d.]+ \(target >= 0.95\)", summary[0]
    )
    assert (tmp_path / "out" / "gen-b8-bf16.log").read_text().strip().splitlines()[-1] == summary[0].split(": ", 1)[1]
    skipped = _suite(tmp_path / "short", GPU_SUITE_ONLY="ti,gfss", GPU_SUITE_BUDGET="15")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert (tmp_path / "short" / "summary.txt").read_text().splitlines() == [
        "ti: skipped, 15 s of the 15 s budget left",
        "gfss: skipped, 15 s of the 15 s budget left",
    ]


@pytest.mark.skipif(not os.environ.get("MASKFORGE_SLOW_TESTS"), reason="about a minute: set MASKFORGE_SLOW_TESTS=1")
def test_gpu_suite_dry_run_of_every_bench(tmp_path):
    done = _suite(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    names = [
        "gen-b8-bf16", "ti", "gen-b16-fp16", "gpu-tests", "refinement", "diffews", "maskdiff", "gfss", "diffews-ckpt",
    ]  # fmt: skip
    assert [line.split(" ")[0] for line in summary] == names, summary
    assert not [line for line in summary if "FAILED" in line or "TIMED OUT" in line], summary
    assert re.search(r"gpu-tests \(\d+ s\): \d+/\d+ tests collected", summary[3]), summary[3]
    for name in names[:3] + names[4:-2] + names[-1:]:
        assert json.loads((tmp_path / f"{name}.json").read_text())
    assert json.loads((tmp_path / "gfss" / "gfss.json").read_text())
