"""MaskDiff evaluation: detect once, sample every detection's mask per seed, COCO segm and bbox AP via pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskforge.eval.coco_export import coco_json
from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.fsis_protocol import ShotInstance
from maskforge.eval.instances import encode_rle
from maskforge.eval.seeds import derive_seed
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.maskdiff.detector import detect, image_tensor, load_detector
from maskforge.models.maskdiff.mask_head import (
    condition,
    load_mask_head,
    paste_masks,
    region_crops,
    sample_masks,
    support_crops,
)
from maskforge.storage.marked_folder import MarkedFolderError, read_marked_folder
from maskforge.storage.results import FSIS_PROTOCOL, code_version, row_metric, rows_as_dicts
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks import charts
from maskforge.tasks.learner import Record, Shown, table_of
from maskforge.tasks.maskdiff.config import VOC_SPLIT, MaskdiffConfig
from maskforge.tasks.maskdiff.preflight import (
    DETECTOR_FILE,
    HEAD_FILE,
    KSHOT_FILE,
    check_eval_inputs,
    open_fold,
    require_finetune_dir,
)
from maskforge.tasks.progress import eta

#: Model name of MaskDiff rows in the benchmark table (their protocol: storage/results.py:FSIS_PROTOCOL).
MODEL_NAME = "maskdiff"
#: The class subsets every AP is reported for, and the COCO numbers kept of each.
SUBSETS = ("all", "base", "novel")
AP_KEYS = ("ap", "ap50", "ap75")


# --- the K-shot stage folder -------------------------------------------------------------------------------------


def check_finetune_dir(folder: str) -> dict:
    """Return the COMPLETE.json of a K-shot stage folder after checking the sha256 of every file it lists.

    A folder without the marker is a ConfigError naming it (train first); a marker that does not list the detector,
    mask head and kshot.json, or a file whose sha256 differs from the marker's, is a ConfigError naming the file.
    """
    require_finetune_dir(folder)  # local, complete, listing the three files: the pre-flight's checks
    try:
        return read_marked_folder(folder, (DETECTOR_FILE, HEAD_FILE, KSHOT_FILE))
    except MarkedFolderError as err:
        raise ConfigError(str(err)) from None


def read_kshot(path: Path, shots: int, data_seed: int) -> tuple[dict[int, list[ShotInstance]], int]:
    """Return ({class id: dataset ShotInstances in file order}, synthetic entries skipped) of a kshot.json.

    Synthetic entries ({"run", "key", "component"}) are counted and skipped: the training stage lists them after a
    class's K dataset instances as extra training instances, while the supports of evaluation are the K-shot set
    itself (TFA's K dataset instances). The file's shots and data seed must be the config's.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise ConfigError(f"{path}: expected an object with 'shots', 'data_seed' and 'classes'")
    if data.get("shots") != shots or data.get("data_seed") != data_seed:
        raise ConfigError(
            f"{path}: shots {data.get('shots')!r}, data_seed {data.get('data_seed')!r}; the config says "
            f"finetune.shots {shots}, finetune.data_seed {data_seed}"
        )
    out: dict[int, list[ShotInstance]] = {}
    skipped = 0
    for key, entries in data["classes"].items():
        if not str(key).isdigit() or not isinstance(entries, list):
            raise ConfigError(f"{path}: classes[{key!r}] must be a class id holding a list of instances")
        chosen = []
        for j, entry in enumerate(entries):
            if isinstance(entry, dict) and {"run", "key", "component"} <= set(entry):
                skipped += 1
            elif (
                isinstance(entry, dict)
                and isinstance(entry.get("image_id"), str)
                and isinstance(entry.get("index"), int)
            ):
                chosen.append(ShotInstance(entry["image_id"], entry["index"]))
            else:
                raise ConfigError(
                    f"{path}: classes[{key!r}][{j}] is {entry!r:.80}; expected {{image_id, index}} or "
                    "{run, key, component}"
                )
        out[int(key)] = chosen
    return out, skipped


def class_supports(
    dataset: SegDataset, kshot: dict[int, list[ShotInstance]], classes: Sequence[int], shots: int, size: int, what: str
) -> dict[int, torch.Tensor]:
    """Return {class id: (K, 3, size, size) background-removed support crops}: the first K dataset instances of
    each class in kshot.json (named `what` in errors), each the record's instances[index]."""
    out = {}
    for cid in classes:
        entries = kshot.get(int(cid), [])
        if len(entries) < shots:
            raise ConfigError(
                f"{what}: class {cid} has {len(entries)} dataset instance(s), the {shots}-shot head needs {shots} "
                "(synthetic entries are not read at evaluation)"
            )
        images, masks, boxes = [], [], []
        for shot in entries[:shots]:
            record = dataset.load(shot.image_id)
            if not 0 <= shot.index < len(record.instances) or record.instances[shot.index].class_id != cid:
                raise ConfigError(
                    f"{what}: class {cid}: {shot.image_id} has no instance {shot.index} of class {cid} "
                    f"({len(record.instances)} instances); the dataset differs from the one trained on"
                )
            inst = record.instances[shot.index]
            images.append(record.image)
            masks.append(inst.mask)
            boxes.append(inst.xyxy)
        out[int(cid)] = support_crops(images, masks, np.asarray(boxes, dtype=np.float32), size)
    return out


# --- pycocotools ---------------------------------------------------------------------------------------------------


def coco_ground_truth(data: dict) -> COCO:
    """Return a pycocotools COCO object of a COCO instances dict (coco_json's), its chatter silenced."""
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_eval(gt: COCO, results: list[dict], iou_type: str, cat_ids: Sequence[int]) -> COCOeval:
    """Run COCOeval (evaluate, accumulate, summarize; silenced) of results over the classes `cat_ids`.

    Results are coco_results records; a segm evaluation drops their boxes (so a mask's area and box come from the
    mask, as pycocotools does for masks alone) and a bbox one their masks. An empty list (no detection at all)
    becomes a results object without annotations -- loadRes refuses an empty list -- so every GT counts as missed.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"coco_eval: iou_type {iou_type!r}; expected 'segm' or 'bbox'")
    drop = "bbox" if iou_type == "segm" else "segmentation"
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
        else:
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset["images"]),
                "categories": gt.dataset["categories"],
                "annotations": [],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.params.catIds = sorted(int(c) for c in cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def ap_scores(ev: COCOeval) -> dict[str, float]:
    """Return {"ap", "ap50", "ap75"} of a summarized COCOeval (-1 where the classes have no ground truth)."""
    return {key: float(ev.stats[i]) for i, key in enumerate(AP_KEYS)}


def per_class_ap(ev: COCOeval) -> dict[int, float]:
    """Return {class id: AP over IoU 0.5:0.95} of a COCOeval (area all, 100 detections), classes with GT only."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # IoU thresholds x recall x classes
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        values = precision[:, :, k]
        if (values > -1).any():
            out[int(cid)] = float(values[values > -1].mean())
    return out


def coco_results(
    coco_id: int, class_ids: Sequence[int], boxes: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor | None
) -> list[dict]:
    """Return the COCO result records of one image's detections: image_id, category_id, score, bbox [x, y, w, h]
    and, given full-image masks (N, H, W) bool, segmentation as compressed RLE."""
    out = []
    for i, (cid, box, score) in enumerate(zip(class_ids, boxes.tolist(), scores.tolist())):
        x1, y1, x2, y2 = box
        record = {"image_id": int(coco_id), "category_id": int(cid), "score": float(score)}
        record["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        if masks is not None:
            record["segmentation"] = encode_rle(masks[i].numpy())
        out.append(record)
    return out


# --- evaluation ----------------------------------------------------------------------------------------------------


#: A mask predictor that replaces the diffusion sampler: (region crops (N, 3, S, S) in [-1, 1], the N detections'
#: dataset class ids) -> (N, 1, S, S) bool masks on the crops.
Masker = Callable[[torch.Tensor, list[int]], torch.Tensor]


def eval_maskdiff(config: MaskdiffConfig, log: Callable[[str], None] = print, masker: Masker | None = None) -> dict:
    """Evaluate the K-shot stage of a config on eval.split: COCO segm AP per sampling seed and bbox AP, each over
    all, base and novel classes; segm as mean and std (ddof 0) over eval.sampling_seeds.

    Every image is detected once; per batch of eval.batch_images images the masks of all their detections are
    sampled in one sample_masks call per seed (generator seeded by (seed index, batch index)). A `masker` (e.g. a
    baseline mask head) replaces the sampler: it is called once per batch on the detections' region crops and its
    masks stand for every seed; result["masker"] names it ("sample_masks" without one). Runs with run.threads
    torch CPU threads (restored afterwards).
    """
    with torch_threads(config.run.threads):
        return _evaluate(config, log, masker)


def _evaluate(config: MaskdiffConfig, log: Callable[[str], None], masker: Masker | None) -> dict:
    """The body of eval_maskdiff."""
    start = time.perf_counter()
    e, f, h = config.eval, config.finetune, config.head
    dataset, fold = check_eval_inputs(config)  # before any network loads: a wrong input fails in seconds
    # COCO -> VOC: supports are the K-shot set's COCO instances, the scored images VOC's
    shots_data = open_fold(config, config.base.split, "base.split")[0] if e.split == VOC_SPLIT else dataset
    folder = config.finetune_dir()
    check_finetune_dir(folder)  # the files' sha256 now, before they load
    root = Path(folder)
    all_ids = sorted(fold.base + fold.novel)
    device = resolve_device(config.run.device)
    detector, _, det_classes, _ = load_detector(str(root / DETECTOR_FILE))
    if list(det_classes) != all_ids:
        raise ConfigError(
            f"{root / DETECTOR_FILE}: class ids {det_classes}; expected the fold's base + novel classes {all_ids}"
        )
    detector.to(device).eval()
    unet, spec, _ = load_mask_head(root / HEAD_FILE)
    classes = len(dataset.classes())
    if (spec.num_classes, spec.shots, spec.size) != (classes, f.shots, h.size):
        raise ConfigError(
            f"{root / HEAD_FILE}: head for {spec.num_classes} classes, {spec.shots} shots, size {spec.size}; "
            f"expected {classes} classes ({dataset.name}), finetune.shots {f.shots}, head.size {h.size}"
        )
    unet.to(device).eval()
    kshot, skipped = read_kshot(root / KSHOT_FILE, f.shots, f.data_seed)
    supports = class_supports(shots_data, kshot, all_ids, f.shots, spec.size, str(root / KSHOT_FILE))
    if skipped:
        log(f"{KSHOT_FILE}: {skipped} synthetic entries not used as supports (supports: the K dataset instances)")

    ids = sorted(dataset.image_ids(e.split))
    ids = ids[: e.max_images] if e.max_images else ids
    gt = coco_ground_truth(coco_json(dataset, e.split, ids))
    coco_id = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    steps = h.ddim_steps if h.sampler == "ddim" else None
    seeds = e.sampling_seeds
    segm_results: list[list[dict]] = [[] for _ in range(seeds)]
    bbox_results: list[dict] = []
    batches = [ids[i : i + e.batch_images] for i in range(0, len(ids), e.batch_images)]
    detections = 0
    every, loop_start = max(1, -(-len(batches) // 10)), time.perf_counter()  # about ten progress lines
    for b, batch_ids in enumerate(batches):
        records = [dataset.load(i) for i in batch_ids]
        found = detect(detector, [image_tensor(r.image).to(device) for r in records], e.score_threshold)
        per_image = []
        for record, out in zip(records, found):
            boxes, scores = out["boxes"].cpu().float(), out["scores"].cpu().float()
            cids = [det_classes[int(label) - 1] for label in out["labels"].cpu()]
            per_image.append((record, boxes, scores, cids))
            bbox_results += coco_results(coco_id[record.image_id], cids, boxes, scores, None)
        count = sum(len(p[3]) for p in per_image)
        detections += count
        if count and masker is not None:
            regions = torch.cat([region_crops(record.image, boxes, spec.size) for record, boxes, _, _ in per_image])
            masks = _masker_masks(masker, regions.to(device), [c for p in per_image for c in p[3]], spec.size)
            pasted = _paste(per_image, masks, coco_id)
            for s in range(seeds):
                segm_results[s] += pasted
        elif count:
            cond = _conditioning(per_image, supports, spec.size).to(device)
            labels = torch.tensor([c - 1 for p in per_image for c in p[3]], dtype=torch.long, device=device)
            for s in range(seeds):
                generator = torch.Generator().manual_seed(derive_seed("maskdiff-eval", s, b))
                masks = sample_masks(
                    unet,
                    cond,
                    labels,
                    spec.null_class,
                    w=h.guidance,
                    scheduler_kind=h.sampler,
                    steps=steps,
                    generator=generator,
                    prediction_type=spec.prediction_type,
                ).cpu()
                segm_results[s] += _paste(per_image, masks, coco_id)
        if (b + 1) % every == 0 or b + 1 == len(batches):
            images_done, elapsed = min(len(ids), (b + 1) * e.batch_images), time.perf_counter() - loop_start
            log(
                f"batch {b + 1}/{len(batches)}: images {images_done}/{len(ids)}, {detections} detections so far, "
                f"{seeds} sampling seed(s) each ({elapsed:.1f} s, {eta(images_done, len(ids), elapsed)})"
            )

    base, novel = sorted(fold.base), sorted(fold.novel)
    subsets = {"all": all_ids, "base": base, "novel": novel}
    per_seed = []
    class_ap: list[dict[int, float]] = []
    for s in range(seeds):
        seed_scores = {}
        for name, cats in subsets.items():
            ev = coco_eval(gt, segm_results[s], "segm", cats)
            seed_scores[name] = ap_scores(ev)
            if name == "all":
                class_ap.append(per_class_ap(ev))
        per_seed.append(seed_scores)
        log(f"sampling seed {s}: novel segm AP {100 * seed_scores['novel']['ap']:.2f}")
    segm = {
        name: {
            **{k: float(np.mean([p[name][k] for p in per_seed])) for k in AP_KEYS},
            **{f"{k}_std": float(np.std([p[name][k] for p in per_seed])) for k in AP_KEYS},
        }
        for name in SUBSETS
    }
    bbox = {name: ap_scores(coco_eval(gt, bbox_results, "bbox", cats)) for name, cats in subsets.items()}
    class_keys = sorted({c for per in class_ap for c in per})
    return {
        "finetune_dir": folder,
        "dataset": dataset.name,
        "fold": fold.index,
        "split": e.split,
        "class_split": config.split,
        "kshot_source": config.kshot_source(),
        "shots": f.shots,
        "data_seed": f.data_seed,
        "images": len(ids),
        "detections": detections,
        "sampling_seeds": seeds,
        "segm": segm,
        "bbox": bbox,
        "per_seed_segm": per_seed,
        "per_seed_novel_segm_ap": [p["novel"]["ap"] for p in per_seed],
        "per_class_segm_ap": {str(c): float(np.mean([p[c] for p in class_ap if c in p])) for c in class_keys},
        "synthetic_runs": list(f.synthetic_runs),
        "synthetic_supports_skipped": skipped,
        "masker": "sample_masks" if masker is None else getattr(masker, "__name__", type(masker).__name__),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _masker_masks(masker: Masker, regions: torch.Tensor, class_ids: list[int], size: int) -> torch.Tensor:
    """Return a masker's masks of N region crops on the CPU, checked to be (N, 1, size, size) bool."""
    masks = masker(regions, class_ids)
    want = (regions.shape[0], 1, size, size)
    if not torch.is_tensor(masks) or masks.dtype != torch.bool or tuple(masks.shape) != want:
        got = f"{masks.dtype} {tuple(masks.shape)}" if torch.is_tensor(masks) else type(masks).__name__
        raise ConfigError(f"masker: expected a bool tensor of shape {want} (one mask per detection), got {got}")
    return masks.cpu()


def _conditioning(per_image: list, supports: dict[int, torch.Tensor], size: int) -> torch.Tensor:
    """Return the (N, 3 + 3K, S, S) conditioning of a batch's detections in image, then detection order: each
    region crop followed by its class's support crops."""
    regions = torch.cat([region_crops(record.image, boxes, size) for record, boxes, _, _ in per_image])
    cids = torch.tensor([c for p in per_image for c in p[3]])
    first = next(iter(supports.values()))
    cond = torch.empty(len(cids), 3 + first.shape[0] * 3, size, size)
    for cid in cids.unique().tolist():
        where = cids == cid
        cond[where] = condition(regions[where], supports[cid])
    return cond


def _paste(per_image: list, masks: torch.Tensor, coco_id: dict[str, int]) -> list[dict]:
    """Return the segm result records of a batch: each sampled crop pasted into its box in the full image."""
    out, at = [], 0
    for record, boxes, scores, cids in per_image:
        n = len(cids)
        if n:
            full = paste_masks(masks[at : at + n], boxes, record.image.shape[:2])
            out += coco_results(coco_id[record.image_id], cids, boxes, scores, full)
        at += n
    return out


# --- benchmark table and artifacts ---------------------------------------------------------------------------------


def benchmark_rows(config: MaskdiffConfig, result: dict) -> list[dict]:
    """Return the benchmark-table row of an evaluation (protocol fsis-coco): metrics segm_{ap,ap50,ap75}_{subset}
    with their _std over sampling seeds and bbox_{ap,ap50,ap75}_{subset}; class_iou holds the per-class segm AP
    (mean over seeds; the protocol column says what the map holds), evaluated = images, runs = sampling seeds."""
    metrics = {}
    for name in SUBSETS:
        for k in AP_KEYS:
            metrics[f"segm_{k}_{name}"] = float(result["segm"][name][k])
            metrics[f"segm_{k}_{name}_std"] = float(result["segm"][name][f"{k}_std"])
            metrics[f"bbox_{k}_{name}"] = float(result["bbox"][name][k])
    synthetic = list(result["synthetic_runs"])
    return [
        {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": MODEL_NAME,
            "backbone": config.detector.backbone,
            "checkpoint": result["finetune_dir"],
            "dataset": result["dataset"],
            "fold": result["fold"],
            "split": result["split"],
            "shots": result["shots"],
            "protocol": FSIS_PROTOCOL,
            "setting": benchmark_setting(result),
            "synthetic_source": ",".join(synthetic) or "none",
            "synthetic_per_class": 0,
            "evaluated": result["images"],
            "runs": result["sampling_seeds"],
            "seed": result["data_seed"],
            "metrics": metrics,
            "class_iou": {k: float(v) for k, v in result["per_class_segm_ap"].items()},
            "config_hash": config.hash(),
            "code_version": code_version(),
        }
    ]


def benchmark_setting(result: dict) -> str:
    """Return a row's setting: "K-shot" (+synthetic) on COCO-20i folds and the toy world, as before; on TFA's split
    "tfa K-shot" plus where the K-shot set came from, e.g. "tfa K-shot (tfa-files)", so every row says which
    benchmark it is on (its split column says minival or voc2012-val)."""
    setting = "K-shot+synthetic" if result["synthetic_runs"] else "K-shot"
    if result.get("class_split", "coco20i") == "tfa":
        setting = f"tfa {setting} ({result['kshot_source']})"
    return setting


def _percent(value: float) -> str:
    """Return an AP in % with one decimal, or "n/a" for COCO's -1 (no ground truth of those classes)."""
    return "n/a" if value < 0 else f"{100 * value:.1f}"


def summary_table(result: dict) -> list[dict]:
    """Return the table-artifact rows of an evaluation, one per class subset (all, base, novel): segm AP ± std over
    sampling seeds, AP50, AP75, and bbox AP, AP50, AP75, in %."""
    rows = []
    for name in SUBSETS:
        s, b = result["segm"][name], result["bbox"][name]
        ap = f"{_percent(s['ap'])} ± {100 * s['ap_std']:.1f}" if s["ap"] >= 0 else "n/a"
        rows.append(
            {
                "split": result["split"],
                "classes": name,
                "segm AP": ap,
                "segm AP50": _percent(s["ap50"]),
                "segm AP75": _percent(s["ap75"]),
                "bbox AP": _percent(b["ap"]),
                "bbox AP50": _percent(b["ap50"]),
                "bbox AP75": _percent(b["ap75"]),
            }
        )
    return rows


def record(config: MaskdiffConfig, result: dict) -> Record:
    """What an evaluation appends and publishes (the learner protocol's record): its row, the summary table artifact
    (one per data seed) and the trend artifact."""
    key = f"maskdiff-{result['dataset']}-f{result['fold']}-{result['shots']}shot"
    return Record(
        rows=benchmark_rows(config, result),
        table_key=f"{key}-s{result['data_seed']}",
        table=summary_table(result),
        about=f"MaskDiff COCO AP (%, segm mean ± std over {result['sampling_seeds']} samplings)",
        trend_key=f"{key}-trend",
        trend=trend_markdown,
    )


def log_line(result: dict) -> str:
    """The line the evaluation flow logs: novel segm AP ± std over samplings, in %."""
    novel = result["segm"]["novel"]
    return f"novel segm AP {100 * novel['ap']:.2f} ± {100 * novel['ap_std']:.2f} ({result['sampling_seeds']} samplings)"


def show(result: dict) -> Shown:
    """What `maskforge maskdiff eval` prints: segm and bbox AP per class subset, titled with the benchmark it is on
    (TFA's split names its K-shot source), then where the row went."""
    where = f"fold {result['fold']}"
    if result.get("class_split") == "tfa":
        where = f"TFA's split ({result['split']}, K-shot set: {result['kshot_source']})"
    title = (
        f"MaskDiff on {result['dataset']} {where}, {result['shots']}-shot (data seed "
        f"{result['data_seed']}): {result['images']} images, {result['sampling_seeds']} samplings (%)"
    )
    return table_of(title, summary_table(result), f"benchmark rows: {result['table_file']}")


def trend_markdown(table, dataset: str, fold: int, shots: int, last: int = 20) -> str:
    """Return markdown of the MaskDiff rows of one (dataset, fold, shots) over time per setting: novel segm AP chart
    and tables; rows of other models or protocols in the table are left out."""
    rows = [
        r
        for r in rows_as_dicts(table)
        if r["protocol"] == FSIS_PROTOCOL
        and r["model"] == MODEL_NAME
        and (r["dataset"], r["fold"], r["shots"]) == (dataset, fold, shots)
    ]

    def cell(metric: str) -> Callable[[dict], str]:
        return lambda r: _percent(row_metric(r, metric))

    columns = [
        ("checkpoint", lambda r: r["checkpoint"].rstrip("/").rsplit("/", 1)[-1]),
        ("data seed", lambda r: str(r["seed"])),
        ("sampling seeds", lambda r: str(r["runs"])),
        ("novel segm AP", cell("segm_ap_novel")),
        ("± std", cell("segm_ap_novel_std")),
        ("base segm AP", cell("segm_ap_base")),
        ("novel bbox AP", cell("bbox_ap_novel")),
    ]
    scope = f"{dataset} fold {fold}, {shots}-shot"
    return charts.trend_markdown(rows, "MaskDiff", scope, "segm_ap_novel", "novel segm AP", columns, last)
