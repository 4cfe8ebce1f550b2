"""Is MaskDiff's mask head fast enough? DDIM vs the 1000-step ancestral sampler, batched vs per-detection calls.

One run, one seeded batch of N detections: random uint8 images, random boxes, their region crops (region_crops),
K background-removed support crops (support_crops of random images under box-shaped masks) and random class ids;
the head is `tiny_spec(num_classes=16, shots=K)` with random weights (seed --seed) unless --checkpoint names a saved
head (load_mask_head; its spec is used). Guidance w = 5 (paper Alg. 2) throughout. Two comparisons:
  sampling  sample_masks "ddim" with --ddim-steps (default 50, eta 0) against "ddpm", the ancestral sampler, with
            --ddpm-steps (default 1000, the paper's; fewer only for smoke tests, recorded in the JSON), timed in
            full on the same conditions and generator seed (so the same x_T); masks/s of each and the mean IoU of
            their masks per detection (agreement between samplers, not accuracy; two empty masks count 1). The
            ancestral run is long, so it is timed --ddpm-repeats times (default 1) after a warm-up call of 10 steps;
            with --ddpm-n M < N it runs on the first M detections only and DDIM is timed on those M as well, so the
            ratio compares equal batches. With --ap-config (a MaskDiff config whose K-shot stage is trained, e.g.
            configs/maskdiff-toy.yaml after bench/toy_fsis.py, stage folders under --ap-out-dir) both samplers
            also score that stage through eval_maskdiff on the first --ap-images images of its eval split (one
            sampling seed each; guidance --w): novel segm AP of each and their difference, printed beside the
            ratio. Without it the AP difference is not measured.
  batching  DDIM with --batch-steps (default min(20, --ddim-steps)): all N detections in one sample_masks call
            against N calls of one detection each; the batched call and the chain of N calls each start from a
            generator seeded --seed, which gives the same x_T row for row (checked and recorded), so the mean IoU
            of the two sides' masks shows that batching changes nothing but numerics. Timed interleaved.
Each side: --warmup untimed calls, then the median of --repeats timed calls. Prints masks/s per side and, last,
`maskdiff_sampling: ddim/ancestral masks/s = R (target >= 15)` (with the novel AP difference when measured)
and `maskdiff_batching: batched/per-detection = R (target >= 3)`; writes JSON with every figure, device, dtype, spec.

CPU default: N = 56 detections (one toy evaluation batch: eval.batch_images 16 x the 3.5 detections per image of
bench/toy_fsis.py's K-shot detector), the ancestral run on the first 8, K = 1, tiny head at 32 px, fp32, 2 threads.
`--full-size` (meant for a GPU): `paper_spec(num_classes=80, shots=K)` at 128 px, random weights, N = 64 by default
with the ancestral sampler on the first 16 (--ddpm-n), the UNet and conditions cast to bf16 on CUDA (sample_masks
keeps its state in fp32); peak GPU memory (torch.cuda.max_memory_allocated) of each side is printed on CUDA.

    python bench/maskdiff.py                                    # CPU: tiny head, N = 56, DDIM 50 vs DDPM 1000 on 8
    python bench/maskdiff.py --ap-config configs/maskdiff-toy.yaml   # + both samplers' AP on the trained toy stage
    python bench/maskdiff.py --full-size                        # GPU: paper head, 128 px, bf16, N = 64
    python bench/maskdiff.py --full-size --n 2 --ddim-steps 2 --ddpm-steps 3 --repeats 1 --warmup 0   # CPU smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import with_fields, write_json  # noqa: E402

from maskforge.models.device import resolve_device
from maskforge.models.maskdiff.mask_head import (
    MAX_STEPS,
    SCHEDULER_KINDS,
    build_mask_head,
    condition,
    load_mask_head,
    paper_spec,
    region_crops,
    sample_masks,
    support_crops,
    tiny_spec,
)
from maskforge.tasks.maskdiff.config import MaskdiffConfig, load_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import eval_maskdiff

GIB = 1024**3
#: Real classes of the random heads: the tiny one (toy world) and the paper's (COCO).
TINY_CLASSES, PAPER_CLASSES = 16, 80
#: Steps of the untimed ancestral warm-up call: same code path and shapes as the full run, a fraction of its time.
DDPM_WARMUP_STEPS = 10
SAMPLING_TARGET, BATCHING_TARGET = 15.0, 3.0
#: Detections of one toy evaluation batch: eval.batch_images = 16 images of configs/maskdiff-toy.yaml at the 3.5
#: detections per image that bench/toy_fsis.py's K-shot detector gives on the val split (352 on 100 images).
TOY_BATCH_DETECTIONS = 56


def quiet() -> None:
    """Silence diffusers' notices, which would drown the bench's lines."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Times calls on one device and keeps, on CUDA, the peak memory over all of them per side."""

    def __init__(self, device: torch.device) -> None:
        """Start with no peaks recorded."""
        self.device = device
        self.peak_gib: dict[str, float] = {}

    def call(self, name: str, fn: Callable[[], object]):
        """Run fn once; return (seconds, its result), recording the side's peak GPU memory on CUDA."""
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        out = fn()
        sync(self.device)
        seconds = time.perf_counter() - start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / GIB
            self.peak_gib[name] = max(peak, self.peak_gib.get(name, 0.0))
        return seconds, out


def random_conditions(n: int, shots: int, size: int, seed: int, num_classes: int):
    """Return seeded (cond (N, 3 + 3K, S, S), class ids (N,)): region crops of random boxes on a random image and K
    background-removed support crops of random images under box-shaped masks."""
    g = torch.Generator().manual_seed(seed)
    side = 4 * size  # boxes of 1/8 to 1/2 of the image side: crops are resized up and down around `size`

    def image() -> np.ndarray:
        return torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8).numpy()

    def boxes(count: int) -> np.ndarray:
        wh = torch.randint(side // 8, side // 2 + 1, (count, 2), generator=g)
        xy = (torch.rand(count, 2, generator=g) * (side - wh)).floor()
        return torch.cat([xy, xy + wh], dim=1).numpy().astype(np.float32)

    regions = region_crops(image(), boxes(n), size)
    images = [image() for _ in range(shots)]
    support_boxes = boxes(shots)
    masks = []
    for x1, y1, x2, y2 in support_boxes.astype(int).tolist():
        mask = np.zeros((side, side), dtype=bool)  # the middle half of the box: object inside, background around
        mask[y1 + (y2 - y1) // 4 : y2 - (y2 - y1) // 4, x1 + (x2 - x1) // 4 : x2 - (x2 - x1) // 4] = True
        masks.append(mask)
    supports = support_crops(images, masks, support_boxes, size)
    class_ids = torch.randint(0, num_classes, (n,), generator=g)
    return condition(regions, supports), class_ids


def mean_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over detections of the IoU of two (N, 1, S, S) boolean mask batches (two empty masks: IoU 1)."""
    a, b = a.flatten(1).cpu(), b.flatten(1).cpu()
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean())


def summary(seconds: list[float], n: int) -> dict:
    """Return a side's figures: the timed seconds, their median and masks/s at n masks per call."""
    median = statistics.median(seconds)
    return {"n": n, "seconds": seconds, "median_s": median, "masks_per_s": n / median}


def build_head(args, device: torch.device, dtype: torch.dtype):
    """Return (UNet in eval mode on device/dtype, spec, source): the checkpoint's head or a seeded random one."""
    if args.checkpoint:
        unet, spec, _ = load_mask_head(args.checkpoint)
        if args.shots is not None and args.shots != spec.shots:
            raise SystemExit(f"--shots: {args.shots}, but {args.checkpoint} is a {spec.shots}-shot head")
        source = f"checkpoint {args.checkpoint}"
    else:
        shots = args.shots or 1
        spec = paper_spec(PAPER_CLASSES, shots) if args.full_size else tiny_spec(TINY_CLASSES, shots)
        torch.manual_seed(args.seed)
        unet = build_mask_head(spec)
        source = f"{'paper' if args.full_size else 'tiny'} head, random weights"
    return unet.to(device=device, dtype=dtype).eval(), spec, source


def bench_sampling(unet, spec, cond, class_ids, args, meter: Meter) -> dict:
    """Time DDIM (--ddim-steps) against the ancestral sampler (--ddpm-steps) on the same conditions and seed."""

    def sample(kind: str, steps: int, count: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(args.seed)
        return sample_masks(
            unet, cond[:count], class_ids[:count], spec.null_class, args.w, kind, steps, g, spec.prediction_type
        )

    n, m = cond.shape[0], args.ddpm_n
    sides = {"ddim": ("ddim", args.ddim_steps, n, args.repeats, args.ddim_steps)}
    if m < n:  # DDIM on the ancestral sampler's batch too, so the ratio compares equal batches
        sides["ddim_same_n"] = ("ddim", args.ddim_steps, m, args.repeats, args.ddim_steps)
    sides["ancestral"] = ("ddpm", args.ddpm_steps, m, args.ddpm_repeats, min(DDPM_WARMUP_STEPS, args.ddpm_steps))
    result, masks = {}, {}
    for name, (kind, steps, count, repeats, warm_steps) in sides.items():
        for _ in range(args.warmup):
            meter.call(name, lambda: sample(kind, warm_steps, count))
        seconds = []
        for _ in range(repeats):
            s, masks[name] = meter.call(name, lambda: sample(kind, steps, count))
            seconds.append(s)
        result[name] = {"scheduler": kind, "steps": steps, **summary(seconds, count)}
    ddim_m = "ddim_same_n" if m < n else "ddim"
    result["ratio"] = result[ddim_m]["masks_per_s"] / result["ancestral"]["masks_per_s"]
    result["ratio_at_n"] = m
    result["mean_iou"] = mean_iou(masks[ddim_m][:m], masks["ancestral"])
    return result


def bench_batching(unet, spec, cond, class_ids, args, meter: Meter) -> dict:
    """Time one batched DDIM call on all N detections against N calls of one detection, interleaved."""
    n, steps = cond.shape[0], args.batch_steps

    def batched() -> torch.Tensor:
        g = torch.Generator().manual_seed(args.seed)
        return sample_masks(unet, cond, class_ids, spec.null_class, args.w, "ddim", steps, g, spec.prediction_type)

    def per_detection() -> torch.Tensor:
        g = torch.Generator().manual_seed(args.seed)  # one chain of draws: row i of the batched x_T, in turn
        calls = [
            sample_masks(
                unet,
                cond[i : i + 1],
                class_ids[i : i + 1],
                spec.null_class,
                args.w,
                "ddim",
                steps,
                g,
                spec.prediction_type,
            )
            for i in range(n)
        ]
        return torch.cat(calls)

    # sample_masks draws x_T first from the (CPU) generator: check the two sides' draws agree row for row
    g_batch, g_single = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed)
    shape = (1, 1, spec.size, spec.size)
    same_noise = torch.equal(
        torch.randn((n, *shape[1:]), generator=g_batch),
        torch.cat([torch.randn(shape, generator=g_single) for _ in range(n)]),
    )
    sides = {"batched": batched, "per_detection": per_detection}
    for _ in range(args.warmup):
        for name, fn in sides.items():
            meter.call(name, fn)
    times: dict[str, list[float]] = {name: [] for name in sides}
    masks = {}
    names = list(sides)
    for i in range(args.repeats):  # alternate which side goes first so drift and cache effects hit both alike
        for name in names if i % 2 == 0 else names[::-1]:
            s, masks[name] = meter.call(name, sides[name])
            times[name].append(s)
    result = {name: {"scheduler": "ddim", "steps": steps, **summary(times[name], n)} for name in sides}
    result["per_detection"]["calls"] = n
    result["ratio"] = result["batched"]["masks_per_s"] / result["per_detection"]["masks_per_s"]
    result["paired_ratio_median"] = statistics.median(p / b for b, p in zip(times["batched"], times["per_detection"]))
    result["same_initial_noise"] = same_noise
    result["mean_iou"] = mean_iou(masks["batched"], masks["per_detection"])
    return result


def sampler_ap(config: MaskdiffConfig, args) -> dict:
    """Evaluate a trained K-shot stage twice on the first --ap-images images of its eval split, one sampling seed
    each: DDIM with --ddim-steps and the ancestral sampler with its 1000 steps (eval_maskdiff has no other
    ancestral step count; --ddpm-steps times the sampler only), guidance --w; return both rows' segm AP (novel,
    base, all, in %) and the novel difference ddim - ancestral in points."""
    rows = {}
    ancestral_steps = SCHEDULER_KINDS["ddpm"]
    for name, sampler, steps in (("ddim", "ddim", args.ddim_steps), ("ancestral", "ddpm", ancestral_steps)):
        head = {"guidance": args.w, "sampler": sampler}
        if sampler == "ddim":
            head["ddim_steps"] = steps
        cfg = with_fields(config, head=head, eval={"max_images": args.ap_images, "sampling_seeds": 1})
        start = time.perf_counter()
        result = eval_maskdiff(cfg, log=lambda _: None)
        rows[name] = {
            "steps": steps,
            "segm_ap_novel": 100 * result["segm"]["novel"]["ap"],
            "segm_ap_base": 100 * result["segm"]["base"]["ap"],
            "segm_ap_all": 100 * result["segm"]["all"]["ap"],
            "detections": result["detections"],
            "seconds": time.perf_counter() - start,
        }
    rows["images"] = args.ap_images
    rows["novel_difference"] = rows["ddim"]["segm_ap_novel"] - rows["ancestral"]["segm_ap_novel"]
    return rows


def ap_config(args) -> MaskdiffConfig | None:
    """Return the --ap-config MaskDiff config with run.out_dir = --ap-out-dir (None without --ap-config); its
    K-shot stage must be trained (eval_maskdiff names the missing folder otherwise)."""
    if not args.ap_config:
        return None
    return load_maskdiff_config(args.ap_config, {"run.out_dir": args.ap_out_dir})


def parse_args() -> argparse.Namespace:
    """Parse and check the command line; defaults depend on --full-size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="paper head (80 classes), 128 px, N = 64 (GPU)")
    parser.add_argument("--n", type=int, help=f"detections N (default {TOY_BATCH_DETECTIONS}; 64 with --full-size)")
    parser.add_argument("--ddpm-n", type=int, help="detections of the ancestral run, first of the N (default 8; 16)")
    parser.add_argument("--shots", type=int, help="support crops K of the random head (default 1)")
    parser.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps of the sampling comparison")
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="ancestral steps (1000; fewer: smoke tests)")
    parser.add_argument("--batch-steps", type=int, help="DDIM steps of the batching comparison (min(20, ddim))")
    parser.add_argument("--w", type=float, default=5.0, help="classifier-free guidance weight (paper: 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each side (ancestral: --ddpm-repeats)")
    parser.add_argument("--ddpm-repeats", type=int, default=1, help="timed calls of the ancestral sampler")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each side first")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="UNet dtype (default: bfloat16 on CUDA, else fp32)"
    )
    parser.add_argument("--checkpoint", help="a saved mask head (save_mask_head) instead of random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, inputs and sampler noise")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench/out/maskdiff.json", help="where to write the figures")
    parser.add_argument("--ap-config", help="a MaskDiff config whose trained K-shot stage scores both samplers' AP")
    parser.add_argument("--ap-out-dir", default="runs", help="run.out_dir of --ap-config (its stage folders)")
    parser.add_argument("--ap-images", type=int, default=24, help="eval images of the AP comparison (1..10000)")
    args = parser.parse_args()
    if not 1 <= args.ap_images <= 10_000:
        parser.error(f"--ap-images must be in 1..10000, got {args.ap_images}")
    args.n = args.n if args.n is not None else (64 if args.full_size else TOY_BATCH_DETECTIONS)
    args.ddpm_n = args.ddpm_n if args.ddpm_n is not None else min(16 if args.full_size else 8, args.n)
    args.batch_steps = args.batch_steps if args.batch_steps is not None else min(20, args.ddim_steps)
    if args.n < 1 or not 1 <= args.ddpm_n <= args.n:
        parser.error(f"--n must be >= 1 and --ddpm-n in 1..N, got n={args.n}, ddpm-n={args.ddpm_n}")
    for name in ("ddim_steps", "ddpm_steps", "batch_steps"):
        if not 1 <= getattr(args, name) <= MAX_STEPS:
            parser.error(f"--{name.replace('_', '-')} must be in 1..{MAX_STEPS}, got {getattr(args, name)}")
    if args.repeats < 1 or args.ddpm_repeats < 1 or args.warmup < 0:
        parser.error(
            f"--repeats and --ddpm-repeats must be >= 1, --warmup >= 0 (got {args.repeats}, "
            f"{args.ddpm_repeats}, {args.warmup})"
        )
    return args


def main() -> None:
    """Build the head and the N detections' conditions, run both comparisons, print, write JSON."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    toy = ap_config(args)  # a bad config fails before any timing
    started = time.perf_counter()
    device = resolve_device(args.device, "--device")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    unet, spec, source = build_head(args, device, dtype)
    cond, class_ids = random_conditions(args.n, spec.shots, spec.size, args.seed, spec.num_classes)
    cond, class_ids = cond.to(device=device, dtype=dtype), class_ids.to(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"device {device_name}, {source}, {spec.size} px, {spec.num_classes} classes, {spec.shots}-shot, "
        f"{dtype_name}, {torch.get_num_threads()} thread(s); N = {args.n}, w = {args.w:g}; "
        f"warm-up {args.warmup}, median of {args.repeats} (ancestral: {args.ddpm_repeats})"
    )
    meter = Meter(device)
    sampling = bench_sampling(unet, spec, cond, class_ids, args, meter)
    for name, r in sampling.items():
        if isinstance(r, dict):
            peak = f"; peak GPU memory {meter.peak_gib[name]:.2f} GiB" if name in meter.peak_gib else ""
            print(
                f"sampling {name}: {r['scheduler']} {r['steps']} steps, {r['masks_per_s']:.3f} masks/s "
                f"({r['median_s']:.2f} s for {r['n']} detections){peak}"
            )
    print(f"sampling: mean IoU ddim vs ancestral masks = {sampling['mean_iou']:.3f} (agreement, not accuracy)")
    batching = bench_batching(unet, spec, cond, class_ids, args, meter)
    for name in ("batched", "per_detection"):
        r = batching[name]
        calls = f"{r.get('calls', 1)} call(s)"
        peak = f"; peak GPU memory {meter.peak_gib[name]:.2f} GiB" if name in meter.peak_gib else ""
        print(
            f"batching {name}: ddim {r['steps']} steps, {calls}, {r['masks_per_s']:.3f} masks/s "
            f"({r['median_s']:.2f} s for {r['n']} detections){peak}"
        )
    print(
        f"batching: same x_T row for row = {batching['same_initial_noise']}, mean IoU batched vs per-detection "
        f"= {batching['mean_iou']:.3f}"
    )
    accuracy = sampler_ap(toy, args) if toy is not None else None
    if accuracy is not None:
        for name in ("ddim", "ancestral"):
            r = accuracy[name]
            print(
                f"AP {name}: {r['steps']} steps, novel segm AP {r['segm_ap_novel']:.2f}, base {r['segm_ap_base']:.2f} "
                f"({r['detections']} detections on {accuracy['images']} images, {r['seconds']:.0f} s)"
            )
    for part in (sampling, batching):
        for name, r in part.items():
            if isinstance(r, dict) and name in meter.peak_gib:
                r["peak_gib"] = meter.peak_gib[name]
    write_json(
        args.out,
        {
            "device": device_name,
            "device_type": device.type,
            "dtype": dtype_name,
            "head": source,
            "checkpoint": args.checkpoint,
            "spec": asdict(spec),
            "n": args.n,
            "ddpm_n": args.ddpm_n,
            "ddim_steps": args.ddim_steps,
            "ddpm_steps": args.ddpm_steps,
            "batch_steps": args.batch_steps,
            "w": args.w,
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "repeats": args.repeats,
            "ddpm_repeats": args.ddpm_repeats,
            "ddpm_warmup_steps": min(DDPM_WARMUP_STEPS, args.ddpm_steps),
            "seed": args.seed,
            "resident_gib": torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None,
            "sampling": sampling,
            "sampling_target": SAMPLING_TARGET,
            "batching": batching,
            "batching_target": BATCHING_TARGET,
            "ap": accuracy,
            "ap_config": args.ap_config,
            "elapsed_s": time.perf_counter() - started,
        },
    )
    if accuracy is None:
        print("AP difference: not measured (give --ap-config with a trained K-shot stage, e.g. bench/toy_fsis.py's)")
        ap_note = ""
    else:
        ap_note = f", novel segm AP ddim - ancestral = {accuracy['novel_difference']:+.2f} points (target within 1)"
    print(
        f"maskdiff_sampling: ddim/ancestral masks/s = {sampling['ratio']:.2f} (target >= {SAMPLING_TARGET:g}){ap_note}"
    )
    print(f"maskdiff_batching: batched/per-detection = {batching['ratio']:.2f} (target >= {BATCHING_TARGET:g})")


if __name__ == "__main__":
    main()
