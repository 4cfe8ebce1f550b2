"""Browser check of the Prefect UI (`make ui-check`, not part of `make test`): serve, run the toy deployment and a toy
HSNet evaluation through the worker, open their artifact pages in headless Chromium, assert that the table, the
contact-sheet grid, the rejected samples, the score histograms and the trend chart render; then the GFSS base and
novel deployments (the novel stage fed the generate run's folder), the DiffewS evaluation deployment (the shipped
checkpoint, KR+NS from the generate run) and the MaskDiff train deployment (both stages and the evaluation, synthetic
instances from the generate run), each with its table and trend artifacts; and the nightly chain: the generate run
and a second round each trigger `chain-hsnet-eval-toy-f0` and `chain-gfss-novel-toy-f0` (its base trained by the
first) on their own run, the chain's HSNet runs render in the UI, and the HSNet trend lists both rounds; screenshots.

Needs Debian's chromium (`apt-get install chromium`). Takes a few minutes on 2 cores (server start, the demo run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium(url: str, *args: str, budget_ms: int = 20000) -> str:
    """Run headless Chromium on a URL with a fresh profile; return what it prints (the DOM with --dump-dom)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("ui-check: chromium not found; install Debian's package: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    return done.stdout


def api(base: str, method: str, path: str, **kw) -> httpx.Response:
    """Call the Prefect REST API, retrying a 503 or a timeout (a busy server on 2 cores: SQLite locked for a minute
    while a run writes) a few times; fail loudly otherwise."""
    for attempt in range(10):
        try:
            response = httpx.request(method, f"{base}/api{path}", timeout=30, **kw)
        except httpx.TimeoutException:
            if attempt == 9:
                raise
            time.sleep(3)
            continue
        if response.status_code != 503:
            break
        time.sleep(3)
    response.raise_for_status()
    return response


def deployments(base: str) -> list[dict]:
    """Return the server's deployments."""
    return api(base, "POST", "/deployments/filter", json={}).json()


def wait_for(base: str, run: dict, timeout: float) -> None:
    """Wait for a flow run to end; exit with a message unless it completed."""
    print(f"flow run {run['id']}: {base}/runs/flow-run/{run['id']}")
    deadline = time.monotonic() + timeout
    while True:
        state = api(base, "GET", f"/flow_runs/{run['id']}").json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        if time.monotonic() > deadline:
            sys.exit(f"ui-check: flow run {run['id']} still {state} after {timeout:.0f} s")
        time.sleep(5)
    if state != "COMPLETED":
        sys.exit(f"ui-check: flow run {run['id']} ended {state}")


def wait_for_deployment_runs(base: str, name: str, count: int, timeout: float) -> list[dict]:
    """Wait until the deployment `name` has `count` completed flow runs (started by its trigger, not by this
    script); exit with a message if one failed or the time is up. Returns the completed runs."""
    deployment = next(d for d in deployments(base) if d["name"] == name)
    query = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}, "limit": 50}
    deadline = time.monotonic() + timeout
    while True:
        runs = api(base, "POST", "/flow_runs/filter", json=query).json()
        failed = [r for r in runs if r["state"]["type"] in ("FAILED", "CRASHED")]
        if failed:
            sys.exit(f"ui-check: {name}'s triggered run {failed[0]['id']} ended {failed[0]['state']['type']}")
        done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
        if len(done) >= count:
            print(f"{name}: {len(done)} run(s) started by the chain's trigger completed")
            return done
        if time.monotonic() > deadline:
            sys.exit(f"ui-check: {name} has {len(done)} completed run(s), not {count}, after {timeout:.0f} s")
        time.sleep(5)


def check_page(url: str, needles: list[str], out: Path, name: str) -> None:
    """Render a UI page in headless Chromium; exit with a message unless its DOM holds every needle; keep the DOM
    and a screenshot as OUT/NAME.html and OUT/NAME.png."""
    dom = chromium(url, "--dump-dom")
    (out / f"{name}.html").write_text(dom)
    missing = [n for n in needles if n not in dom]
    if missing:
        sys.exit(f"ui-check: {url} rendered without {missing} (DOM in {out / (name + '.html')})")
    chromium(url, f"--screenshot={(out / (name + '.png')).resolve()}", "--window-size=1400,1000")
    print(f"{name}: {url} renders {needles}; screenshot {out / (name + '.png')}")


def generated_run_folder(runs: str) -> str:
    """The newest run folder under `runs` (two rounds by then; beside them, the catalogue of runs)."""
    folders = [p for p in Path(runs).iterdir() if p.name != "catalogue"]
    return str(max(folders, key=lambda p: p.stat().st_mtime))


def small_gfss_config(folder: Path) -> dict:
    """A GFSS config for the check: the demo's toy world (so the generate run can join), tiny net, a few steps."""
    return {
        "run": {"name": "ui", "out_dir": str(folder / "runs"), "device": "cpu", "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": {"seed": 0, "image_size": 96, "n_train": 120, "n_val": 8}},
        "model": {"backbone": "tiny", "aspp_channels": 16, "aspp_rates": [1, 2, 3], "tiny_width": 4},
        "base": {"steps": 5, "batch_size": 4, "crop_size": 96},
        "novel": {"runs": 1, "iterations": 3, "batch_size": 4, "workers": 0, "buffer_size": 12, "buffer_images": 30},
        "eval": {"max_images": 4, "results_dir": str(folder / "results")},
    }


def small_diffews_config(folder: Path) -> dict:
    """The shipped toy DiffewS config with few episodes and its results in `folder` (the evaluation is the check)."""
    import yaml

    data = yaml.safe_load((ROOT / "configs" / "diffews-toy.yaml").read_text())
    data["run"].update({"out_dir": str(folder / "runs"), "threads": 1})
    data["eval"].update(
        {
            "checkpoint": str(ROOT / "models" / "checkpoints" / "diffews-toy-f0"),
            "episodes": 8,
            "synthetic_per_class": 2,
            "results_dir": str(folder / "results"),
        }
    )
    data["model"]["sd"] = str(ROOT / data["model"]["sd"])
    return data


def small_maskdiff_config(folder: Path) -> dict:
    """A MaskDiff config for the check: the demo's toy world, tiny detector and head, a few steps of each stage."""
    toy = {"seed": 0, "image_size": 64, "n_train": 120, "n_val": 8}
    return {
        "run": {"name": "ui", "out_dir": str(folder / "runs"), "device": "cpu", "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": toy},
        "detector": {"backbone": "tiny", "min_size": 64, "max_size": 64},
        "head": {"arch": "tiny", "size": 32, "sampler": "ddim", "ddim_steps": 2},
        "base": {"detector_steps": 3, "head_steps": 2, "batch_size": 4},
        "finetune": {"shots": 1, "detector_steps": 2, "head_steps": 2, "batch_size": 4},
        "eval": {"max_images": 4, "sampling_seeds": 2, "score_threshold": 0.0, "results_dir": str(folder / "results")},
    }


def main() -> None:
    """Serve, run toy-f0, check the artifact pages; exit non-zero with a message on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4310)
    parser.add_argument("--out", default="ui-check", help="folder for screenshots and DOM dumps")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the flow run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "PREFECT_HOME": tempfile.mkdtemp(prefix="maskforge-ui-")}
    serve = subprocess.Popen(
        [str(Path(sys.executable).with_name("maskforge")), "serve", "--port", str(args.port)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        expected = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
        deadline = time.monotonic() + 300
        while True:  # deployments exist once serve has bootstrapped
            time.sleep(3)
            if serve.poll() is not None:
                sys.exit(f"ui-check: maskforge serve exited with {serve.returncode}")
            try:
                names = [d["name"] for d in api(base, "POST", "/deployments/filter", json={}).json()]
                if expected <= set(names):  # every deployment of prefect.yaml, the chain's included
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit("ui-check: deployments did not appear within 300 s")
        deployment = next(d for d in deployments(base) if d["name"] == "toy-f0")
        # the GFSS chain on a small config of its own (its first night trains the base: train_base), so the check's
        # minutes go to the UI, not to the shipped config's 1580 base steps
        chain_gfss = next(d for d in deployments(base) if d["name"] == "chain-gfss-novel-toy-f0")
        chain_config = Path(tempfile.mkdtemp(prefix="maskforge-ui-chain-gfss-")) / "gfss.yaml"
        chain_config.write_text(json.dumps(small_gfss_config(chain_config.parent)))
        patched = {**chain_gfss["parameters"], "config_path": str(chain_config)}
        api(base, "PATCH", f"/deployments/{chain_gfss['id']}", json={"parameters": patched})
        # a fresh output folder: the run must really generate, not report an earlier complete run
        generated_out = tempfile.mkdtemp(prefix="maskforge-ui-runs-")
        params = {**deployment["parameters"], "out_dir": generated_out}
        run = api(base, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": params}).json()
        wait_for(base, run, args.timeout)
        # the nightly chain: that run (round: its scheduled date) and a second round each trigger the chain's HSNet
        # evaluation on their own run; its trend artifact then lists both rounds
        wait_for_deployment_runs(base, "chain-hsnet-eval-toy-f0", 1, args.timeout)
        params = {**params, "round": 1}
        run = api(base, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": params}).json()
        wait_for(base, run, args.timeout)
        chained = wait_for_deployment_runs(base, "chain-hsnet-eval-toy-f0", 2, args.timeout)
        wait_for_deployment_runs(base, "chain-gfss-novel-toy-f0", 2, args.timeout)
        today = time.strftime("%Y%m%d", time.gmtime())

        def latest(prefix: str) -> dict:
            """The newest artifact whose key starts with `prefix` (asked of the API: listings are paged)."""
            query = {"artifacts": {"key": {"like_": f"{prefix}%"}}, "sort": "CREATED_DESC", "limit": 1}
            found = api(base, "POST", "/artifacts/filter", json=query).json()
            if not found:
                sys.exit(f"ui-check: no artifact with a key starting {prefix!r}")
            return found[0]

        # a toy HSNet evaluation with the shipped checkpoint: its trend artifact carries the mIoU chart
        evaluation = next(d for d in deployments(base) if d["name"] == "hsnet-eval-toy-f0")
        params = {
            **evaluation["parameters"],
            "config_path": "configs/hsnet-toy-refine.yaml",
            "checkpoint": "models/checkpoints/hsnet-toy-f0.safetensors",
        }
        run = api(base, "POST", f"/deployments/{evaluation['id']}/create_flow_run", json={"parameters": params}).json()
        wait_for(base, run, args.timeout)
        # GFSS: the base-stage deployment, then the novel-stage deployment fed the generate run's folder (the nightly
        # chain), on a small config; its table and trend artifacts are checked below
        gfss_config = Path(tempfile.mkdtemp(prefix="maskforge-ui-gfss-")) / "gfss.yaml"
        gfss_config.write_text(json.dumps(small_gfss_config(gfss_config.parent)))
        for name, more in (
            ("gfss-base-toy-f0", {}),
            ("gfss-novel-toy-f0", {"synthetic_runs": [generated_run_folder(generated_out)]}),
        ):
            dep = next(d for d in deployments(base) if d["name"] == name)
            params = {**dep["parameters"], "config_path": str(gfss_config), **more}
            run = api(base, "POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params}).json()
            wait_for(base, run, args.timeout)
        # DiffewS: the evaluation deployment with the shipped checkpoint, KR+NS from the generate run; MaskDiff: the
        # train deployment (base and K-shot stages, then the evaluation), synthetic instances from the generate run
        generated_run = generated_run_folder(generated_out)
        for name, build, more in (
            ("diffews-eval-toy-f0", small_diffews_config, {"synthetic_run": generated_run}),
            ("maskdiff-train-toy-f0", small_maskdiff_config, {"shots": 1, "synthetic_runs": [generated_run]}),
        ):
            learner_config = Path(tempfile.mkdtemp(prefix=f"maskforge-ui-{name}-")) / "config.yaml"
            learner_config.write_text(json.dumps(build(learner_config.parent)))
            dep = next(d for d in deployments(base) if d["name"] == name)
            params = {**dep["parameters"], "config_path": str(learner_config), **more}
            run = api(base, "POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params}).json()
            wait_for(base, run, args.timeout)
        checks = {
            "table": (latest("samples-"), ["red disc", "source real"]),
            "contact-sheet": (latest("contact-sheet-"), ["data:image/jpeg;base64", "red disc", "manifest.parquet"]),
            "rejected": (
                latest("rejected-"),
                ["Rejected samples", "green square", "ood_iou", "data:image/jpeg;base64"],
            ),
            "scores": (latest("scores-"), ["Green lines: alpha", "data:image/png;base64"]),
            "trend": (
                latest("hsnet-trend-toy-f0"),
                ["HSNet trend: toy fold 0", "data:image/png;base64", "1R", f"r{today}", "r1"],
            ),
            "gfss-table": (latest("gfss-toy-f0-1shot-gaps-synthetic"), ["PIFS average over steps", "novel mIoU"]),
            "gfss-trend": (latest("gfss-toy-f0-1shot-trend"), ["GFSS trend: toy fold 0", "data:image/png;base64"]),
            "diffews-table": (latest("diffews-eval-toy-f0"), ["1R+2S", "miou", "baseline: support-prior"]),
            "diffews-trend": (latest("diffews-trend-toy-f0"), ["DiffewS trend: toy fold 0", "data:image/png;base64"]),
            "maskdiff-table": (latest("maskdiff-toy-f0-1shot-s0"), ["segm AP", "novel", "bbox AP75"]),
            "maskdiff-trend": (
                latest("maskdiff-toy-f0-1shot-trend"),
                ["MaskDiff trend: toy fold 0, 1-shot", "data:image/png;base64", "novel segm AP"],
            ),
            # every learner's record task republishes it; MaskDiff's, last here, from its own results folder
            "benchmark": (latest("benchmark-toy-f0"), ["Benchmark: toy fold 0", "fsis-coco", "segm_ap_novel %"]),
        }
        # the chain's flow runs in the UI, each triggered on its own round's run (the event's URL as synthetic_run)
        chained = sorted(chained, key=lambda r: r["created"])[:2]
        if len({r["parameters"]["synthetic_run"] for r in chained}) != 2:
            sys.exit(f"ui-check: the chain's two runs name {[r['parameters']['synthetic_run'] for r in chained]}")
        for i, run in enumerate(chained):
            check_page(f"{base}/runs/flow-run/{run['id']}", [run["name"], "eval-hsnet-fold"], out, f"chain-run-{i}")
        for name, (artifact, needles) in checks.items():
            check_page(f"{base}/v2/artifacts/artifact/{artifact['id']}", needles, out, name)
        print("ui-check: passed")
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
