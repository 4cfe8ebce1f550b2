"""MaskDiff on the toy world, fold 0, K = 5: novel segm AP and its std over sampling seeds, against an FCN head.

Rows (one K-shot detector, so bbox AP is the same in rows a-c; segm AP mean +- std (ddof 0) over --seeds sampling
seeds, base and novel classes, COCO AP through pycocotools on the val split):
  (a) FCN head          Mask R-CNN's class-agnostic FCN mask head (models/maskdiff/fcn_head.py) on the region crop,
                        trained on the base pool's instances (the crops the diffusion head sees), then fine-tuned on
                        the K-shot set, with the diffusion head's steps, batch sizes and learning rates; it is
                        deterministic, so it is evaluated once (std 0) through eval_maskdiff's masker hook
  (b) MaskDiff w = 1    no guidance: the conditional model alone (head.guidance = 1)
  (c) MaskDiff w = 5    classifier-free guidance as in the paper
  (d) (c) + synthetic   a second K-shot stage with finetune.synthetic_runs = [the synthetic run] (base stage reused)
  (e) MaskDiff w = 0    the null class alone (unconditional on the class; supports and crop still condition)
--rows picks which (default fcn,w1,w5,syn: a-d). --variety V renders the toy world with V looks per class
(toy.variety, eval/datasets/toy_variety.py), where K supports need not show every look of a class; the synthetic
row is refused there (the synthetic run renders the default world). The guidance study on it:

    python bench/toy_fsis.py --threads 2 --variety 3 --rows fcn,w0,w1,w5 --out bench/out/toy_fsis_variety3.json
Masks are sampled with DDIM (head.sampler ddim, head.ddim_steps steps of configs/maskdiff-toy.yaml, eta 0), not the
paper's 1000-step ancestral sampler, to keep the bench on 2 CPU cores. The stages are trained through
tasks/maskdiff/train.py (complete stage folders are reused: guidance is not in their hash) and evaluated through
eval_maskdiff. The synthetic run is bench/toy_table2.py's "text, xattn masks" run (32 text-prompted images per novel
class from the shipped toy models, labelled by cross-attention masks), generated into --out-dir if absent.
Prints the table, the std comparison line and, last, `toy_fsis: guided/unguided novel segm AP = R`; writes JSON.

    python bench/toy_fsis.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import with_fields, write_json  # noqa: E402
from toy_table2 import generate_run  # noqa: E402

from maskforge.eval.fsis_protocol import kshot_instances
from maskforge.eval.seeds import derive_seed, rng_for
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.maskdiff.fcn_head import FcnMaskHead, fcn_loss, fcn_masks
from maskforge.models.maskdiff.mask_head import mask_targets, region_crops
from maskforge.storage.yaml_config import read_yaml
from maskforge.tasks.maskdiff.config import MaskdiffConfig, load_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import eval_maskdiff
from maskforge.tasks.maskdiff.preflight import open_fold
from maskforge.tasks.maskdiff.train import base_images, train_maskdiff_base, train_maskdiff_finetune

#: Text-prompted samples per novel class of the generated synthetic run (bench/toy_diffews.py's).
GENERATE = 32
#: The guidance weight of the guided rows (paper: 5).
GUIDED = 5.0
ROWS = ("(a) FCN head", "(b) MaskDiff w = 1", "(c) MaskDiff w = 5", "(d) (c) + synthetic", "(e) MaskDiff w = 0")
#: --rows keys, in ROWS order.
ROW_KEYS = ("fcn", "w1", "w5", "syn", "w0")


def crops_of(dataset, refs: list[tuple[str, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (region crops (N, 3, S, S) in [-1, 1], {0, 1} mask targets (N, 1, S, S)) of (image id, instance
    index) pairs, each cropped at its ground-truth box like the diffusion head's training inputs."""
    regions, targets = [], []
    for image_id, index in refs:
        record = dataset.load(image_id)
        inst = record.instances[index]
        box = torch.tensor([inst.xyxy])
        regions.append(region_crops(record.image, box, size))
        targets.append(mask_targets([inst.mask], box, size) > 0)
    return torch.cat(regions), torch.cat(targets).float()


def fit(fcn, regions, targets, steps: int, batch: int, lr: float, what: str, seed: int, device) -> list[float]:
    """AdamW on fcn_loss: each step draws `batch` crops uniformly; return the mean loss of each tenth of the steps."""
    rng = rng_for("toy-fsis-fcn", what, seed)
    optimiser = torch.optim.AdamW(fcn.parameters(), lr=lr)
    fcn.train()
    losses, window = [], []
    for i in range(steps):
        picks = torch.from_numpy(rng.choice(len(regions), size=batch, replace=batch > len(regions)))
        loss = fcn_loss(fcn, regions[picks].to(device), targets[picks].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window.append(loss.item())
        if (i + 1) % max(1, steps // 10) == 0 or i + 1 == steps:
            losses.append(round(float(np.mean(window)), 4))
            window = []
    return losses


def train_fcn(config: MaskdiffConfig, width: int) -> tuple[FcnMaskHead, dict]:
    """Train the FCN baseline: base.head_steps on the base pool's instance crops (base.head_lr), then
    finetune.head_steps on the K-shot set's (finetune.head_lr), batch sizes of each stage; return (head, report)."""
    start = time.perf_counter()
    b, f, size = config.base, config.finetune, config.head.size
    dataset, fold = open_fold(config, b.split, "base.split")
    device = resolve_device(config.run.device)
    pool = [(ref.image, ref.index) for refs in base_images(dataset, b.split, sorted(fold.base)) for ref in refs]
    shots = kshot_instances(dataset, b.split, sorted(fold.base + fold.novel), f.shots, f.data_seed)
    kshot = [(s.image_id, s.index) for cid in sorted(shots) for s in shots[cid]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("toy-fsis-fcn-init", b.seed))
        fcn = FcnMaskHead(in_channels=3, width=width).to(device)
    base_losses = fit(
        fcn, *crops_of(dataset, pool, size), b.head_steps, b.batch_size, b.head_lr, "base", b.seed, device
    )
    kshot_losses = fit(
        fcn, *crops_of(dataset, kshot, size), f.head_steps, f.batch_size, f.head_lr, "kshot", b.seed, device
    )
    fcn.eval()
    report = {
        "width": width,
        "base_instances": len(pool),
        "kshot_instances": len(kshot),
        "base_losses": base_losses,
        "kshot_losses": kshot_losses,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return fcn, report


def main() -> None:
    """Train (or reuse) both K-shot stages and the FCN baseline, evaluate the four rows, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/maskdiff-toy.yaml")
    parser.add_argument("--out-dir", default="runs", help="Parent folder of the stage folders and the synthetic run.")
    parser.add_argument("--seeds", type=int, default=10, help="Sampling seeds of the MaskDiff rows (paper: 10).")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--set", nargs="*", default=[], help="Extra config overrides KEY=VALUE (YAML values).")
    parser.add_argument("--synthetic", default=None, help="A complete synthetic run; default: generate (or reuse) one.")
    parser.add_argument("--fcn-width", type=int, default=64, help="Channels of the FCN head (Mask R-CNN: 256).")
    parser.add_argument("--variety", type=int, default=1, help="toy.variety: looks per class (1: the default world).")
    parser.add_argument("--rows", default="fcn,w1,w5,syn", help=f"Rows to evaluate, of {','.join(ROW_KEYS)}.")
    parser.add_argument("--out", default="bench/out/toy_fsis.json")
    args = parser.parse_args()
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    if not keys or set(keys) - set(ROW_KEYS):
        parser.error(f"--rows: {args.rows!r}; expected a comma list of {list(ROW_KEYS)}")
    if "syn" in keys and args.variety != 1:
        parser.error("--rows syn needs --variety 1: the synthetic run renders the default toy world")
    start = time.perf_counter()
    quiet = lambda msg: None  # noqa: E731
    overrides = {
        "run.out_dir": args.out_dir,
        "run.threads": args.threads,
        "eval.sampling_seeds": args.seeds,
        "head.sampler": "ddim",
    }
    if args.variety != 1:  # left out at 1, so the default world's config (and its stage folders) stay the same
        overrides["dataset.toy.variety"] = args.variety
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_maskdiff_config(args.config, overrides)
    h, e = config.head, config.eval
    print(
        f"toy fold {config.dataset.fold}, {config.finetune.shots}-shot, data seed {config.finetune.data_seed}; masks "
        f"sampled with DDIM, {h.ddim_steps} steps (eta 0), not the paper's 1000-step ancestral sampler; the head "
        f"predicts {h.prediction_type}",
        flush=True,
    )
    timings = {}
    base = train_maskdiff_base(config, log=quiet)
    timings["base stage (train.json)"] = base["seconds"]
    print(f"base stage: {base['stage_dir']} ({base['seconds']} s of training)", flush=True)
    kshot = train_maskdiff_finetune(config, log=quiet)
    timings["K-shot stage (train.json)"] = kshot["seconds"]
    print(f"K-shot stage: {kshot['stage_dir']} ({kshot['seconds']} s of training)", flush=True)
    run, synthetic, fcn_report = None, None, None
    if "syn" in keys:
        if args.synthetic:
            run = args.synthetic
        else:
            print(f"synthetic run: text, xattn masks ({GENERATE} per class)", flush=True)
            run = generate_run(
                read_yaml("configs/toy-table2.yaml", {"run.out_dir": args.out_dir}), GENERATE, 0, False, print
            )
        synthetic = with_fields(config, finetune={"synthetic_runs": [run]})
        kshot_syn = train_maskdiff_finetune(synthetic, log=quiet)
        timings["K-shot + synthetic stage (train.json)"] = kshot_syn["seconds"]
        print(
            f"K-shot + synthetic stage: {kshot_syn['stage_dir']} ({kshot_syn['seconds']} s of training, "
            f"{kshot_syn['synthetic_instances']} synthetic instances per novel class)",
            flush=True,
        )
    fcn_head = None
    if "fcn" in keys:
        with torch_threads(args.threads):
            fcn, fcn_report = train_fcn(config, args.fcn_width)
        timings["FCN head"] = fcn_report["seconds"]
        print(f"FCN head: base losses {fcn_report['base_losses']}, K-shot {fcn_report['kshot_losses']}", flush=True)

        def fcn_head(regions: torch.Tensor, class_ids: list[int]) -> torch.Tensor:
            """The FCN baseline as eval_maskdiff's masker (class-agnostic: the class ids are not read)."""
            return fcn_masks(fcn, regions)

    every = {
        "fcn": lambda: (with_fields(config, eval={"sampling_seeds": 1}), fcn_head),
        "w1": lambda: (with_fields(config, head={"guidance": 1.0}), None),
        "w5": lambda: (with_fields(config, head={"guidance": GUIDED}), None),
        "syn": lambda: (with_fields(synthetic, head={"guidance": GUIDED}), None),
        "w0": lambda: (with_fields(config, head={"guidance": 0.0}), None),
    }
    runs = {name: every[key]() for name, key in zip(ROWS, ROW_KEYS) if key in keys}
    results = {}
    for name, (cfg, masker) in runs.items():
        print(f"evaluating {name} ...", flush=True)
        results[name] = eval_maskdiff(cfg, log=quiet, masker=masker)
        timings[f"eval {name}"] = results[name]["seconds"]
    seconds = round(time.perf_counter() - start, 1)
    rows = {
        name: {
            "masker": r["masker"],
            "guidance": None if r["masker"] != "sample_masks" else runs[name][0].head.guidance,
            "sampling_seeds": r["sampling_seeds"],
            "detections": r["detections"],
            "segm": r["segm"],
            "bbox": r["bbox"],
            "per_seed_novel_segm_ap": r["per_seed_novel_segm_ap"],
            "finetune_dir": r["finetune_dir"],
        }
        for name, r in results.items()
    }
    write_json(
        args.out,
        {
            "args": vars(args),
            "config": config.resolved(),
            "sampler": {"kind": "ddim", "steps": h.ddim_steps, "eta": 0.0},
            "synthetic_run": run,
            "fcn": fcn_report,
            "rows": rows,
            "timings_s": timings,
            "seconds": seconds,
        },
    )
    images = next(iter(results.values()))["images"]
    print(
        f"\ntoy fold {config.dataset.fold}, {config.finetune.shots}-shot, toy.variety {args.variety}, {e.split} "
        f"({images} images); segm AP mean ± std over sampling seeds (DDIM {h.ddim_steps} steps), in %"
    )
    print(
        f"{'row':22s} {'seeds':>5s} {'novel segm AP':>14s} {'base segm AP':>14s} {'novel bbox':>10s} {'base bbox':>9s}"
    )
    for name, r in results.items():
        s, bb = r["segm"], r["bbox"]
        novel = f"{100 * s['novel']['ap']:.2f} ± {100 * s['novel']['ap_std']:.2f}"
        base_ap = f"{100 * s['base']['ap']:.2f} ± {100 * s['base']['ap_std']:.2f}"
        print(
            f"{name:22s} {r['sampling_seeds']:5d} {novel:>14s} {base_ap:>14s} {100 * bb['novel']['ap']:10.2f} "
            f"{100 * bb['base']['ap']:9.2f}"
        )
    print("time: " + ", ".join(f"{k} {v} s" for k, v in timings.items()) + f"; bench total {seconds} s")
    if ROWS[1] not in results or ROWS[2] not in results:
        return
    guided, unguided = results[ROWS[2]]["segm"]["novel"], results[ROWS[1]]["segm"]["novel"]
    if ROWS[4] in results:
        print(
            f"toy_fsis: novel segm AP w = 0 / 1 / 5 = {100 * results[ROWS[4]]['segm']['novel']['ap']:.2f} / "
            f"{100 * unguided['ap']:.2f} / {100 * guided['ap']:.2f}"
        )
    verdict = "lower" if guided["ap_std"] < unguided["ap_std"] else "not lower"
    print(
        f"novel segm AP std over {args.seeds} seeds: guided (w = {GUIDED:g}) {100 * guided['ap_std']:.2f}, unguided "
        f"(w = 1) {100 * unguided['ap_std']:.2f} -> guided std is {verdict}"
    )
    print(f"toy_fsis: guided/unguided novel segm AP = {guided['ap'] / max(unguided['ap'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
