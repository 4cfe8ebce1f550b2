"""Content of a run's Prefect UI artifacts (a per-class table, a contact sheet of thumbnails) and its PNG sheet."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskforge.storage.fs import exists, join, read_bytes, resolve
from maskforge.storage.preview import class_colours, overlay
from maskforge.storage.reader import RunReader
from maskforge.tasks.charts import grid, histogram_panel, png_bytes

#: The UI refuses events above about 6 MB; the contact sheet stops adding pages at this many bytes.
SHEET_BUDGET = 1_500_000
#: The artifacts every generation run publishes (keys KIND-RUNNAME).
ARTIFACT_KINDS = ("samples", "contact-sheet", "rejected", "scores", "manifest")
#: PNG contact sheet layout: header band for source names, gap between cells, label font size (pixels).
SHEET_HEADER, SHEET_GAP, SHEET_FONT = 22, 4, 13
#: Bounds of the PNG contact sheet: cell side and samples per source, and the whole sheet (64 Mpx is 192 MB of RGB).
MAX_SHEET_SIDE, MAX_SHEET_PER_SOURCE, MAX_SHEET_PIXELS = 512, 16, 64_000_000


def artifact_key(run_url: str, kind: str) -> str:
    """Return a Prefect artifact key (lower-case letters, digits, '-') for a run folder and an artifact kind."""
    name = re.sub(r"[^a-z0-9-]+", "-", Path(run_url.rstrip("/")).name.lower()).strip("-")
    return f"{kind}-{name}"


def class_rows(reader: RunReader) -> list[dict]:
    """Return one row per class: samples per source, per mask method, mean scores and the class's shards."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in reader.manifest.to_pylist():
        grouped[row["class_name"]].append(row)
    sources = sorted({r["source"] for rows in grouped.values() for r in rows})
    out = []
    for name, rows in sorted(grouped.items()):
        by_source, by_method = Counter(r["source"] for r in rows), Counter(r["mask_method"] for r in rows)
        scores = defaultdict(list)
        for r in rows:
            for key, value in r["scores"]:
                scores[key].append(value)
        row = {"class": name, "samples": len(rows)}
        row.update({f"source {s}": by_source.get(s, 0) for s in sources})
        row["mask methods"] = ", ".join(f"{m} {n}" for m, n in sorted(by_method.items()))
        row.update({f"mean {k}": round(float(np.mean(v)), 4) for k, v in sorted(scores.items())})
        row["shards"] = ", ".join(sorted({r["shard"] for r in rows}))
        out.append(row)
    return out


def thumbnail(image: np.ndarray, label: np.ndarray, class_id: int, side: int = 96) -> bytes:
    """Return a JPEG thumbnail: the image with the class's pixels tinted in its preview colour."""
    colour = np.array(class_colours((class_id,))[class_id], dtype=np.float32)
    tinted = image.astype(np.float32)
    mask = label == class_id
    tinted[mask] = 0.55 * tinted[mask] + 0.45 * colour
    thumb = Image.fromarray(tinted.round().astype(np.uint8))
    thumb.thumbnail((side, side))
    return _jpeg(np.asarray(thumb), quality=80)


def sheet_picks(reader: RunReader, per_source: int) -> dict[tuple[str, str], list[dict]]:
    """Return {(class name, source): the first `per_source` manifest rows}, sorted by class then source."""
    picks: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in reader.manifest.to_pylist():
        if len(picks[(row["class_name"], row["source"])]) < per_source:
            picks[(row["class_name"], row["source"])].append(row)
    return dict(sorted(picks.items()))


def _sheet_cell(reader: RunReader, row: dict, side: int) -> Image.Image:
    """Return one sample as a side x side cell: the row's class tinted and outlined, upscaled to fit."""
    sample = reader.get(row["key"])
    class_id = row["class_id"]
    scale = max(1, math.ceil(side / max(sample.label.shape)))
    picture = Image.fromarray(overlay(sample.image, sample.label, class_colours((class_id,)), scale))
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (side, side), (255, 255, 255))
    cell.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    return cell


def contact_sheet_image(
    reader: RunReader, per_source: int = 2, side: int = 128, classes: list[str] | None = None
) -> np.ndarray:
    """Return the contact sheet as one RGB array: a row per class (named on the left), `per_source` columns per
    source (named above), each sample with its class's mask tinted and outlined; `classes` picks some rows.

    Size: width = label column + sources * per_source * (side + GAP), height = HEADER + classes * (side + GAP).
    """
    if not 16 <= side <= MAX_SHEET_SIDE or not 1 <= per_source <= MAX_SHEET_PER_SOURCE:
        raise ValueError(
            f"contact sheet: side {side} must be 16..{MAX_SHEET_SIDE}, "
            f"per_source {per_source} 1..{MAX_SHEET_PER_SOURCE}"
        )
    return _sheet_of(reader, _only(sheet_picks(reader, per_source), classes), per_source, side)


def _only(picks: dict[tuple[str, str], list[dict]], classes: list[str] | None) -> dict[tuple[str, str], list[dict]]:
    """Keep the picks of the given classes (all of them for None)."""
    wanted = None if classes is None else set(classes)
    return {key: rows for key, rows in picks.items() if wanted is None or key[0] in wanted}


def _sheet_of(reader: RunReader, picks: dict[tuple[str, str], list[dict]], per_source: int, side: int) -> np.ndarray:
    """Draw the contact sheet of some picks (see contact_sheet_image), refusing one over MAX_SHEET_PIXELS."""
    classes = sorted({name for name, _ in picks})
    sources = sorted({source for _, source in picks})
    font = ImageFont.load_default(size=SHEET_FONT)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(probe.textlength(name, font=font) for name in classes)) + 2 * SHEET_GAP
    group = per_source * (side + SHEET_GAP)
    width, height = label_width + len(sources) * group, SHEET_HEADER + len(classes) * (side + SHEET_GAP)
    if width * height > MAX_SHEET_PIXELS:
        raise ValueError(
            f"contact sheet of {len(classes)} classes x {len(sources)} sources x {per_source} at {side} px would be "
            f"{width}x{height} px, over {MAX_SHEET_PIXELS // 1_000_000} Mpx; use a smaller --side or --per-source"
        )
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for column, source in enumerate(sources):
        draw.text((label_width + column * group, SHEET_GAP), source, fill=(0, 0, 0), font=font)
    for line, name in enumerate(classes):
        top = SHEET_HEADER + line * (side + SHEET_GAP)
        draw.text((SHEET_GAP, top + (side - SHEET_FONT) // 2), name, fill=(0, 0, 0), font=font)
        for column, source in enumerate(sources):
            for slot, row in enumerate(picks.get((name, source), [])):
                out.paste(
                    _sheet_cell(reader, row, side), (label_width + column * group + slot * (side + SHEET_GAP), top)
                )
    return np.asarray(out)


def _jpeg(array: np.ndarray, quality: int = 85) -> bytes:
    """Encode an RGB array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def links(run_url: str, kinds: tuple[str, ...] = ARTIFACT_KINDS) -> str:
    """Return the markdown line naming the run folder, its manifest and the keys of the run's other artifacts."""
    keys = ", ".join(f"`{artifact_key(run_url, kind)}`" for kind in kinds)
    return f"Run folder `{run_url}`, manifest `{run_url.rstrip('/')}/manifest.parquet`; artifacts of this run: {keys}."


def contact_sheet(
    reader: RunReader, per_source: int = 2, side: int = 96, budget: int = SHEET_BUDGET, classes_per_page: int = 8
) -> str:
    """Return markdown with the run's contact sheet as labelled grid images (`contact_sheet_image`), one JPEG per page
    of `classes_per_page` classes, embedded as data URIs.

    The cells shrink (down to 32 px) until the pages fit `budget` bytes (the server refuses large events); pages that
    still do not fit are left out, and the sheet says how many.
    """
    picks = sheet_picks(reader, per_source)  # the manifest is read once, not per page and size
    names = sorted({name for name, _ in picks})
    pages = [names[i : i + classes_per_page] for i in range(0, len(names), classes_per_page)]
    header = ["# Contact sheet", "", links(reader.run_url), ""]
    for cell in (side, side * 3 // 4, side // 2, 32):
        images = [_jpeg(_sheet_of(reader, _only(picks, page), per_source, max(cell, 32))) for page in pages]
        if sum(len(i) * 4 // 3 for i in images) <= budget or cell <= 32:
            break
    lines, size, left_out = list(header), 0, 0
    for page, data in zip(pages, images):
        encoded = base64.b64encode(data).decode()
        if size + len(encoded) > budget:
            left_out += 1
            continue
        size += len(encoded)
        title = ", ".join(page)  # the class names as text too: the UI's page search finds them
        lines += [f"## {title}", "", f"![contact sheet: {title}](data:image/jpeg;base64,{encoded})", ""]
    if left_out:
        lines.append(f"({left_out} page(s) left out to keep the artifact under {budget} bytes)")
    return "\n".join(lines) + "\n"


#: Folder of a run holding, per class, what refinement rejected (json with scores and thumbnails; not in the shards).
REJECTED_DIR = "rejected"
#: Thumbnails kept per class in a rejected record (the others are listed with their scores only).
MAX_REJECTED_THUMBS = 48


def rejected_url(run_url: str, class_id: int) -> str:
    """Return the rejected-samples record of one class in a run: RUN/rejected/cNNNN.json."""
    return join(run_url, REJECTED_DIR, f"c{class_id:04d}.json")


def rejected_record(class_id: int, class_name: str, dropped: list, reasons: dict[str, str], cfg) -> dict:
    """Return the json record of a class's rejected samples: key, reason, source, scores, a JPEG thumbnail (base64,
    the refined mask tinted) for the first MAX_REJECTED_THUMBS, and the refinement cuts."""
    samples = []
    for n, sample in enumerate(dropped):
        entry = {
            "key": sample.key,
            "reason": reasons.get(sample.key, "unknown"),
            "source": sample.meta["source"],
            "scores": {k: round(float(v), 4) for k, v in sample.meta["scores"].items()},
        }
        if n < MAX_REJECTED_THUMBS:
            entry["thumbnail"] = base64.b64encode(thumbnail(sample.image, sample.label, class_id, 64)).decode()
        samples.append(entry)
    return {"class_id": class_id, "class_name": class_name, "alpha": cfg.alpha, "beta": cfg.beta, "samples": samples}


def read_rejected(run_url: str) -> list[dict]:
    """Return the run's rejected-samples records, in class order (none for a run without refinement)."""
    folder = join(run_url, REJECTED_DIR)
    if not exists(folder):
        return []
    fs, path = resolve(folder)
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [json.loads(read_bytes(join(folder, name))) for name in names if name.endswith(".json")]


def rejected_markdown(run_url: str, records: list[dict] | None = None, budget: int = SHEET_BUDGET) -> str:
    """Return markdown listing each class's rejected samples: thumbnail, key, reason and scores, within `budget`
    (`records`: the run's read_rejected, read here when not given)."""
    lines, size, left_out = ["# Rejected samples", "", links(run_url), ""], 0, 0
    records = read_rejected(run_url) if records is None else records
    if not records:
        lines.append("No refinement ran, or it rejected nothing.")
    for record in records:
        reasons = Counter(s["reason"] for s in record["samples"])
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
        lines += [f"## {record['class_name']}: {counts} (alpha {record['alpha']}, beta {record['beta']})", ""]
        if record["samples"]:
            lines += ["| sample | key | reason | scores |", "|---|---|---|---|"]
        for entry in record["samples"]:
            image = ""
            if "thumbnail" in entry and size + len(entry["thumbnail"]) <= budget:
                image = f"![{entry['key']}](data:image/jpeg;base64,{entry['thumbnail']})"
                size += len(entry["thumbnail"])
            elif "thumbnail" in entry:
                left_out += 1
            scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(entry["scores"].items()))
            lines.append(f"| {image} | {entry['key']} | {entry['reason']} | {scores} |")
        lines.append("")
    if left_out:
        lines.append(f"({left_out} thumbnails left out to keep the artifact under {budget} bytes)")
    return "\n".join(lines) + "\n"


#: Scores drawn per class, each with its cut: (score name, refinement field of the cut).
HISTOGRAM_SCORES = (("consensus_iou", "alpha"), ("ood_iou", "beta"), ("xattn_fg_fraction", None))


def score_histograms(reader: RunReader, records: list[dict]) -> bytes | None:
    """Return a PNG of per-class histograms of the diffusion samples' scores (kept blue, rejected red) with the
    refinement's cuts; None when no sample carries any of the scores."""
    kept: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in reader.manifest.to_pylist():
        for name, value in row["scores"]:
            kept[row["class_name"]][name].append(float(value))
    rejected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cuts: dict[str, float] = {}
    for record in records:
        cuts = {"alpha": record["alpha"], "beta": record["beta"]}
        for entry in record["samples"]:
            for name, value in entry["scores"].items():
                rejected[record["class_name"]][name].append(float(value))
    rows = []
    for name in sorted(set(kept) | set(rejected)):
        panels = [
            histogram_panel(score, kept[name][score], rejected[name][score], cuts.get(cut) if cut else None)
            for score, cut in HISTOGRAM_SCORES
        ]
        if any(kept[name][score] or rejected[name][score] for score, _ in HISTOGRAM_SCORES):
            rows.append((name, panels))
    return png_bytes(grid(rows)) if rows else None


def scores_markdown(reader: RunReader, records: list[dict]) -> str:
    """Return markdown with the score histograms as an embedded PNG (or a line saying there are none)."""
    png = score_histograms(reader, records)
    lines = ["# Scores of the diffusion samples", "", links(reader.run_url), ""]
    if png is None:
        lines.append("No sample carries a score (a copy-paste-only run).")
    else:
        lines += [
            "Blue: samples kept in the shards; red: samples refinement rejected. Green lines: alpha on consensus_iou "
            "(a coarse mask at or above it is accepted), beta on ood_iou (a text or embedding sample below it is "
            "out of distribution).",
            "",
            f"![score histograms](data:image/png;base64,{base64.b64encode(png).decode()})",
        ]
    return "\n".join(lines) + "\n"
