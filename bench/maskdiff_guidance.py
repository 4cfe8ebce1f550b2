"""Why does guidance not raise MaskDiff's AP on the toy world? A guidance sweep and what the head's output reads.

One run on a trained K-shot stage (default: configs/maskdiff-toy.yaml under runs/, as bench/toy_fsis.py trains it).
  sweep        eval_maskdiff at each guidance weight of --w (default 0 1 2 3 5; w = 0 is the unconditional model
               alone, w = 1 the conditional one), --seeds sampling seeds each, on the config's eval split (all its
               images unless --images), the config's sampler: novel and base segm AP, mean +- std (ddof 0).
  sensitivity  on the ground-truth instances of the first --probe-images eval images (region crop at the true box,
               the class's K supports from kshot.json, as eval_maskdiff builds them), one head forward at each t of
               --t with a fixed x_t = add_noise(x0, eps, t): the mean over instances of ||out' - out|| / ||out||
               when one input is swapped -- the class for the null class (what guidance amplifies), the class for
               another real class, the supports for another class's supports (with the true class, then with the
               null class: does the class still tell the shape?), the region crop for zeros (a swap
               that changes the output little is an input the head does not read); and the mask IoU against the
               ground truth of each variant's one-step x0 estimate (the scheduler's pred_original_sample, cut at
               0), over all, novel and crowded boxes (other classes' instances cover > 10 % of the box); and
               that IoU of the guided output w * out(c) + (1 - w) * out(null) at each --w, with the class's own
               supports and with another class's (does the class term point to a better mask, and when?).
Prints the sweep table, the sensitivity table and, last,
`maskdiff_guidance: w=5/w=1 novel segm AP = R; class/crop output sensitivity = S`; writes JSON.

    python bench/maskdiff_guidance.py --threads 2          # about 6 min on 2 cores with the toy stage trained
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import with_fields, write_json  # noqa: E402

from maskforge.eval.datasets import open_dataset
from maskforge.eval.folds import get_fold
from maskforge.models.maskdiff.mask_head import (
    condition,
    load_mask_head,
    make_scheduler,
    mask_targets,
    region_crops,
)
from maskforge.tasks.maskdiff.config import MaskdiffConfig, load_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import HEAD_FILE, KSHOT_FILE, class_supports, eval_maskdiff, read_kshot

SWAPS = (
    "class -> null",
    "class -> other class",
    "supports -> other class's",
    "supports -> other's, class -> null",
    "region crop -> zeros",
)
#: A box counts as crowded when instances of other classes cover more than this share of it.
CROWDED = 0.1


def sweep(config: MaskdiffConfig, weights: list[float], seeds: int) -> list[dict]:
    """Return one row per guidance weight: novel and base segm AP (%, mean and std over `seeds` sampling seeds)."""
    rows = []
    for w in weights:
        cfg = with_fields(config, head={"guidance": w}, eval={"sampling_seeds": seeds})
        start = time.perf_counter()
        segm = eval_maskdiff(cfg, log=lambda _: None)["segm"]
        rows.append(
            {
                "w": w,
                **{f"{part}_ap": 100 * segm[part]["ap"] for part in ("novel", "base")},
                **{f"{part}_ap_std": 100 * segm[part].get("ap_std", 0.0) for part in ("novel", "base")},
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def probe_inputs(config: MaskdiffConfig, images: int):
    """Return (head, spec, x0 (N,1,S,S), region crops (N,3,S,S), {class: supports}, class ids (N,), novel ids,
    crowded (N,) bool) of the ground-truth instances of the first `images` eval images, crops at their true boxes;
    a box is crowded when other classes' instances cover more than CROWDED of its pixels."""
    folder = Path(config.finetune_dir())
    unet, spec, _ = load_mask_head(folder / HEAD_FILE)
    dataset = open_dataset(config.dataset)
    fold = get_fold(dataset.name, config.dataset.fold, config.dataset.coco_fold_mode)
    all_ids = sorted(fold.base + fold.novel)
    kshot, _ = read_kshot(folder / KSHOT_FILE, config.finetune.shots, config.finetune.data_seed)
    supports = class_supports(dataset, kshot, all_ids, config.finetune.shots, spec.size, str(folder / KSHOT_FILE))
    x0, regions, cids, crowded = [], [], [], []
    for image_id in sorted(dataset.image_ids(config.eval.split))[:images]:
        record = dataset.load(image_id)
        for inst in record.instances:
            if inst.iscrowd or inst.class_id not in supports:
                continue
            box = torch.tensor([inst.xyxy])
            x0.append(mask_targets([inst.mask], box, spec.size))
            regions.append(region_crops(record.image, box, spec.size))
            cids.append(inst.class_id)
            x1, y1, x2, y2 = (int(round(v)) for v in inst.xyxy)
            inside = np.zeros(inst.mask.shape, dtype=bool)
            inside[y1:y2, x1:x2] = True
            other = np.zeros_like(inside)
            for o in record.instances:
                if o.class_id != inst.class_id:
                    other |= o.mask
            crowded.append((other & inside).sum() > CROWDED * max(inside.sum(), 1))
    if not cids:
        raise SystemExit(f"--probe-images {images}: no instances of the fold's classes in those images")
    tensors = torch.cat(x0), torch.cat(regions), supports, torch.tensor(cids)
    return unet.eval(), spec, *tensors, set(fold.novel), torch.tensor(crowded)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over instances of the IoU of (pred > 0) and (target > 0), both (N, D) (two empty masks: IoU 1)."""
    a, b = pred > 0, target > 0
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())


@torch.no_grad()
def sensitivity(config: MaskdiffConfig, images: int, timesteps: list[int], seed: int, weights: list[float]) -> dict:
    """Return, per t, the mean relative output change of each swap, the mask IoU of the one-step x0 estimate of
    each variant (conditional, each swap), and that IoU of the guided output at each weight with the class's own
    supports and with another class's, over the probe instances; plus their counts."""
    unet, spec, x0, regions, supports, cids, novel, crowded = probe_inputs(config, images)
    ids = sorted(supports)
    g = torch.Generator().manual_seed(seed)
    # "another class": the next class id of the fold, cyclically (a fixed, reproducible pairing)
    other = torch.tensor([ids[(ids.index(int(c)) + 1) % len(ids)] for c in cids])
    eps = torch.randn(x0.shape, generator=g)
    scheduler = make_scheduler("ddpm", spec.prediction_type)

    def cond(region_planes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.cat([condition(region_planes[i : i + 1], supports[int(c)]) for i, c in enumerate(classes)])

    def head(x_t, t, c, labels) -> torch.Tensor:
        steps = torch.full((len(labels),), t, dtype=torch.long)
        return unet(torch.cat([x_t, c], dim=1), steps, class_labels=labels).sample.flatten(1)

    label = cids - 1  # the head's class index of a dataset class id (train.head_inputs)
    base_cond = cond(regions, cids)
    swapped = {
        SWAPS[0]: (base_cond, torch.full_like(label, spec.null_class)),
        SWAPS[1]: (base_cond, other - 1),
        SWAPS[2]: (torch.cat([regions, cond(regions, other)[:, 3:]], dim=1), label),
        SWAPS[3]: (torch.cat([regions, cond(regions, other)[:, 3:]], dim=1), torch.full_like(label, spec.null_class)),
        SWAPS[4]: (torch.cat([torch.zeros_like(regions), base_cond[:, 3:]], dim=1), label),
    }
    is_novel = torch.tensor([int(c) in novel for c in cids])
    result: dict = {
        "instances": len(cids),
        "novel_instances": int(is_novel.sum()),
        "crowded_instances": int(crowded.sum()),
        "w": weights,
    }
    target = x0.flatten(1)
    for t in timesteps:
        x_t = scheduler.add_noise(x0, eps, torch.full((len(cids),), t, dtype=torch.long))
        out = head(x_t, t, base_cond, label)
        norm = out.norm(dim=1).clamp(min=1e-8)
        outs = {"conditional": out}
        change = {}
        for name, (c, labels) in swapped.items():
            outs[name] = head(x_t, t, c, labels)
            change[name] = float(((outs[name] - out).norm(dim=1) / norm).mean())

        def estimate(o: torch.Tensor) -> torch.Tensor:
            """The scheduler's own x0 estimate for its prediction type (clipping to [-1, 1] keeps the sign)."""
            return scheduler.step(o.view_as(x_t), t, x_t, generator=g).pred_original_sample.flatten(1)

        iou = {}
        for name, o in outs.items():
            est = estimate(o)
            iou[name] = {
                "all": mask_iou(est, target),
                "novel": mask_iou(est[is_novel], target[is_novel]) if is_novel.any() else None,
                "crowded": mask_iou(est[crowded], target[crowded]) if crowded.any() else None,
            }
        guided = {}
        for own, (cond_out, null_out) in {
            "own supports": (out, outs[SWAPS[0]]),
            "other class's supports": (outs[SWAPS[2]], outs[SWAPS[3]]),
        }.items():
            guided[own] = {}
            for w in weights:
                # guided_eps's combination, applied to the head's outputs
                guided[own][f"{w:g}"] = mask_iou(estimate(w * cond_out + (1.0 - w) * null_out), target)
        result[str(t)] = {"change": change, "x0_iou": iou, "guided_x0_iou": guided}
    return result


def main() -> None:
    """Run the sweep and the sensitivity probe; print both tables and the summary line; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/maskdiff-toy.yaml")
    parser.add_argument("--out-dir", default="runs", help="run.out_dir of the trained stages")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 5.0], help="guidance weights")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds per weight (1..10)")
    parser.add_argument("--images", type=int, help="first N eval images of the sweep (default: all; 1..10000)")
    parser.add_argument("--probe-images", type=int, default=50, help="eval images of the probe (1..10000)")
    parser.add_argument("--t", type=int, nargs="+", default=[900, 700, 500], help="probe timesteps (0..999)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's noise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/out/maskdiff_guidance.json")
    args = parser.parse_args()
    if not 1 <= args.seeds <= 10 or not 1 <= args.probe_images <= 10_000:
        parser.error(f"--seeds must be in 1..10, --probe-images in 1..10000; got {args.seeds}, {args.probe_images}")
    if args.images is not None and not 1 <= args.images <= 10_000:
        parser.error(f"--images must be in 1..10000, got {args.images}")
    if any(not 0 <= t <= 999 for t in args.t) or any(not 0 <= w <= 20 for w in args.w):
        parser.error(f"--t must be in 0..999 and --w in [0, 20]; got {args.t}, {args.w}")
    if 1.0 not in args.w or 5.0 not in args.w:
        parser.error(f"--w must include 1 and 5 (the summary line's ratio), got {args.w}")
    torch.set_num_threads(args.threads)
    config = load_maskdiff_config(args.config, {"run.out_dir": args.out_dir, "eval.max_images": args.images})
    started = time.perf_counter()
    probe = sensitivity(config, args.probe_images, args.t, args.seed, args.w)
    rows = sweep(config, args.w, args.seeds)

    h = config.head
    sampler = f"DDIM {h.ddim_steps}" if h.sampler == "ddim" else "ancestral 1000"
    print(f"stage {config.finetune_dir()}, {sampler}, {args.seeds} sampling seed(s), segm AP (%)")
    print(f"{'w':>4s} {'novel':>14s} {'base':>14s}")
    for r in rows:
        print(
            f"{r['w']:4g} {r['novel_ap']:8.2f} ± {r['novel_ap_std']:.2f} {r['base_ap']:8.2f} ± {r['base_ap_std']:.2f}"
        )
    print(
        f"probe: {probe['instances']} ground-truth instances ({probe['novel_instances']} novel, "
        f"{probe['crowded_instances']} in crowded boxes: > {CROWDED:.0%} other classes), one head forward at "
        "x_t = add_noise(x0, eps, t)"
    )
    head_t = "".join(f"{'t = ' + str(t):>20s}" for t in args.t)
    print(f"{'output change ||out - out_c|| / ||out_c||':44s}{head_t}")
    for name in SWAPS:
        print(f"  {name:42s}" + "".join(f"{probe[str(t)]['change'][name]:20.3f}" for t in args.t))
    print(f"{'x0 mask IoU: all (novel) [crowded boxes]':44s}{head_t}")
    for name in probe[str(args.t[0])]["x0_iou"]:
        cells = []
        for t in args.t:
            r = probe[str(t)]["x0_iou"][name]
            novel = f" ({r['novel']:.2f})" if r["novel"] is not None else ""
            crowd = f" [{r['crowded']:.2f}]" if r["crowded"] is not None else ""
            cells.append(f"{r['all']:.2f}{novel}{crowd}")
        print(f"  {name:42s}" + "".join(f"{c:>20s}" for c in cells))
    print(f"{'x0 mask IoU of the guided output, all':44s}{head_t}")
    for own in probe[str(args.t[0])]["guided_x0_iou"]:
        for w in args.w:
            label = f"{own}, w = {w:g}"
            print(f"  {label:42s}" + "".join(f"{probe[str(t)]['guided_x0_iou'][own][f'{w:g}']:20.3f}" for t in args.t))
    by_w = {r["w"]: r for r in rows}
    # COCO's -1: no novel ground truth in the images scored (a small --images); no ratio then
    unguided = by_w[1.0]["novel_ap"]
    ratio = by_w[5.0]["novel_ap"] / unguided if unguided > 0 else None
    shown = "n/a" if ratio is None else f"{ratio:.3f}"
    t_mid = str(args.t[len(args.t) // 2])
    share = probe[t_mid]["change"][SWAPS[0]] / max(probe[t_mid]["change"][SWAPS[4]], 1e-9)
    write_json(
        args.out,
        {
            "config": args.config,
            "stage": config.finetune_dir(),
            "sampler": sampler,
            "seeds": args.seeds,
            "sweep": rows,
            "sensitivity": probe,
            "ratio_w5_w1_novel": ratio,
            "class_over_crop_sensitivity": share,
            "threads": args.threads,
            "elapsed_s": time.perf_counter() - started,
        },
    )
    print(
        f"maskdiff_guidance: w=5/w=1 novel segm AP = {shown}; class/crop output sensitivity at t = {t_mid} = "
        f"{share:.3f}"
    )


if __name__ == "__main__":
    main()
