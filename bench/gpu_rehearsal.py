"""Rehearse the GPU session on this CPU machine: the suite's dry run in an environment shaped like the GPU image.

The GPU machine has torch, transformers and the rest of `bench/gpu/image-packages.txt`, no network, and gets the
wheels of `bench/gpu/bench-wheels.txt` carried in. A module the benches import that is in neither list costs a
device start to find there. This script finds it here, in about a minute and a half:

1. a folder of links to this .venv's copies of the image's packages (plus what this .venv's versions of them need
   beyond the list, e.g. a newer huggingface-hub's own dependencies: the image's versions bring their own);
2. the bench wheels, downloaded from PyPI for this interpreter (the GPU machine gets the Python 3.12 ones);
3. a bare venv (no site packages) whose python runs `bench/gpu_suite.sh` with `GPU_SUITE_DRY=1` and `WHEELS`, so the
   suite installs the wheels itself, exactly as on the device.

Usage (from the repository root, with .venv built; needs PyPI):  .venv/bin/python bench/gpu_rehearsal.py [--work DIR]
It writes DIR/rehearsal.log and DIR/rehearsal.json and prints last `gpu_rehearsal: N of M benches ran (target M)`.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "bench" / "gpu"
#: manylinux tags pip may pick for the bench wheels (those fetch-wheels.sh asks for).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 24, 17, 31, 34, 35)] + ["manylinux2014_x86_64"]


def norm(name: str) -> str:
    """Return a distribution name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path) -> set[str]:
    """Return the normalised package names of a list file (one per line, # comments)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {norm(line) for line in lines if line}


def image_closure(image: set[str], bench: set[str]) -> dict[str, md.Distribution]:
    """Return this environment's distributions of the image's packages and of what they require, bench ones left out
    (those must come from the wheels)."""
    dists = {norm(d.metadata["Name"]): d for d in md.distributions()}
    todo = [n for n in image if n in dists]
    seen = set(todo)
    while todo:
        for spec in dists[todo.pop()].requires or []:
            req = Requirement(spec)
            name = norm(req.name)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            if name in dists and name not in seen and name not in bench:
                seen.add(name)
                todo.append(name)
    return {n: dists[n] for n in seen}


def link_packages(dists: dict[str, md.Distribution], folder: Path) -> int:
    """Link each distribution's top-level files and folders from site-packages into folder; return the link count."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files or []}
        for top in sorted(tops):
            if top.startswith("..") or top == "__pycache__" or top.endswith(".pth"):
                continue  # scripts outside site-packages, caches, and .pth hooks (the bare venv must not run them)
            src, dst = site / top, folder / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
                count += 1
    return count


def download_wheels(bench: set[str], folder: Path) -> list[str]:
    """Download the bench wheels at this .venv's versions for this interpreter; return the pins."""
    pins = [f"{n}=={md.version(n)}" for n in sorted(bench)]
    plats = [arg for p in PLATFORMS for arg in ("--platform", p)]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", version, "--implementation", "cp", *plats, "-d", str(folder), *pins]
    subprocess.run(cmd, check=True)
    return pins


def main() -> None:
    """Build the image-shaped environment, run the dry suite in it, report how many benches ran."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="maskforge-rehearsal-"))
    shutil.rmtree(work / "out", ignore_errors=True)
    image, bench = read_list(LISTS / "image-packages.txt"), read_list(LISTS / "bench-wheels.txt")
    start = time.perf_counter()
    dists = image_closure(image, bench)
    links = link_packages(dists, work / "image")
    pins = download_wheels(bench, work / "wheels")
    base = getattr(sys, "_base_executable", sys.executable)
    if not (work / "venv" / "bin" / "python").exists():
        subprocess.run([base, "-m", "venv", str(work / "venv")], check=True)
    env = {
        **os.environ,
        "PYTHON": str(work / "venv" / "bin" / "python"),
        "PYTHONPATH": str(work / "image"),
        "WHEELS": str(work / "wheels"),
        "WHEELS_TARGET": str(work / "site"),
        "GPU_SUITE_DRY": "1",
    }
    log = work / "rehearsal.log"
    with log.open("w") as handle:
        done = subprocess.run(
            ["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(work / "out")], env=env, stdout=handle, stderr=handle
        )
    summary = (work / "out" / "summary.txt").read_text() if (work / "out" / "summary.txt").exists() else ""
    expected = len(re.findall(r'^  "[a-z0-9-]+\|', (ROOT / "bench" / "gpu_suite.sh").read_text(), re.M))
    failed = [line for line in summary.splitlines() if re.match(r"^[a-z0-9-]+: (FAILED|TIMED OUT|skipped)", line)]
    ran = len([line for line in summary.splitlines() if re.match(r"^[a-z0-9-]+ \(\d+ s\): ", line)])
    result = {
        "image_distributions": sorted(dists),
        "beyond_image_list": sorted(set(dists) - image),
        "links": links,
        "wheels": pins,
        "suite_exit": done.returncode,
        "benches_ran": ran,
        "benches": expected,
        "failed": failed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (work / "rehearsal.json").write_text(json.dumps(result, indent=2))
    print(summary or log.read_text()[-3000:])
    print(f"image packages linked: {len(dists)} ({links} links); beyond the list: {result['beyond_image_list']}")
    print(f"log {log}; {result['seconds']} s")
    print(f"gpu_rehearsal: {ran} of {expected} benches ran (target {expected})")


if __name__ == "__main__":
    main()
