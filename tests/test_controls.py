"""ControlNet condition images: mask colour, HED edges kept inside the dilated foreground, scribbles, empty inputs."""

import numpy as np
import pytest

from maskforge.models.controls import control_image, fit_size, hed_edges, mask_condition, masked_edges, scribble
from maskforge.models.loading import load_hed


@pytest.fixture(scope="module")
def hed(tiny_models):
    return load_hed(tiny_models["hed"])


def _shot(size=64):
    """A grey image with a bright square object and its mask."""
    image = np.full((size, size, 3), 40, dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    mask[20:44, 16:40] = True
    image[mask] = (230, 220, 210)
    return image, mask


def test_fit_size_keeps_aspect_and_multiple():
    assert fit_size(64, 64, 64, 16) == (64, 64)
    assert fit_size(375, 500, 512, 64) == (512, 704)  # 500 * 512/375 = 682.7 -> 704 (nearest multiple of 64)
    assert fit_size(100, 40, 32, 16) == (80, 32)


def test_mask_condition_colours_the_foreground():
    _, mask = _shot()
    cond = mask_condition(mask, (10, 20, 30))
    assert cond.shape == (64, 64, 3) and cond.dtype == np.uint8
    assert (cond[mask] == (10, 20, 30)).all() and not cond[~mask].any()


def test_edge_hed_finds_the_object_outline(hed):
    image, mask = _shot()
    edges = hed_edges(hed, image)
    assert edges.shape == (64, 64) and edges.dtype == np.uint8
    inner = np.zeros_like(mask)
    inner[21:43, 17:39] = True
    boundary = mask & ~inner  # the square's one-pixel outline
    flat = np.zeros_like(mask)
    flat[2:10, 2:10] = True  # far from the object
    assert edges[boundary].mean() > 200 and edges[flat].max() < 60 and edges[25:40, 22:35].max() < 60


def test_edges_are_kept_only_inside_the_dilated_foreground(hed):
    image, mask = _shot()
    edges = np.full((64, 64), 200, dtype=np.uint8)
    kept = masked_edges(edges, mask, dilation=14)
    assert (kept[mask] == 200).all()
    assert not kept[:5].any() and not kept[:, 55:].any()  # more than 7 px from the square
    assert (kept[19, 20] == 200) and (kept[45, 20] == 200)  # just outside the square, inside the dilation
    cond = control_image("hed", image, mask, hed, (255, 255, 255), 14, "shot x (hed)")
    assert cond.shape == (64, 64, 3) and (cond[..., 0] == cond[..., 2]).all()
    far = np.ones_like(mask)
    far[10:54, 6:50] = False
    assert not cond[far].any()


def test_scribble_is_binary(hed):
    assert set(np.unique(scribble(np.array([[0, 127, 128, 255]], dtype=np.uint8)))) == {0, 255}
    assert scribble(np.array([[0, 127, 128, 255]], dtype=np.uint8)).tolist() == [[0, 0, 255, 255]]
    image, mask = _shot()
    cond = control_image("scribble", image, mask, hed, (255, 255, 255), 14, "shot x (scribble)")
    assert set(np.unique(cond)) == {0, 255}


def test_empty_controls_are_errors(hed):
    image, mask = _shot()
    with pytest.raises(ValueError, match=r"shot 'a' \(mask\): the support mask is empty"):
        control_image("mask", image, np.zeros_like(mask), None, (255, 255, 255), 14, "shot 'a' (mask)")
    flat = np.full_like(image, 90)  # no edge anywhere: the masked HED map is black
    with pytest.raises(ValueError, match=r"shot 'b' \(scribble\): the scribble control image is empty"):
        control_image("scribble", flat, mask, hed, (255, 255, 255), 14, "shot 'b' (scribble)")
    with pytest.raises(ValueError, match="needs the HED annotator"):
        control_image("hed", image, mask, None, (255, 255, 255), 14, "shot 'c' (hed)")
