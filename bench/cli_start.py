"""How long the `maskforge` command takes to answer when it does no work: `--help`, a group's `--help` and a config
error, each the median of N cold processes (a new interpreter each time, as a user's shell starts one).

The reference in the same run is the eager start-up the CLI had before its command bodies imported their flows
lazily: a process that imports every flow module (Prefect, torch, torchvision, diffusers) and then prints the help.
The ratio is lazy / eager; the target is an absolute one from issue 29 (help <= 0.8 s on the 2-core machine).

    python bench/cli_start.py --out bench-out/cli_start.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Seconds `maskforge --help` and a config error may take (median of the cold processes).
TARGET_SECONDS = 0.8
#: The entry point the console script runs (pyproject's [project.scripts]).
CLI = "from maskforge.flows.cli import app; app()"
#: The old start-up: every flow module imported before the command line is parsed.
EAGER = (
    "import maskforge.flows.deployments, maskforge.flows.cli_run, maskforge.flows.serve; "
    "from maskforge.flows.cli import app; app()"
)


def cold_seconds(code: str, args: list[str], runs: int, expect_rc: int) -> list[float]:
    """Run `python -c code args` `runs` times in fresh interpreters; return the wall seconds of each. A run whose exit
    code is not `expect_rc` is an error (a bench of a broken command measures nothing)."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if done.returncode != expect_rc:
            raise SystemExit(f"{args}: exit code {done.returncode}, expected {expect_rc}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    """Time the cases, print one line each and the target line last, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 51), metavar="1..50")
    parser.add_argument("--out", default="bench-out/cli_start.json", help="JSON file to write.")
    args = parser.parse_args()
    bad = Path(tempfile.mkdtemp()) / "bad.yaml"
    bad.write_text("run: {name: demo}\nnot_a_section: 1\n")
    cases = {
        "help": (CLI, ["--help"], 0),
        "group help (hsnet)": (CLI, ["hsnet", "--help"], 0),
        "group help (gfss)": (CLI, ["gfss", "--help"], 0),
        "command help (maskdiff train)": (CLI, ["maskdiff", "train", "--help"], 0),
        "usage error": (CLI, ["generate"], 2),
        "config error (generate)": (CLI, ["generate", str(bad)], 1),
        "config error (diffews train)": (CLI, ["diffews", "train", str(bad)], 1),
        "eager help (reference)": (EAGER, ["--help"], 0),
    }
    result = {"runs": args.runs, "python": sys.version.split()[0], "cases": {}}
    for name, (code, argv, rc) in cases.items():
        seconds = cold_seconds(code, argv, args.runs, rc)
        result["cases"][name] = {"median_s": statistics.median(seconds), "seconds": seconds, "argv": argv}
        print(f"cli_start: {name}: median {statistics.median(seconds):.2f} s of {args.runs}", flush=True)
    cases_s = {name: case["median_s"] for name, case in result["cases"].items()}
    lazy = max(v for k, v in cases_s.items() if k != "eager help (reference)")
    result["slowest_lazy_s"] = lazy
    result["lazy_over_eager"] = cases_s["help"] / cases_s["eager help (reference)"]
    result["target_s"] = TARGET_SECONDS
    result["met"] = lazy <= TARGET_SECONDS
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"cli_start: slowest lazy case seconds = {lazy:.2f} (target <= {TARGET_SECONDS})")
    print(f"cli_start: config error seconds = {cases_s['config error (generate)']:.2f} (target <= {TARGET_SECONDS})")
    print(
        f"cli_start: help seconds = {cases_s['help']:.2f} (target <= {TARGET_SECONDS}); "
        f"lazy/eager = {result['lazy_over_eager']:.2f}"
    )


if __name__ == "__main__":
    main()
