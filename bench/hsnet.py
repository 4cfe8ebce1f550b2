"""Benchmark HSNet's conditioning API: batched predict() against one predict() per image; prints the speed-up last."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from maskforge.models.hsnet.backbone import TinySpec
from maskforge.models.hsnet.model import HSNetSpec, build_hsnet
from maskforge.models.hsnet.segmenter import HSNetSegmenter


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Time N queries with K shots, batched and per image, on random weights; write JSON; print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="tiny", choices=["tiny", "resnet50", "resnet101", "vgg16"])
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/hsnet.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = build_hsnet(HSNetSpec(args.backbone, args.img_size, TinySpec(maxpool=True)), None)
    seg = HSNetSegmenter(net, device, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    size = args.img_size
    supports = []
    for _ in range(args.shots):
        mask = np.zeros((size, size), bool)
        mask[size // 4 : size // 2, size // 4 : size // 2] = True
        supports.append((rng.integers(0, 255, (size, size, 3), dtype=np.uint8), mask))
    queries = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(args.queries)]
    state = seg.condition(supports)
    seg.predict(state, queries[:2])  # warm-up
    timings = {"batched": [], "per_image": []}
    for _ in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        batched = seg.predict(state, queries)
        _sync(device)
        t1 = time.perf_counter()
        singles = np.stack([seg.predict(state, [q])[0] for q in queries])
        _sync(device)
        t2 = time.perf_counter()
        timings["batched"].append(t1 - t0)
        timings["per_image"].append(t2 - t1)
    agree = float((batched == singles).mean())
    best = {k: min(v) for k, v in timings.items()}
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "img_size": size,
        "queries": args.queries,
        "shots": args.shots,
        "batch_size": args.batch_size,
        "seconds_batched": best["batched"],
        "seconds_per_image": best["per_image"],
        "images_per_second_batched": args.queries / best["batched"],
        "images_per_second_per_image": args.queries / best["per_image"],
        "pixel_agreement": agree,
        "speedup": best["per_image"] / best["batched"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"batched predict speed-up over per-image: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
