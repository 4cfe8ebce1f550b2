"""Bench: reading a run with shard verification (sha256 while streaming) against reading it without.

Writes a run of noise images (incompressible JPEGs, so the run's bytes are mostly image data) of about --gb GB, then
iterates it with RunReader(verify=True) and RunReader(verify=False), alternating, --repeats times each; every sample
is decoded (image, label, json), as a training loader would. Prints samples/s and MB/s of both and, last, the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from maskforge.storage.codec import ShardSample
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import RunWriter, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402


def write_run(folder: Path, gigabytes: float, side: int, per_shard: int) -> tuple[int, int]:
    """Write noise samples until the shards hold `gigabytes`; return (samples, shard bytes)."""
    write_config(str(folder), {"bench": "shard_verify"})
    rng = np.random.default_rng(0)
    label = np.zeros((side, side), np.int32)
    label[side // 4 : side // 2, side // 4 : side // 2] = 1
    written, n = 0, 0
    with RunWriter(str(folder), max_count=per_shard, max_bytes=500_000_000) as writer:
        while written < gigabytes * 1e9:
            image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            meta = {
                "dataset": "toy", "fold": 0, "class_id": 1, "class_name": "noise", "source": "real",
                "mask_method": "gt", "seed": n, "shot_ids": ["bench"], "scores": {}, "config_hash": "bench",
            }  # fmt: skip
            writer.write(ShardSample(f"toy-f0-c0001-real-{n:06d}", image, label, meta))
            n += 1
            if n % 50 == 0:  # bytes staged so far (open and closed shards)
                written = sum(p.stat().st_size for p in folder.rglob("*.tar*"))
        writer.finish({"n_samples": n})
    return n, sum(p.stat().st_size for p in (folder / "shards").glob("*.tar"))


def read_all(folder: Path, verify: bool) -> float:
    """Return the seconds to iterate and decode every sample of the run."""
    start = time.perf_counter()
    count = sum(1 for _ in RunReader(str(folder), verify=verify))
    seconds = time.perf_counter() - start
    assert count > 0
    return seconds


def main() -> None:
    """Write the run, time both reads alternately, print figures and the ratio, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.0, help="Shard bytes to write (default 1 GB).")
    parser.add_argument("--side", type=int, default=512, help="Image side in pixels.")
    parser.add_argument("--per-shard", type=int, default=200, help="Samples per shard.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed reads of each kind, alternating.")
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the run (default: a temp folder).")
    parser.add_argument("--json", type=Path, default=Path("bench/out/shard_verify.json"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        start = time.perf_counter()
        samples, total = write_run(base / "run", args.gb, args.side, args.per_shard)
        print(f"wrote {samples} samples, {total / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s", flush=True)
        read_all(base / "run", False)  # warm the page cache: both kinds then read from memory
        times: dict[str, list[float]] = {"verified": [], "unverified": []}
        for _ in range(args.repeats):
            for name, verify in (("verified", True), ("unverified", False)):
                times[name].append(read_all(base / "run", verify))
                print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    ratio = rate["verified"] / rate["unverified"]
    for name in ("verified", "unverified"):
        print(f"{name}: {rate[name]:.1f} samples/s, {rate[name] * total / samples / 1e6:.0f} MB/s (median)")
    write_json(
        args.json,
        {
            "samples": samples,
            "bytes": total,
            "side": args.side,
            "seconds": times,
            "samples_per_s": rate,
            "ratio": ratio,
        },
    )
    print(f"shard_verify: verified/unverified samples/s = {ratio:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
