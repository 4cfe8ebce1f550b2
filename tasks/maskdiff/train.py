"""MaskDiff training stages: TFA detector and mask-diffusion head on base classes, then K-shot fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.instances import Instance
from maskforge.eval.seeds import derive_seed, rng_for
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.maskdiff.detector import (
    DetectorSpec,
    build_detector,
    detector_loss,
    freeze_for_finetune,
    image_tensor,
    instances_to_target,
    labels_for,
    load_detector,
    save_detector,
    surgery_randinit,
    tiny_spec,
)
from maskforge.models.maskdiff.mask_head import (
    MaskHeadSpec,
    build_mask_head,
    condition,
    diffusion_loss,
    load_mask_head,
    make_scheduler,
    mask_targets,
    paper_spec,
    region_crops,
    save_mask_head,
    support_crops,
)
from maskforge.models.maskdiff.mask_head import tiny_spec as tiny_head_spec
from maskforge.models.train_state import TrainState, clear_resume_states
from maskforge.storage.fs import exists, join, read_bytes
from maskforge.storage.marked_folder import COMPLETE
from maskforge.storage.marked_folder import write_marked_folder as write_stage
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.config import MaskdiffConfig
from maskforge.tasks.maskdiff.preflight import check_base_inputs, check_finetune_inputs
from maskforge.tasks.maskdiff.schedules import kshot_lr_schedule
from maskforge.tasks.maskdiff.synthetic import FIELD as SYNTHETIC_FIELD
from maskforge.tasks.maskdiff.synthetic import synthetic_instances
from maskforge.tasks.progress import eta
from maskforge.tasks.synthetic_runs import open_synthetic_run

DETECTOR_FILE = "detector.safetensors"
HEAD_FILE = "mask_head.safetensors"
KSHOT_FILE = "kshot.json"
CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train.json"
#: TFA's (detectron2's) SGD settings.
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4
#: Base-stage learning-rate drops (x0.1 each) at these fractions of the steps (TFA COCO: 85k and 100k of 110k).
DECAY_AT = (0.75, 0.9)
#: detectron2's linear warm-up (1000 iterations from 0.001 x lr), capped at a tenth of the steps for short runs.
WARMUP_ITERS, WARMUP_FACTOR = 1000, 0.001
#: About this many logged (mean) losses per training loop.
LOG_POINTS = 20
#: Decoded dataset records / run samples kept in memory while training.
RECORD_CACHE = 256


class MaskdiffTrainError(ValueError):
    """Training that cannot go on (a non-finite loss): names the stage, step and learning rate."""


def detector_spec(config: MaskdiffConfig, num_classes: int) -> DetectorSpec:
    """Return the detector spec of a config (tiny: the toy world's, with the config's resize sizes), seeded by
    base.seed."""
    d = config.detector
    if d.backbone == "tiny":
        spec = tiny_spec(num_classes, seed=config.base.seed)
        return dataclasses.replace(spec, min_size=d.min_size, max_size=d.max_size)
    return DetectorSpec(d.backbone, num_classes, min_size=d.min_size, max_size=d.max_size, seed=config.base.seed)


def head_spec(config: MaskdiffConfig, num_classes: int) -> MaskHeadSpec:
    """Return the mask-head spec of a config: head.arch's levels, finetune.shots supports, head.size masks,
    head.prediction_type."""
    make = tiny_head_spec if config.head.arch == "tiny" else paper_spec
    spec = make(num_classes, config.finetune.shots)
    return dataclasses.replace(spec, size=config.head.size, prediction_type=config.head.prediction_type)


def detector_lr_factor(steps: int) -> Callable[[int], float]:
    """Return the base stage's LR factor of a step: linear warm-up, then x0.1 at 75 % and x0.01 from 90 %."""
    warmup = min(WARMUP_ITERS, steps // 10)
    marks = [int(f * steps) for f in DECAY_AT]

    def factor(step: int) -> float:
        value = 0.1 ** sum(step >= m for m in marks)
        if step < warmup:
            value *= WARMUP_FACTOR + (1 - WARMUP_FACTOR) * step / warmup
        return value

    return factor


def pick_supports(n: int, position: int, shots: int, rng: np.random.Generator) -> list[int]:
    """Return the pool positions of `shots` supports for the instance at `position` of a class pool of n.

    Other instances are drawn without replacement when there are enough; when fewer, every other one is taken
    (shuffled) and the rest drawn again from them; an instance alone in its pool supports itself (K = 1).
    """
    if n == 1:
        return [position] * shots
    others = n - 1
    if others >= shots:
        draw = rng.choice(others, size=shots, replace=False)
    else:
        draw = np.concatenate([rng.permutation(others), rng.choice(others, size=shots - others)])
    return [int(i) + int(i >= position) for i in draw]


@dataclass(frozen=True)
class InstanceRef:
    """Where a training instance lives: a dataset record's instances[index], or component `index` of a run's
    sample `image` (run >= 0: its position in finetune.synthetic_runs)."""

    class_id: int
    image: str
    index: int
    run: int = -1


class InstanceSource:
    """Images and Instances of InstanceRefs: dataset records and synthetic run samples, decoded through LRU caches."""

    def __init__(
        self,
        dataset: SegDataset,
        readers: list[RunReader] | None = None,
        synthetic: dict[tuple[int, str, int], Instance] | None = None,
    ) -> None:
        """Read dataset refs from `dataset`, synthetic ones from readers[run] with their `synthetic` instances."""
        self.readers = readers or []
        self.synthetic = synthetic or {}
        self._record = lru_cache(maxsize=RECORD_CACHE)(dataset.load)
        self._sample = lru_cache(maxsize=RECORD_CACHE)(lambda run, key: self.readers[run].get(key).image)

    def image(self, ref: InstanceRef) -> np.ndarray:
        """Return the uint8 HxWx3 image the instance is in."""
        return self._sample(ref.run, ref.image) if ref.run >= 0 else self._record(ref.image).image

    def instance(self, ref: InstanceRef) -> Instance:
        """Return the Instance (class, visible pixels) of a ref."""
        if ref.run >= 0:
            return self.synthetic[(ref.run, ref.image, ref.index)]
        return self._record(ref.image).instances[ref.index]


@dataclass(frozen=True)
class Resume:
    """Where a stage keeps its loops' resumable states (models/train_state.py): its folder and run.save_every_s."""

    stage_dir: str
    every_s: float

    def state(self, name: str, steps: int, objects: dict, generators: dict) -> TrainState:
        """The TrainState of the loop `name` (file STAGE_DIR/resume/NAME.pt)."""
        return TrainState(self.stage_dir, name, steps, objects, generators, self.every_s)


def run_steps(
    what: str,
    steps: int,
    step: Callable[[int], float],
    optimiser: torch.optim.Optimizer,
    log: Callable[[str], None],
    state: TrainState | None = None,
    keep_final: bool = False,
) -> tuple[list[float], float]:
    """Run `steps` calls of step(i) (each returns its loss); return (mean loss per log window, seconds).

    With a `state`, the loop first continues from its saved state (a loop saved finished is not run again) and
    saves when due; `keep_final` saves it finished too, for a stage with another loop after this one (MaskDiff's
    detector, then its head): a rerun after the head was cut short keeps the trained detector.
    A non-finite loss stops training with a MaskdiffTrainError naming `what`, the step and the learning rate.
    """
    every = max(1, steps // LOG_POINTS)
    done, kept = state.restore() if state is not None else (0, {})
    losses, window = kept.get("losses", []), kept.get("window", [])
    start = time.perf_counter() - kept.get("seconds", 0.0)
    if done:
        log(f"{what}: resumed at step {done}/{steps} from {state.url}")
    for i in range(done, steps):
        loss = step(i)
        lr = optimiser.param_groups[0]["lr"]
        if not math.isfinite(loss):
            raise MaskdiffTrainError(f"{what}: loss {loss} at step {i + 1}/{steps} (lr {lr:.3g}); lower the lr")
        window.append(loss)
        if (i + 1) % every == 0 or i + 1 == steps:
            losses.append(sum(window) / len(window))
            elapsed = time.perf_counter() - start
            clock = f"({elapsed:.1f} s, {eta(i + 1, steps, elapsed)})"
            log(f"{what} step {i + 1}/{steps}: loss {losses[-1]:.4f} lr {lr:.3g} {clock}")
            window = []
        if state is not None:
            state.maybe_save(i + 1, {"losses": losses, "window": window, "seconds": time.perf_counter() - start})
    if state is not None and keep_final and done < steps:
        state.save(steps, {"losses": losses, "window": window, "seconds": time.perf_counter() - start})
    return losses, time.perf_counter() - start


def train_detector(
    model,
    images: list[list[InstanceRef]],
    class_ids: list[int],
    source: InstanceSource,
    steps: int,
    batch_size: int,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    rng: np.random.Generator,
    device: torch.device,
    log: Callable[[str], None],
    what: str,
    resume: Resume | None = None,
) -> tuple[list[float], float]:
    """SGD on torchvision's detection losses: each step draws batch_size images (each with its target instances).

    With `resume`, the loop continues from its state "detector" and keeps it finished (the head trains next)."""
    labels = labels_for(class_ids)

    def step(_: int) -> float:
        picks = rng.choice(len(images), size=batch_size, replace=batch_size > len(images))
        batch = [images[int(p)] for p in picks]
        tensors = [image_tensor(source.image(refs[0])).to(device) for refs in batch]
        targets = [
            {k: v.to(device) for k, v in instances_to_target([source.instance(r) for r in refs], labels).items()}
            for refs in batch
        ]
        loss = sum(detector_loss(model, tensors, targets).values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        return float(loss.detach())

    state = None
    if resume is not None:
        objects = {"model": model, "optimiser": optimiser, **({"schedule": schedule} if schedule else {})}
        state = resume.state("detector", steps, objects, {"images": rng})
    return run_steps(what, steps, step, optimiser, log, state, keep_final=True)


def head_inputs(
    refs: list[tuple[int, int]],
    pool: dict[int, list[InstanceRef]],
    source: InstanceSource,
    spec: MaskHeadSpec,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Return (x0 masks (N, 1, S, S), conditioning (N, 3 + 3K, S, S), class indices) of (class, pool position)
    pairs: the region crop at each instance's box and `shots` background-removed supports of its class's pool."""
    x0, cond, classes = [], [], []
    for cid, position in refs:
        ref = pool[cid][position]
        image, inst = source.image(ref), source.instance(ref)
        box = torch.tensor([inst.xyxy])
        supports = [pool[cid][i] for i in pick_supports(len(pool[cid]), position, spec.shots, rng)]
        crops = support_crops(
            [source.image(s) for s in supports],
            [source.instance(s).mask for s in supports],
            torch.tensor([source.instance(s).xyxy for s in supports]),
            spec.size,
        )
        x0.append(mask_targets([inst.mask], box, spec.size))
        cond.append(condition(region_crops(image, box, spec.size), crops))
        classes.append(cid - 1)
    return torch.cat(x0), torch.cat(cond), classes


def train_head(
    unet,
    spec: MaskHeadSpec,
    pool: dict[int, list[InstanceRef]],
    source: InstanceSource,
    steps: int,
    batch_size: int,
    optimiser: torch.optim.Optimizer,
    p_uncond: float,
    seed: int,
    device: torch.device,
    log: Callable[[str], None],
    what: str,
    resume: Resume | None = None,
) -> tuple[list[float], float]:
    """Paper Alg. 1 on a class pool: each step draws batch_size instances (uniform over the pool) and their supports.

    With `resume`, the loop continues from its state "head"."""
    items = [(cid, i) for cid in sorted(pool) for i in range(len(pool[cid]))]
    rng = rng_for(what, "instances", seed)
    generator = torch.Generator().manual_seed(derive_seed(what, "diffusion", seed))
    scheduler = make_scheduler("ddpm", spec.prediction_type)
    unet.train()

    def step(_: int) -> float:
        picks = rng.choice(len(items), size=batch_size, replace=batch_size > len(items))
        x0, cond, classes = head_inputs([items[int(p)] for p in picks], pool, source, spec, rng)
        loss = diffusion_loss(
            unet, scheduler, x0.to(device), cond.to(device), classes, spec.null_class, p_uncond, generator
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    state = None
    if resume is not None:
        state = resume.state(
            "head", steps, {"unet": unet, "optimiser": optimiser}, {"instances": rng, "noise": generator}
        )
    return run_steps(what, steps, step, optimiser, log, state)


def by_class(groups: list[list[InstanceRef]]) -> dict[int, list[InstanceRef]]:
    """Return {class id: refs} of image groups, classes sorted, refs in group order."""
    out: dict[int, list[InstanceRef]] = {}
    for refs in groups:
        for ref in refs:
            out.setdefault(ref.class_id, []).append(ref)
    return dict(sorted(out.items()))


def base_images(dataset: SegDataset, split: str, classes: list[int]) -> list[list[InstanceRef]]:
    """Return, per image of `split` (sorted ids) with a non-crowd instance of `classes`, those instances."""
    wanted = set(classes)
    index = dataset.class_index(split)
    out = []
    for image_id in sorted({i for c in classes for i in index.get(c, [])}):
        refs = [
            InstanceRef(inst.class_id, image_id, j)
            for j, inst in enumerate(dataset.load_instances(image_id))
            if inst.class_id in wanted and not inst.iscrowd
        ]
        if refs:
            out.append(refs)
    return out


def _bytes(data: bytes) -> Callable[[str], None]:
    """Return a writer of fixed bytes."""
    return lambda path: Path(path).write_bytes(data)


def _json(obj: object) -> bytes:
    """Return indented JSON bytes."""
    return json.dumps(obj, indent=2).encode()


def _stage_files(config: MaskdiffConfig, report: dict) -> dict[str, Callable[[str], None]]:
    """Return the writers of config.yaml and train.json."""
    return {
        CONFIG_FILE: _bytes(yaml.safe_dump(config.resolved(), sort_keys=False).encode()),
        TRAIN_LOG: _bytes(_json(report)),
    }


def _reuse(out: str, log: Callable[[str], None]) -> dict:
    """Return the report (train.json) of a complete stage folder, marked complete."""
    log(f"already trained: {out}")
    return {**json.loads(read_bytes(join(out, TRAIN_LOG))), "complete": True}


def train_maskdiff_base(config: MaskdiffConfig, log: Callable[[str], None] = print) -> dict:
    """Train the base stage into base_dir(): the TFA detector on the fold's base classes (SGD, step decay), then
    the mask head on base instances (AdamW, classifier-free dropout). A complete folder is reported, not retrained.

    Returns train.json's report plus "complete": True.
    """
    with torch_threads(config.run.threads):
        return _train_base(config, log)


def _train_base(config: MaskdiffConfig, log: Callable[[str], None]) -> dict:
    """The body of train_maskdiff_base."""
    out, b = config.base_dir(), config.base
    if exists(join(out, COMPLETE)):
        return _reuse(out, log)
    dataset, fold = check_base_inputs(config)  # before any network is built: a wrong input fails in seconds
    device = resolve_device(config.run.device)
    base_ids = sorted(fold.base)
    images = base_images(dataset, b.split, base_ids)
    if not images:
        raise ConfigError(
            f"base.split: {dataset.name} split {b.split} has no non-crowd instance of a base class of fold "
            f"{fold.index}; MaskDiff needs instance annotations (toy or coco)"
        )
    pool = by_class(images)
    source = InstanceSource(dataset)
    torch.manual_seed(derive_seed("maskdiff-base", b.seed))  # torchvision's RPN/ROI sampling draws from it
    spec = detector_spec(config, len(base_ids))
    model = build_detector(spec, config.detector.weights).to(device)
    optimiser = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=b.detector_lr,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, detector_lr_factor(b.detector_steps))
    n_instances = sum(len(refs) for refs in images)
    log(f"base detector on {dataset.name} fold {fold.index}: {len(images)} images, {n_instances} base instances")
    rng = rng_for("maskdiff-base-detector", b.seed)
    resume = Resume(out, config.run.save_every_s)
    det_losses, det_seconds = train_detector(
        model, images, base_ids, source, b.detector_steps, b.batch_size, optimiser, schedule, rng, device, log,
        "base detector", resume,
    )  # fmt: skip
    hspec = head_spec(config, len(dataset.classes()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("maskdiff-base-head-init", b.seed))
        unet = build_mask_head(hspec)
    unet = unet.to(device)
    head_optimiser = torch.optim.AdamW(unet.parameters(), lr=b.head_lr)
    head_losses, head_seconds = train_head(
        unet, hspec, pool, source, b.head_steps, b.head_batch_size or b.batch_size, head_optimiser,
        config.head.p_uncond, b.seed, device, log, "base mask head", resume,
    )  # fmt: skip
    report = {
        "stage": "base",
        "stage_dir": out,
        "dataset": dataset.name,
        "fold": fold.index,
        "split": b.split,
        "class_ids": base_ids,
        "head_shots": hspec.shots,
        "detector_losses": det_losses,
        "head_losses": head_losses,
        "detector_steps": b.detector_steps,
        "head_steps": b.head_steps,
        "seconds": round(det_seconds + head_seconds, 2),
        "detector_seconds": round(det_seconds, 2),
        "head_seconds": round(head_seconds, 2),
        "images": len(images),
        "instances": n_instances,
        "instances_per_class": {str(c): len(refs) for c, refs in pool.items()},
    }
    meta = {"stage": "base", "config_hash": config.hash()}
    write_stage(
        out,
        {
            DETECTOR_FILE: lambda p: save_detector(p, model, spec, base_ids, meta),
            HEAD_FILE: lambda p: save_mask_head(p, unet, hspec, meta),
            **_stage_files(config, report),
        },
        meta,
    )
    clear_resume_states(out)  # the folder's rename dropped them locally; an object store keeps keys until removed
    return {**report, "complete": True}


def open_synthetic(
    config: MaskdiffConfig, classes: list[int]
) -> tuple[list[RunReader], dict[tuple[int, str, int], Instance], dict[int, list[InstanceRef]]]:
    """Open finetune.synthetic_runs; return (readers, {(run, key, component): Instance}, {class: refs}).

    A missing or incomplete run, or one of another dataset, toy world or fold, is a ConfigError naming the run
    (tasks/synthetic_runs.py): class ids mean other classes there.
    """
    readers, instances, refs = [], {}, {c: [] for c in classes}
    for run, url in enumerate(config.finetune.synthetic_runs):
        reader = open_synthetic_run(url, SYNTHETIC_FIELD, config.dataset, fold=True)
        readers.append(reader)
        for cid, found in synthetic_instances(reader, url, classes).items():
            for key, j, inst in found:
                instances[(run, key, j)] = inst
                refs[cid].append(InstanceRef(cid, key, j, run))
    return readers, instances, refs


def train_maskdiff_finetune(config: MaskdiffConfig, log: Callable[[str], None] = print) -> dict:
    """Train the K-shot stage into finetune_dir() from the complete base stage: randinit surgery to base + novel
    classes with TFA's cosine classifier, last-layer SGD on the K-shot images (plus synthetic samples), and the
    whole mask head fine-tuned on the K-shot instances. A complete folder is reported, not retrained.

    Returns train.json's report plus "complete": True.
    """
    with torch_threads(config.run.threads):
        return _train_finetune(config, log)


def _train_finetune(config: MaskdiffConfig, log: Callable[[str], None]) -> dict:
    """The body of train_maskdiff_finetune."""
    base_dir, out, f = config.base_dir(), config.finetune_dir(), config.finetune
    if exists(join(out, COMPLETE)):
        return _reuse(out, log)
    dataset, fold, shots = check_finetune_inputs(config)  # before any network loads: a wrong input fails in seconds
    split = config.base.split
    base_ids, novel_ids = sorted(fold.base), sorted(fold.novel)
    all_ids = sorted(base_ids + novel_ids)
    readers, synthetic, synthetic_refs = open_synthetic(config, novel_ids)
    device = resolve_device(config.run.device)
    seed = derive_seed("maskdiff-finetune", config.base.seed, f.data_seed)
    torch.manual_seed(seed)

    groups: dict[str, list[InstanceRef]] = {}
    for cid, chosen in shots.items():
        for s in chosen:
            groups.setdefault(s.image_id, []).append(InstanceRef(cid, s.image_id, s.index))
    images = [groups[i] for i in sorted(groups)]
    samples: dict[tuple[int, str], list[InstanceRef]] = {}
    for refs in synthetic_refs.values():
        for ref in refs:
            samples.setdefault((ref.run, ref.image), []).append(ref)
    images += [samples[k] for k in sorted(samples)]
    pool = {cid: [InstanceRef(cid, s.image_id, s.index) for s in shots[cid]] for cid in all_ids}
    for cid, refs in synthetic_refs.items():
        pool[cid] += refs
    source = InstanceSource(dataset, readers, synthetic)

    model, spec, class_ids, _ = load_detector(join(base_dir, DETECTOR_FILE))
    surgery_randinit(model, class_ids, novel_ids, all_ids, seed=seed, cosine=True)
    spec = dataclasses.replace(spec, num_classes=len(all_ids))
    trainable = freeze_for_finetune(model)
    model = model.to(device)
    optimiser = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=f.detector_lr,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )
    n_synthetic = {str(c): len(r) for c, r in synthetic_refs.items()}
    log(
        f"K-shot detector ({f.shots}-shot, data seed {f.data_seed}): {len(groups)} images, {len(samples)} synthetic "
        f"samples, trainable {trainable}"
    )
    resume = Resume(out, config.run.save_every_s)
    det_losses, det_seconds = train_detector(
        model, images, all_ids, source, f.detector_iters(), f.batch_size, optimiser, kshot_lr_schedule(optimiser, f),
        rng_for("maskdiff-finetune-detector", seed), device, log, "K-shot detector", resume,
    )  # fmt: skip
    unet, hspec, _ = load_mask_head(join(base_dir, HEAD_FILE))
    unet = unet.to(device)
    head_optimiser = torch.optim.AdamW(unet.parameters(), lr=f.head_lr)
    head_losses, head_seconds = train_head(
        unet, hspec, pool, source, f.head_steps, f.head_batch_size or f.batch_size, head_optimiser,
        config.head.p_uncond, seed, device, log, "K-shot mask head", resume,
    )  # fmt: skip
    urls = config.finetune.synthetic_runs
    kshot = {
        "shots": f.shots,
        "data_seed": f.data_seed,
        "classes": {
            str(cid): [{"image_id": s.image_id, "index": s.index} for s in shots[cid]]
            + [{"run": urls[r.run], "key": r.image, "component": r.index} for r in synthetic_refs.get(cid, [])]
            for cid in all_ids
        },
    }
    report = {
        "stage": "finetune",
        "stage_dir": out,
        "base_dir": base_dir,
        "dataset": dataset.name,
        "fold": fold.index,
        "split": split,
        "shots": f.shots,
        "data_seed": f.data_seed,
        "class_ids": all_ids,
        "head_shots": hspec.shots,
        "detector_losses": det_losses,
        "head_losses": head_losses,
        "detector_steps": f.detector_iters(),
        "head_steps": f.head_steps,
        "seconds": round(det_seconds + head_seconds, 2),
        "detector_seconds": round(det_seconds, 2),
        "head_seconds": round(head_seconds, 2),
        "images": len(groups),
        "instances": sum(len(s) for s in shots.values()),
        "synthetic_runs": list(urls),
        "synthetic_samples": len(samples),
        "synthetic_instances": n_synthetic,
        "trainable": trainable,
    }
    meta = {"stage": "finetune", "config_hash": config.hash()}
    write_stage(
        out,
        {
            DETECTOR_FILE: lambda p: save_detector(p, model, spec, all_ids, meta),
            HEAD_FILE: lambda p: save_mask_head(p, unet, hspec, meta),
            KSHOT_FILE: _bytes(_json(kshot)),
            **_stage_files(config, report),
        },
        meta,
    )
    clear_resume_states(out)  # the folder's rename dropped them locally; an object store keeps keys until removed
    return {**report, "complete": True}
