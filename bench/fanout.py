"""Bench: generation fanned out over 2 Dask worker processes against 1, and the S3 write path against local disk.

fanout: the generate flow (Prefect, its ephemeral API in a temporary PREFECT_HOME) on the toy world with the tiny
diffusion models, on a local Dask cluster of 1 and one of 2 worker processes (one thread each, GPU=1 each), both
started and warmed first (models loaded in every worker, one untimed flow run each), then timed runs alternating,
--repeats times each, each into a fresh folder. Samples/s = the run's samples over the flow's wall time.

s3_store: the samples of that run written again, --write-copies times over as one run, through RunWriter (encode,
shard with the config's shard settings, publish, manifest, marker last) into a local folder and into a bucket of a
moto S3 server (`moto_server`, a process of its own on a free port), alternating, --write-repeats times each.

Prints both ratios last, `fanout: 2 workers / 1 worker samples/s = R`, then
`s3_store: s3/local write samples/s = R (target >= 0.8)`, and writes the figures as JSON.

    python bench/fanout.py                          # about 3 minutes on 2 cores
    python bench/fanout.py --repeats 3 --text-samples 32
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# before Prefect is imported: a private, offline API database and a patient start on small machines
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="maskforge-bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command line's settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each kind, alternating")
    parser.add_argument("--text-samples", type=int, default=16, help="diffusion images per class (4 classes)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps of the tiny 64 px model")
    parser.add_argument("--per-class", type=int, default=4, help="composed scenes per class")
    parser.add_argument("--write-copies", type=int, default=32, help="the run's samples written this many times")
    parser.add_argument("--write-repeats", type=int, default=3, help="timed writes to each store, alternating")
    parser.add_argument("--out", default="bench-out/fanout.json", help="JSON file of the figures")
    return parser.parse_args(argv)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gen_config(out_dir: str, models: dict, args: argparse.Namespace):
    """The toy fold 0's four novel classes: composed scenes and tiny-SD text-prompt images, 64 px."""
    from maskforge.tasks.config import parse_config

    return parse_config(
        {
            "run": {"name": "fanout", "seed": 0, "out_dir": out_dir},
            "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "base": {"subset_size": 10},
            "generation": {"samples_per_class": args.per_class},
            "diffusion": {
                "model": models["sd"],
                "steps": args.steps,
                "image_size": 64,
                "batch_size": 4,
                "text": {"samples": args.text_samples},
                "embedding": {"samples": 0},
                "controlnet": {"conditions": []},
                "xattn": {"factors": [2, 4]},
            },
        }
    )


def time_fanout(root: Path, models: dict, args: argparse.Namespace) -> dict:
    """Run the flow on warm local clusters of 1 and 2 worker processes, alternating; return samples and seconds.

    Both clusters are started first, every worker loads the models (client.run) and each cluster runs the flow once
    untimed (Prefect's task engine imports on first use): the timed runs measure generation, not start-up.
    """
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from maskforge.flows.generate import generate
    from maskforge.models.loading import cached_pipelines
    from maskforge.storage.reader import RunReader

    def load_models(diffusion) -> None:
        cached_pipelines(diffusion)  # kept in the worker process for its later tasks

    clusters = {}
    for workers in (1, 2):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, resources={"GPU": 1}, dashboard_address=":0"
        )
        with Client(cluster, set_as_default=False) as client:
            client.run(load_models, gen_config(str(root / "warm"), models, args).diffusion)
        warm = gen_config(str(root / f"warm-{workers}"), models, args)
        generate.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))(config=warm)
        clusters[workers] = cluster
    seconds: dict[int, list[float]] = {1: [], 2: []}
    samples, run = 0, ""
    try:
        for repeat in range(args.repeats):
            for workers, cluster in clusters.items():
                config = gen_config(str(root / f"w{workers}-r{repeat}"), models, args)
                runner = DaskTaskRunner(address=cluster.scheduler_address)
                start = time.perf_counter()
                run = generate.with_options(task_runner=runner)(config=config)["url"]
                seconds[workers].append(time.perf_counter() - start)
                samples = len(RunReader(run))
                print(f"fanout {workers} worker(s): {samples} samples in {seconds[workers][-1]:.1f} s", flush=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
    return {"samples": samples, "seconds": seconds, "run": run}


def write_copies(url: str, samples: list, copies: int, shards) -> float:
    """Write `copies` x the samples as one run at url (keys made unique per copy) with the generation config's
    shard settings `shards`; return the seconds."""
    from maskforge.storage.codec import ShardSample
    from maskforge.storage.shards import RunWriter, write_config

    start = time.perf_counter()
    write_config(url, {"bench": "fanout"})
    with RunWriter(url, shards.max_count, shards.max_bytes, shards.jpeg_quality) as writer:
        for copy in range(copies):
            for s in samples:
                writer.write(ShardSample(f"{s.key}-x{copy}", s.image, s.label, s.meta))
        writer.finish({"copies": copies})
    return time.perf_counter() - start


def time_store(root: Path, run: str, shards, args: argparse.Namespace) -> dict:
    """Write the run's samples to local disk and to a moto S3 bucket, alternating, after one untimed write to each
    (connections, imports); return seconds per write."""
    import fsspec

    from maskforge.storage.reader import RunReader

    samples = list(RunReader(run))
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.mkdir("bench")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        write_copies(str(root / "write-warm"), samples, 1, shards)
        write_copies("s3://bench/write-warm", samples, 1, shards)
        seconds: dict[str, list[float]] = {"local": [], "s3": []}
        for repeat in range(args.write_repeats):
            for where, url in (("local", str(root / f"write-{repeat}")), ("s3", f"s3://bench/write-{repeat}")):
                seconds[where].append(write_copies(url, samples, args.write_copies, shards))
                print(f"write {where}: {len(samples) * args.write_copies} samples in {seconds[where][-1]:.2f} s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"samples": len(samples) * args.write_copies, "seconds": seconds, "endpoint": "moto_server (local)"}


def main(argv: list[str] | None = None) -> None:
    """Run both comparisons, print them (the two ratios last) and write the JSON."""
    args = parse_args(argv)
    import torch

    from maskforge.models.tiny import build_tiny_models

    root = Path(tempfile.mkdtemp(prefix="maskforge-bench-fanout-"))
    models = build_tiny_models(root / "models", seed=0)
    fan = time_fanout(root, models, args)
    store = time_store(root, fan["run"], gen_config(str(root), models, args).shards, args)
    rate = {w: fan["samples"] / statistics.median(s) for w, s in fan["seconds"].items()}
    write = {w: store["samples"] / statistics.median(s) for w, s in store["seconds"].items()}
    fanout, s3_store = rate[2] / rate[1], write["s3"] / write["local"]
    write_json(
        args.out,
        {
            "bench": "fanout",
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "settings": vars(args),
            "fanout": {"samples": fan["samples"], "seconds": fan["seconds"], "samples_per_s": rate, "ratio": fanout},
            "s3_store": {
                "samples": store["samples"],
                "seconds": store["seconds"],
                "samples_per_s": write,
                "ratio": s3_store,
            },
        },
    )
    print(f"generation samples/s: 1 worker {rate[1]:.2f}, 2 workers {rate[2]:.2f} (median of {args.repeats})")
    print(f"write samples/s: local {write['local']:.1f}, s3 {write['s3']:.1f} (median of {args.write_repeats})")
    print(f"figures in {args.out}")
    print(f"fanout: 2 workers / 1 worker samples/s = {fanout:.3f}")
    print(f"s3_store: s3/local write samples/s = {s3_store:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
