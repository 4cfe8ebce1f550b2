"""Small charts drawn with Pillow for the Prefect UI: score histograms with their cuts, and metric trends over time."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

from maskforge.storage.catalogue import rounds_label
from maskforge.storage.results import row_metric

#: Kept samples, rejected samples, cut lines, axes (RGB).
KEPT, REJECTED, CUT, AXIS = (60, 110, 200), (215, 70, 60), (20, 150, 60), (90, 90, 90)
#: Line colours of trend series, in turn.
SERIES = ((60, 110, 200), (215, 120, 40), (40, 160, 90), (150, 80, 180), (200, 60, 120), (90, 90, 90))
FONT_SIZE = 12


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def histogram_panel(
    title: str, kept: list[float], rejected: list[float], cut: float | None, bins: int = 10, size=(220, 120)
) -> Image.Image:
    """One histogram over [0, 1]: kept values (blue), rejected ones (red) stacked on top, the cut as a green line."""
    width, height = size
    panel = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    font = _font()
    left, top, bottom = 8, 18, height - 16
    plot_w = width - 2 * left
    counts = [[0, 0] for _ in range(bins)]
    for kind, values in ((0, kept), (1, rejected)):
        for v in values:
            counts[min(bins - 1, max(0, int(v * bins)))][kind] += 1
    peak = max([k + r for k, r in counts] + [1])
    for i, (k, r) in enumerate(counts):
        x0, x1 = left + i * plot_w / bins + 1, left + (i + 1) * plot_w / bins - 1
        y_k = bottom - (bottom - top) * k / peak
        y_r = y_k - (bottom - top) * r / peak
        if k:
            draw.rectangle([x0, y_k, x1, bottom], fill=KEPT)
        if r:
            draw.rectangle([x0, y_r, x1, y_k], fill=REJECTED)
    draw.line([left, bottom, width - left, bottom], fill=AXIS)
    if cut is not None:
        x = left + cut * plot_w
        draw.line([x, top - 4, x, bottom], fill=CUT, width=2)
    draw.text((left, 2), f"{title} (n={len(kept) + len(rejected)}, max {peak})", fill=(0, 0, 0), font=font)
    draw.text((left, bottom + 2), "0", fill=AXIS, font=font)
    draw.text((width - left - 6, bottom + 2), "1", fill=AXIS, font=font)
    return panel


def grid(rows: list[tuple[str, list[Image.Image]]], label_width: int = 120) -> Image.Image:
    """Stack rows of equally sized panels, each row named on the left."""
    panel_w, panel_h = rows[0][1][0].size
    columns = max(len(panels) for _, panels in rows)
    out = Image.new("RGB", (label_width + columns * panel_w, len(rows) * panel_h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for r, (name, panels) in enumerate(rows):
        draw.text((4, r * panel_h + panel_h // 2 - FONT_SIZE // 2), name, fill=(0, 0, 0), font=_font())
        for c, panel in enumerate(panels):
            out.paste(panel, (label_width + c * panel_w, r * panel_h))
    return out


def line_chart(series: dict[str, list[float]], title: str, y_label: str, size=(520, 240)) -> Image.Image:
    """Lines of values over successive points (e.g. evaluations in time order), one per series, with a legend."""
    width, height = size
    chart = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(chart)
    font = _font()
    left, right, top, bottom = 44, 150, 22, height - 20
    values = [v for vs in series.values() for v in vs]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    longest = max([len(vs) for vs in series.values()] + [2])

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (i / (longest - 1))
        return x, bottom - (bottom - top) * (v - low) / (high - low)

    draw.line([left, top, left, bottom, width - right, bottom], fill=AXIS)
    draw.text((4, 2), f"{title}", fill=(0, 0, 0), font=font)
    draw.text((2, top), f"{high:.1f}", fill=AXIS, font=font)
    draw.text((2, bottom - FONT_SIZE), f"{low:.1f}", fill=AXIS, font=font)
    draw.text((left, bottom + 4), f"{y_label} per evaluation, oldest left", fill=AXIS, font=font)
    for n, (name, vs) in enumerate(sorted(series.items())):
        colour = SERIES[n % len(SERIES)]
        points = [point(i, v) for i, v in enumerate(vs)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((width - right + 8, top + n * (FONT_SIZE + 4)), f"{name}: {vs[-1]:.2f}", fill=colour, font=font)
    return chart


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG (charts are flat colours: small and exact)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def trend_markdown(
    rows: list[dict],
    family: str,
    scope: str,
    metric: str,
    label: str,
    columns: list[tuple[str, Callable[[dict], str]]],
    last: int = 20,
) -> str:
    """Return markdown of benchmark rows (dicts, already filtered to one trend) over time per setting, newest last.

    A line chart of `metric` in % per setting over its last `last` rows, then per setting a table: the evaluation
    time, `columns` (header, cell of a row), and the change of `metric` from the previous row of that setting.
    """
    rows = sorted(rows, key=lambda r: r["created_at"])
    settings = sorted({r["setting"] for r in rows})
    per_setting = {s: [r for r in rows if r["setting"] == s][-last:] for s in settings}
    lines = [f"# {family} trend: {scope}", ""]
    if per_setting:
        series = {s: [100 * row_metric(r, metric) for r in runs] for s, runs in per_setting.items()}
        chart = png_bytes(line_chart(series, f"{family} {label} %: {scope}", f"{label} %"))
        lines += [f"![{label} per setting over time](data:image/png;base64,{base64.b64encode(chart).decode()})", ""]
    # the synthetic data's generation round: with nightly rounds, the trend reads as a score per night's data
    headers = ["evaluated", "data", *(h for h, _ in columns), f"Δ {label}"]
    for setting, runs in per_setting.items():
        lines += [f"## {setting}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        previous = None
        for r in runs:
            value = row_metric(r, metric)
            delta = "" if previous is None else f"{100 * (value - previous):+.2f}"
            cells = [r["created_at"], rounds_label(r["synthetic_source"]), *(cell(r) for _, cell in columns), delta]
            lines.append("| " + " | ".join(cells) + " |")
            previous = value
        lines.append("")
    return "\n".join(lines)


def percent(metric: str) -> Callable[[dict], str]:
    """Return a table cell of a benchmark row's metric in % with two decimals."""
    return lambda row: f"{100 * row_metric(row, metric):.2f}"
