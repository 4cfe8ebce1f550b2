"""Content of a run's Prefect UI artifacts (a per-class table, a contact sheet of thumbnails) and its PNG sheet."""

from __future__ import annotations

import base64
import io
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskforge.storage.preview import class_colours, overlay
from maskforge.storage.reader import RunReader

#: The UI refuses events above about 6 MB; the contact sheet stops adding thumbnails at this many bytes.
SHEET_BUDGET = 1_500_000
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
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


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


def contact_sheet_image(reader: RunReader, per_source: int = 2, side: int = 128) -> np.ndarray:
    """Return the contact sheet as one RGB array: a row per class (named on the left), `per_source` columns per
    source (named above), each sample with its class's mask tinted and outlined.

    Size: width = label column + sources * per_source * (side + GAP), height = HEADER + classes * (side + GAP).
    """
    if not 16 <= side <= MAX_SHEET_SIDE or not 1 <= per_source <= MAX_SHEET_PER_SOURCE:
        raise ValueError(
            f"contact sheet: side {side} must be 16..{MAX_SHEET_SIDE}, "
            f"per_source {per_source} 1..{MAX_SHEET_PER_SOURCE}"
        )
    picks = sheet_picks(reader, per_source)
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


def contact_sheet(reader: RunReader, per_source: int = 2, side: int = 96, budget: int = SHEET_BUDGET) -> str:
    """Return markdown with, per class and source, the first `per_source` samples as tinted JPEG data URIs.

    Thumbnails stop at `budget` bytes of markdown (the server refuses large events); the sheet says how many
    it left out.
    """
    lines = ["# Contact sheet", "", "Each thumbnail: the image, with the class's mask tinted.", ""]
    size, left_out, current = sum(len(x) + 1 for x in lines), 0, None
    for (name, source), rows in sheet_picks(reader, per_source).items():
        if name != current:
            lines += ["", f"## {name}", ""]
            current = name
        cells = []
        for row in rows:
            if size > budget:
                left_out += 1
                continue
            sample = reader.get(row["key"])
            data = base64.b64encode(thumbnail(sample.image, sample.label, row["class_id"], side)).decode()
            cell = f"![{row['key']}](data:image/jpeg;base64,{data})"
            size += len(cell) + 1
            cells.append(cell)
        lines.append(f"**{source}** ({', '.join(r['mask_method'] for r in rows)}): " + " ".join(cells))
    if left_out:
        lines += ["", f"({left_out} thumbnails left out to keep the artifact under {budget} bytes)"]
    return "\n".join(lines) + "\n"
