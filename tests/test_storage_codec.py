"""Sample codec: exact round trips, label value mapping on disk, key rules and input checks."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from maskforge.storage.codec import (
    ShardCodecError,
    ShardKeyError,
    ShardSample,
    decode_sample,
    encode_sample,
    validate_key,
)


def make_sample(key="fold0/c0005/real-0001", classes=(5,), seed=0, extras=None) -> ShardSample:
    """A 24x32 sample: smooth image with mild noise, one square per class, an ignore band."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((24, 32))
    smooth = np.stack([rows * 8, cols * 6, 255 - rows * 4 - cols * 3], axis=-1)
    image = np.clip(smooth + rng.integers(-6, 7, (24, 32, 3)), 0, 255).astype(np.uint8)
    label = np.zeros((24, 32), dtype=np.int32)
    for i, class_id in enumerate(classes):
        label[2 + 5 * i : 6 + 5 * i, 3:12] = class_id
    label[20:22, :] = -1
    meta = {
        "dataset": "toy",
        "fold": 0,
        "shot_ids": ["s1", "s2"],
        "scores": {"clip": 0.25},
        "nested": {"a": [1, 2.5, None]},
    }
    return ShardSample(key, image, label, meta, extras or {})


def png_values(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L"
        return np.array(img)


def test_round_trip_is_exact_for_label_and_meta_and_stable_for_the_jpeg():
    sample = make_sample(classes=(5, 17))
    fields = encode_sample(sample)
    assert sorted(fields) == ["__key__", "jpg", "json", "mask.png"]
    assert all(isinstance(v, bytes) for k, v in fields.items() if k != "__key__")
    back = decode_sample(fields)
    assert back.key == sample.key
    assert back.label.dtype == np.int32
    np.testing.assert_array_equal(back.label, sample.label)
    assert back.meta == sample.meta
    # JPEG is lossy: the image is the decoded JPEG of exactly these bytes, and the same bytes always decode alike
    with Image.open(io.BytesIO(fields["jpg"])) as img:
        np.testing.assert_array_equal(back.image, np.array(img))
    assert back.image.dtype == np.uint8 and back.image.shape == (24, 32, 3)
    np.testing.assert_array_equal(decode_sample(fields).image, back.image)
    assert np.abs(back.image.astype(int) - sample.image.astype(int)).mean() < 4  # quality 95 on a smooth image
    assert encode_sample(sample) == fields  # the same sample always gives the same bytes


def test_small_class_ids_are_stored_as_is_with_ignore_255():
    sample = make_sample(classes=(5, 254))
    fields = encode_sample(sample)
    stored = png_values(fields["mask.png"])
    assert set(np.unique(stored).tolist()) == {0, 5, 254, 255}
    np.testing.assert_array_equal(stored == 255, sample.label == -1)
    assert json.loads(fields["json"])["label_values"] is None


def test_fss_class_ids_above_254_are_remapped_in_sorted_order_and_round_trip():
    sample = make_sample(classes=(1000, 37, 255))
    fields = encode_sample(sample)
    stored = png_values(fields["mask.png"])
    assert json.loads(fields["json"])["label_values"] == {"1": 37, "2": 255, "3": 1000}
    np.testing.assert_array_equal(stored[sample.label == 37], 1)
    np.testing.assert_array_equal(stored[sample.label == 255], 2)
    np.testing.assert_array_equal(stored[sample.label == 1000], 3)
    np.testing.assert_array_equal(stored[sample.label == -1], 255)
    back = decode_sample(fields)
    np.testing.assert_array_equal(back.label, sample.label)
    assert "label_values" not in back.meta and back.meta == sample.meta


def test_more_than_254_classes_in_one_image_is_an_error():
    sample = make_sample()
    sample.label[:] = np.arange(300, 300 + 24 * 32, dtype=np.int32).reshape(24, 32)
    with pytest.raises(ShardCodecError, match="768 classes"):
        encode_sample(sample)


@pytest.mark.parametrize("key", ["img_0.5", "a/b.c", "x.jpg", "", "a//b", "/a", "a b", "ü", "__meta__"])
def test_bad_keys_are_rejected_with_the_key_named(key):
    with pytest.raises(ShardKeyError) as err:
        validate_key(key)
    assert repr(key) in str(err.value)
    with pytest.raises(ShardKeyError):
        encode_sample(make_sample(key=key))


def test_dot_error_explains_the_webdataset_rule():
    with pytest.raises(ShardKeyError, match="first dot"):
        validate_key("fold0/img_0.5_seed3")


@pytest.mark.parametrize("key", ["a", "fold0/cls12/000001", "A-b_C/9"])
def test_good_keys_pass(key):
    assert validate_key(key) == key


def test_extras_round_trip_with_dtypes():
    xattn = np.random.default_rng(1).random((4, 6, 8)).astype(np.float16)
    coarse_bool = np.zeros((24, 32), dtype=bool)
    coarse_bool[3:9, 4:20] = True
    coarse_u8 = (np.arange(24 * 32) % 256).astype(np.uint8).reshape(24, 32)
    sample = make_sample(extras={"xattn.npy": xattn, "coarse.png": coarse_bool, "soft.mask.png": coarse_u8})
    fields = encode_sample(sample)
    assert {"xattn.npy", "coarse.png", "soft.mask.png"} <= set(fields)
    back = decode_sample(fields)
    assert back.extras["xattn.npy"].dtype == np.float16
    np.testing.assert_array_equal(back.extras["xattn.npy"], xattn)
    assert back.extras["coarse.png"].dtype == np.bool_
    np.testing.assert_array_equal(back.extras["coarse.png"], coarse_bool)
    assert back.extras["soft.mask.png"].dtype == np.uint8
    np.testing.assert_array_equal(back.extras["soft.mask.png"], coarse_u8)


@pytest.mark.parametrize("name", ["XATTN.npy", "notes.txt", "jpg", "mask.png", "a..npy"])
def test_bad_extra_names_are_rejected(name):
    with pytest.raises(ShardCodecError, match="extra field name"):
        encode_sample(make_sample(extras={name: np.zeros((2, 2), np.uint8)}))


def test_png_extra_must_be_2d_bool_or_uint8():
    with pytest.raises(ShardCodecError, match="coarse.png"):
        encode_sample(make_sample(extras={"coarse.png": np.zeros((24, 32), np.float32)}))


def test_input_checks_name_the_sample():
    good = make_sample()
    bad_image = ShardSample(good.key, good.image.astype(np.float32), good.label, good.meta)
    with pytest.raises(ShardCodecError, match="uint8 HxWx3"):
        encode_sample(bad_image)
    bad_label_dtype = ShardSample(good.key, good.image, good.label.astype(np.uint8), good.meta)
    with pytest.raises(ShardCodecError, match="int32 HxW"):
        encode_sample(bad_label_dtype)
    bad_label_shape = ShardSample(good.key, good.image, good.label[:, :30], good.meta)
    with pytest.raises(ShardCodecError, match=r"\(24, 30\) differs"):
        encode_sample(bad_label_shape)
    bad_values = ShardSample(good.key, good.image, good.label - 5, good.meta)
    with pytest.raises(ShardCodecError, match="holds -6"):
        encode_sample(bad_values)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"s": {1, 2}}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ({"t": (1, 2)}, "JSON round trip"),
        ({"d": {1: "a"}}, "JSON round trip"),
        ({"label_values": None}, "reserved"),
    ],
)
def test_meta_must_survive_json_exactly(meta, message):
    sample = make_sample()
    sample.meta = meta
    with pytest.raises(ShardCodecError, match=message):
        encode_sample(sample)


def test_decode_rejects_mismatched_shapes_and_missing_fields():
    fields = encode_sample(make_sample())
    other = encode_sample(ShardSample("k", np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.int32), {}))
    with pytest.raises(ShardCodecError, match=r"fold0/c0005/real-0001.*\(10, 10\) differs"):
        decode_sample({**fields, "mask.png": other["mask.png"]})
    with pytest.raises(ShardCodecError, match=r"lacks fields \['mask.png'\]"):
        decode_sample({k: v for k, v in fields.items() if k != "mask.png"})


def test_decode_rejects_png_values_missing_from_the_mapping():
    fields = encode_sample(make_sample(classes=(1000,)))
    meta = json.loads(fields["json"])
    meta["label_values"] = {"2": 1000}
    with pytest.raises(ShardCodecError, match=r"values \[1\] missing"):
        decode_sample({**fields, "json": json.dumps(meta).encode()})
