"""Preview rendering: size, overlay and legend colours, ignore hatching, and unnamed classes."""

import math

import numpy as np
import pytest

from maskforge.storage.codec import ShardSample
from maskforge.storage.preview import (
    IGNORE_COLOURS,
    LEGEND_WIDTH,
    PAD,
    ROW_HEIGHT,
    TITLE_HEIGHT,
    class_colours,
    render_preview,
)


def make_sample() -> ShardSample:
    """A 48x64 grey image with class 3, FSS-style class 1000 and an ignore band."""
    image = np.full((48, 64, 3), 90, dtype=np.uint8)
    label = np.zeros((48, 64), dtype=np.int32)
    label[5:20, 5:30] = 3
    label[25:40, 30:60] = 1000
    label[44:, :] = -1
    return ShardSample("fold0/c0003/real-0001", image, label, {})


def colours_in(region: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in px) for px in region.reshape(-1, 3)}


def test_preview_size_overlay_and_legend():
    sample = make_sample()
    preview = render_preview(sample, {3: "cat", 1000: "abacus"}, min_side=384)
    assert preview.mode == "RGB"
    scale = math.ceil(384 / 48)
    assert preview.size == (64 * scale + LEGEND_WIDTH, TITLE_HEIGHT + 48 * scale)
    pixels = np.asarray(preview)
    colours = class_colours((3, 1000))
    assert colours[3] != colours[1000]
    legend = colours_in(pixels[TITLE_HEIGHT:, 64 * scale :])
    picture = pixels[TITLE_HEIGHT:, : 64 * scale]
    for colour in colours.values():
        assert colour in legend  # swatch
        assert colour in colours_in(picture)  # outline
    assert IGNORE_COLOURS[0] in legend  # ignore swatch is hatched
    # overlay: inside class 3 (away from the outline) the grey image is tinted towards the class colour
    inside = picture[12 * scale, 15 * scale].astype(int)
    tint = 0.55 * 90 + 0.45 * np.array(colours[3])
    assert np.abs(inside - tint).max() <= 1
    # background pixels are untouched, ignore pixels are hatched grey
    np.testing.assert_array_equal(picture[2 * scale, 40 * scale], [90, 90, 90])
    ignore = picture[45 * scale :, :]
    assert len(colours_in(ignore)) == 2


def test_small_side_is_upscaled_only_when_needed_and_the_legend_sets_a_minimum_height():
    sample = make_sample()
    legend_height = 2 * PAD + ROW_HEIGHT * (1 + 3)  # header row + cat, abacus, ignore
    assert render_preview(sample, {3: "a", 1000: "b"}, min_side=40).size == (
        64 + LEGEND_WIDTH,
        TITLE_HEIGHT + legend_height,
    )


def test_unnamed_class_is_an_error():
    with pytest.raises(KeyError, match=r"\[1000\]"):
        render_preview(make_sample(), {3: "cat"})
