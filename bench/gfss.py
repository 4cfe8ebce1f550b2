"""Does the GFSS novel stage's shard feed keep up with training? Shards vs pre-decoded in-memory tensors, one run.

Both sides run the same fine-tuning steps (tasks/gfss/novel.finetune_step: BN frozen, SGD, CE + feature
regularisation) on the same GAPS + synthetic items:
  shards     NovelFeed in DataLoader workers: webdataset stream of a run's shards, decoding, scale-crop, guided
             copy-paste of the streamed objects onto replay-buffer images, batching
  in-memory  the first N batches of that very feed, decoded and synthesised beforehand, replayed from a list
Prints steps/s of each and, last, `gfss_shard_feed: shards/in-memory steps/s = R (target >= 0.9)`; writes JSON.
CPU default: the tiny toy network (configs/gfss-toy.yaml) on a bench-made run of object-centric toy samples.
`--full-size` (GPU): DeepLabV3-R101 (random weights: timing only), 512 crops, batch 8, bf16; also prints images/s.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from maskforge.eval.datasets.toy import render_object
from maskforge.eval.folds import toy_fold
from maskforge.eval.gfss_protocol import ClassMap
from maskforge.models.device import resolve_device
from maskforge.models.gfss.network import build_gfss, set_train_mode
from maskforge.storage.codec import ShardSample
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import RunWriter, write_config
from maskforge.tasks.gfss.base import model_spec
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.gfss.feed import NovelData, NovelFeed, make_loader
from maskforge.tasks.gfss.novel import finetune_step
from maskforge.tasks.gfss.preflight import open_fold

ROOT = Path(__file__).resolve().parents[1]


def bench_run(url: str, toy: dict, per_class: int, size: int) -> str:
    """Write (once) a complete run of object-centric toy samples of fold 0's novel classes, as generation would."""
    if Path(url).exists() and RunReader(url, allow_partial=True).complete:
        return url
    fold = toy_fold(0)
    write_config(url, {"dataset": {"name": "toy", "fold": 0, "toy": toy, "root": None}, "run": {"seed": 0}})
    with RunWriter(url, max_count=64) as writer:
        for cid in fold.novel:
            for i in range(per_class):
                image, mask = render_object(1, cid, i, size)
                meta = {
                    "dataset": "toy", "fold": 0, "class_id": cid, "class_name": f"c{cid}", "source": "text",
                    "mask_method": "semi-accepted", "seed": i, "shot_ids": [], "scores": {}, "config_hash": "bench",
                }  # fmt: skip
                label = np.where(mask, cid, 0).astype(np.int32)
                writer.write(ShardSample(f"toy-f0-c{cid:04d}-text-{i:05d}", image, label, meta))
        writer.finish({"n_samples": per_class * len(fold.novel)})
    return url


def time_steps(net, teacher, batches, steps: int, device, amp: bool, warmup: int) -> float:
    """Return steps/s of `steps` fine-tuning steps after `warmup` untimed ones."""
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    for _ in range(warmup):
        finetune_step(net, teacher, optimiser, loss_fn, *next(batches), 0.1, device, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        finetune_step(net, teacher, optimiser, loss_fn, *next(batches), 0.1, device, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    """Measure both feeds and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/gfss", help="Folder of the bench run and the JSON.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the shard feed (default 1; 8 with --full-size).",
    )
    parser.add_argument("--full-size", action="store_true", help="DeepLabV3-R101, 512 crops, batch 8, bf16 (GPU).")
    args = parser.parse_args()
    out = Path(args.out)
    if args.workers is None:  # a GPU step of the full-size net needs several CPU workers rendering 512 px items
        args.workers = 8 if args.full_size else 1
    overrides = {"run.device": "auto" if args.full_size else "cpu"}
    if args.full_size:
        overrides |= {"model.backbone": "resnet101", "model.aspp_channels": 256, "model.aspp_rates": [6, 12, 18]}
        overrides |= {"dataset.toy.image_size": 512, "dataset.toy.n_train": 300, "base.crop_size": 512}
        overrides |= {"novel.batch_size": 8, "run.threads": 0}
    cfg = load_gfss_config(ROOT / "configs" / "gfss-toy.yaml", overrides)
    device = resolve_device(cfg.run.device)
    dataset, fold = open_fold(cfg)
    toy = cfg.dataset.toy.resolved()
    run = bench_run(str(out / f"run-{toy['image_size']}"), toy, 48, toy["image_size"] * 2 // 3)
    reader = RunReader(run)
    reader.verify_shards()
    cid = fold.novel[0]
    class_map = ClassMap(tuple(fold.base), (cid,))
    index = dataset.class_index("train")
    novel_images = {i for c in fold.novel for i in index[c]}
    buffer = [i for i in dataset.image_ids("train") if i not in novel_images][:100]
    data = NovelData(
        dataset=cfg.dataset, fold_novel=tuple(fold.novel), class_map=class_map, step_classes=(cid,), method="gaps",
        shots={cid: index[cid][:1]}, crop=cfg.base.crop_size, scale=tuple(cfg.base.scale), paste_scale=(0.1, 2.0),
        seed=0, synthetic_share=1.0, synthetic={run: [k for k in reader.keys() if f"-c{cid:04d}-" in k]},
        buffer=buffer, p_vrfs=0.6,
    )  # fmt: skip
    torch.manual_seed(0)
    net = build_gfss(model_spec(cfg, class_map.num_classes)).to(device)
    if device.type == "cpu" and cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    teacher = copy.deepcopy(net.backbone).eval().requires_grad_(False)
    set_train_mode(net, frozen_bn=True)
    amp = cfg.run.amp and device.type == "cuda"
    n = args.steps + args.warmup
    batch = cfg.novel.batch_size
    pin = device.type == "cuda"
    with make_loader(NovelFeed(data), batch, args.workers, pin) as feed:
        shard_rate = time_steps(net, teacher, feed, args.steps, device, amp, args.warmup)
    with make_loader(NovelFeed(data), batch, args.workers, pin) as feed:
        cached = [next(feed) for _ in range(n)]  # the same kind of batches, decoded and synthesised beforehand
    memory_rate = time_steps(net, teacher, iter(cached), args.steps, device, amp, args.warmup)
    ratio = shard_rate / memory_rate
    print(f"model: {cfg.model.backbone}, crop {cfg.base.crop_size}, batch {batch}, device {device}, amp {amp}")
    print(f"shards:    {shard_rate:.2f} steps/s ({shard_rate * batch:.1f} images/s), {args.workers} worker(s)")
    print(f"in-memory: {memory_rate:.2f} steps/s ({memory_rate * batch:.1f} images/s)")
    write_json(
        out / ("gfss_full.json" if args.full_size else "gfss.json"),
        {
            "device": str(device),
            "backbone": cfg.model.backbone,
            "crop": cfg.base.crop_size,
            "batch": batch,
            "workers": args.workers,
            "shards_steps_per_s": shard_rate,
            "memory_steps_per_s": memory_rate,
            "images_per_s": shard_rate * batch,
            "ratio": ratio,
        },
    )
    print(f"gfss_shard_feed: shards/in-memory steps/s = {ratio:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
