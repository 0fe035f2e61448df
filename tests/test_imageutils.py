"""ImageUtils.py: the per-image reference against hand computation, and the batched twin against it.

The expected values here are computed independently, pixel by pixel, from the definitions (pad 4,
crop 32x32 at (dy, dx), mirror, standardize with the floored deviation) rather than by calling the
helpers under test.
"""
import math

import numpy as np
import pytest
import torch

import ImageUtils
from ImageUtils import (crop_flip, draw_batch_crop_flip, draw_crop_flip, parse_record,
                        preprocess_batch, preprocess_image, standardize)

FLOOR = 1.0 / math.sqrt(3072)


# ------------------------------------------------------------------ independent reference

def _source_index(k: int, pad_mode: str):
    """Index into the 32-pixel original for position k of the 40-pixel padded axis (None = zero)."""
    i = k - 4
    if 0 <= i < 32:
        return i
    if pad_mode == "constant":
        return None
    # reflect without repeating the edge: -1 -> 1, -4 -> 4, 32 -> 30, 35 -> 27
    return -i if i < 0 else 62 - i


def hand_crop_flip(image, dy, dx, flip, pad_mode="constant"):
    image = np.asarray(image, dtype=np.float64)
    out = np.zeros((3, 32, 32))
    for c in range(3):
        for i in range(32):
            sy = _source_index(dy + i, pad_mode)
            for j in range(32):
                jj = 31 - j if flip else j
                sx = _source_index(dx + jj, pad_mode)
                if sy is not None and sx is not None:
                    out[c, i, j] = image[c, sy, sx]
    return out


def hand_standardize(image):
    image = np.asarray(image, dtype=np.float64)
    n = image.size
    mean = image.sum() / n
    std = math.sqrt(((image - mean) ** 2).sum() / n)
    return (image - mean) / max(std, FLOOR)


def draws(seed):
    """The documented draw order: dy, dx = integers(0, 9, size=2), then flip = random() < 0.5."""
    g = np.random.default_rng(seed)
    dy, dx = g.integers(0, 9, size=2)
    flip = g.random() < 0.5
    return int(dy), int(dx), bool(flip)


def ramp_image():
    """A (3, 32, 32) image with (almost) every pixel distinct, values in [0, 255]."""
    return (np.arange(3072, dtype=np.float64).reshape(3, 32, 32) * 255.0 / 3071.0)


# ------------------------------------------------------------------ hand-computed examples

def test_single_bright_pixel_hand_computed():
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    image[0, 0, 0] = 255
    mean = 255 / 3072
    std = math.sqrt(255 ** 2 / 3072 - mean ** 2)
    bright, dark = (255 - mean) / std, -mean / std

    out = preprocess_image(image, training=False)
    assert out.dtype == np.float32 and out.shape == (3, 32, 32)
    assert out[0, 0, 0] == pytest.approx(bright, rel=1e-5)
    rest = np.delete(out.ravel(), 0)
    np.testing.assert_allclose(rest, dark, rtol=1e-5)

    # Offset (0, 0) of the padded image shifts the picture 4 down and 4 right.
    shifted = standardize(crop_flip(image, 0, 0, False))
    assert shifted[0, 4, 4] == pytest.approx(bright, rel=1e-5)
    assert np.count_nonzero(shifted > 0) == 1
    # Mirrored: column 4 becomes column 31 - 4 = 27.
    mirrored = standardize(crop_flip(image, 0, 0, True))
    assert mirrored[0, 4, 27] == pytest.approx(bright, rel=1e-5)
    assert np.count_nonzero(mirrored > 0) == 1
    # Offset (8, 8) crops padded rows/cols 8..39: original 4..35, the pixel at (0, 0) is gone;
    # what is left is constant, so the floored deviation gives exact zeros.
    gone = standardize(crop_flip(image, 8, 8, False))
    assert np.array_equal(gone, np.zeros((3, 32, 32), dtype=np.float32))
    # Offset (4, 4) is the identity crop.
    assert np.array_equal(crop_flip(image, 4, 4, False), image)


def test_three_constant_planes_hand_computed():
    # R = 10, G = 20, B = 30: mean 20, std sqrt(200 / 3).
    record = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    out = parse_record(record, training=False)
    s = math.sqrt(200 / 3)
    np.testing.assert_allclose(out[0], -10 / s, rtol=1e-6)
    np.testing.assert_allclose(out[1], 0, atol=1e-6)
    np.testing.assert_allclose(out[2], 10 / s, rtol=1e-6)


def test_parse_record_layout_is_planes_then_row_major():
    record = np.arange(3072, dtype=np.float64) * 255.0 / 3071.0
    out = parse_record(record, training=False)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    expected = hand_standardize(record)  # a per-element affine map, so the layout is preserved
    for c, y, x in [(0, 0, 0), (0, 0, 31), (0, 1, 0), (1, 0, 0), (1, 17, 5), (2, 31, 31), (2, 3, 29)]:
        assert out[c, y, x] == pytest.approx(expected[c * 1024 + y * 32 + x], abs=1e-5)
    # Strictly increasing along the raveled (C, H, W) order means no axis was swapped.
    assert np.all(np.diff(out.ravel()) > 0)


def test_parse_record_accepts_uint8_rows_and_lists():
    rng = np.random.default_rng(3)
    row = rng.integers(0, 256, 3072).astype(np.uint8)
    a = parse_record(row, training=False)
    b = parse_record(row.tolist(), training=False)
    c = parse_record(row.astype(np.float32), training=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a, hand_standardize(row.reshape(3, 32, 32)), atol=1e-5)


def test_standardization_gives_mean_zero_std_one():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 32, 32)).astype(np.uint8)
    out = preprocess_image(image, training=False)
    assert abs(float(out.mean(dtype=np.float64))) < 1e-5
    assert float(out.std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out, hand_standardize(image), atol=1e-5)


@pytest.mark.parametrize("value", [0, 7, 255])
def test_constant_image_uses_the_floor_and_gives_zeros(value):
    image = np.full((3, 32, 32), value, dtype=np.uint8)
    out = preprocess_image(image, training=False)
    assert not np.isnan(out).any()
    assert np.array_equal(out, np.zeros((3, 32, 32), dtype=np.float32))
    assert ImageUtils.MIN_STD == pytest.approx(FLOOR)


def test_floor_applies_to_tiny_but_nonzero_deviation():
    # One pixel differs by 1: std = sqrt(3071) / 3072 ~ 0.018 < 1/sqrt(3072) ~ 0.018042 -> floored.
    image = np.zeros((3, 32, 32))
    image[1, 2, 3] = 1.0
    raw_std = math.sqrt(3071) / 3072
    assert raw_std < FLOOR
    out = preprocess_image(image, training=False)
    mean = 1 / 3072
    assert out[1, 2, 3] == pytest.approx((1 - mean) / FLOOR, rel=1e-5)
    assert out[0, 0, 0] == pytest.approx(-mean / FLOOR, rel=1e-5)


# ------------------------------------------------------------------ seeded training path

@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_training_path_matches_hand_computation_for_seeded_draws(pad_mode):
    image = ramp_image()
    seen_flips, seen_offsets = set(), set()
    for seed in range(12):
        dy, dx, flip = draws(seed)
        seen_flips.add(flip)
        seen_offsets.update((dy, dx))
        out = preprocess_image(image, training=True, generator=np.random.default_rng(seed),
                               pad_mode=pad_mode)
        expected = hand_standardize(hand_crop_flip(image, dy, dx, flip, pad_mode))
        assert out.dtype == np.float32 and out.shape == (3, 32, 32)
        np.testing.assert_allclose(out, expected, atol=1e-5, err_msg=f"seed {seed}")
        rec = parse_record(image.reshape(-1), training=True, generator=np.random.default_rng(seed),
                           pad_mode=pad_mode)
        np.testing.assert_allclose(rec, expected, atol=1e-5)
    assert seen_flips == {True, False}, "the seeds must exercise both flip branches"
    assert len(seen_offsets) >= 4


def test_draw_crop_flip_follows_the_documented_order():
    for seed in range(20):
        assert draw_crop_flip(np.random.default_rng(seed)) == draws(seed)


def test_successive_images_consume_the_generator_in_order():
    image = ramp_image()
    g = np.random.default_rng(42)
    outs = [preprocess_image(image, True, g) for _ in range(3)]
    ref = np.random.default_rng(42)
    for out in outs:
        dy, dx = ref.integers(0, 9, size=2)
        flip = ref.random() < 0.5
        np.testing.assert_allclose(out, hand_standardize(hand_crop_flip(image, dy, dx, flip)),
                                   atol=1e-5)


def test_reflect_padding_by_hand():
    image = ramp_image()
    # Offset (0, 0): output (i, j) is padded (i, j) = original (reflect(i - 4), reflect(j - 4)).
    out = crop_flip(image, 0, 0, False, pad_mode="reflect")
    assert out[0, 0, 0] == image[0, 4, 4]   # (-4, -4) -> (4, 4)
    assert out[0, 3, 5] == image[0, 1, 1]   # (-1, 1)  -> (1, 1)
    assert out[2, 4, 4] == image[2, 0, 0]
    out = crop_flip(image, 8, 8, False, pad_mode="reflect")
    assert out[1, 31, 31] == image[1, 27, 27]  # (35, 35) -> (27, 27)
    assert out[1, 28, 0] == image[1, 30, 4]    # (32, 4) -> (30, 4)
    # Constant padding puts zeros there instead.
    out = crop_flip(image, 8, 8, False, pad_mode="constant")
    assert out[1, 31, 31] == 0 and out[1, 28, 0] == 0 and out[1, 27, 27] == image[1, 31, 31]
    for dy, dx, flip in [(0, 8, True), (8, 0, False), (3, 6, True)]:
        np.testing.assert_array_equal(crop_flip(image, dy, dx, flip, "reflect"),
                                      hand_crop_flip(image, dy, dx, flip, "reflect"))
        np.testing.assert_array_equal(crop_flip(image, dy, dx, flip, "constant"),
                                      hand_crop_flip(image, dy, dx, flip, "constant"))


def test_testing_mode_does_no_crop_or_flip_and_draws_nothing():
    image = ramp_image()
    g = np.random.default_rng(7)
    before = g.bit_generator.state
    out = preprocess_image(image, training=False, generator=g, pad_mode="reflect")
    assert g.bit_generator.state == before
    np.testing.assert_allclose(out, hand_standardize(image), atol=1e-5)
    # A flipped or shifted image would not be monotone along rows.
    assert np.all(np.diff(out, axis=2) > 0)


def test_invalid_pad_mode_is_refused():
    with pytest.raises(ValueError, match="pad_mode"):
        preprocess_image(ramp_image(), True, np.random.default_rng(0), pad_mode="edge")
    with pytest.raises(ValueError, match="pad_mode"):
        preprocess_batch(torch.zeros(1, 3, 32, 32), True, torch.zeros(1, 2, dtype=torch.long),
                         torch.zeros(1, dtype=torch.bool), pad_mode="wrap")


def test_input_is_not_modified():
    image = ramp_image().astype(np.float32)
    copy = image.copy()
    preprocess_image(image, True, np.random.default_rng(1))
    preprocess_image(image, False)
    np.testing.assert_array_equal(image, copy)


# ------------------------------------------------------------------ batched twin

def _batch(dtype):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (12, 3, 32, 32)).astype(np.uint8)
    if dtype == "float":
        x = x.astype(np.float32) + rng.random(x.shape, dtype=np.float32) * 0.5
    x[3] = 77  # a constant image in the batch: floor path
    return x


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_batch_equals_per_image_reference_given_the_same_draws(pad_mode, dtype):
    x = _batch(dtype)
    # Cover both corners, the centre and both flips.
    offsets = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0], [4, 4], [1, 7],
                            [2, 3], [5, 6], [7, 1], [3, 3], [6, 2], [8, 4]])
    flips = torch.tensor([False, True, True, False, True, False,
                          True, True, False, False, True, False])
    xt = torch.from_numpy(x)
    out = preprocess_batch(xt, True, offsets, flips, pad_mode)
    assert out.shape == (12, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(xt, torch.from_numpy(x)), "input must not be modified"
    for b in range(12):
        dy, dx = offsets[b].tolist()
        flip = bool(flips[b])
        reference = preprocess_image_with(x[b], dy, dx, flip, pad_mode)
        np.testing.assert_allclose(out[b].numpy(), reference, atol=1e-5, err_msg=f"image {b}")
        independent = hand_standardize(hand_crop_flip(x[b], dy, dx, flip, pad_mode))
        np.testing.assert_allclose(out[b].numpy(), independent, atol=1e-5, err_msg=f"image {b}")


def preprocess_image_with(image, dy, dx, flip, pad_mode):
    """The per-image reference path driven by given draws."""
    return ImageUtils.standardize(ImageUtils.crop_flip(np.asarray(image, np.float32), dy, dx, flip,
                                                       pad_mode))


@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_batch_testing_mode_is_per_image_standardization(dtype):
    x = _batch(dtype)
    out = preprocess_batch(torch.from_numpy(x), training=False)
    for b in range(len(x)):
        np.testing.assert_allclose(out[b].numpy(), hand_standardize(x[b]), atol=1e-5)
    assert np.array_equal(out[3].numpy(), np.zeros((3, 32, 32), np.float32))
    assert not torch.isnan(out).any()


def test_batch_draws_are_seeded_and_match_given_draws():
    x = torch.from_numpy(_batch("uint8"))
    a = preprocess_batch(x, True, generator=torch.Generator().manual_seed(5))
    b = preprocess_batch(x, True, generator=torch.Generator().manual_seed(5))
    c = preprocess_batch(x, True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    offsets, flips = draw_batch_crop_flip(len(x), torch.Generator().manual_seed(5))
    assert torch.equal(a, preprocess_batch(x, True, offsets, flips))


def test_training_draw_distribution_is_sane():
    n = 4000
    offsets, flips = draw_batch_crop_flip(n, torch.Generator().manual_seed(0))
    assert offsets.shape == (n, 2) and offsets.dtype == torch.int64
    assert flips.shape == (n,) and flips.dtype == torch.bool
    assert 0.45 < flips.float().mean().item() < 0.55
    for axis in range(2):
        counts = torch.bincount(offsets[:, axis], minlength=9)
        assert len(counts) == 9, "offsets must lie in 0..8"
        assert (counts > n / 9 * 0.7).all() and (counts < n / 9 * 1.3).all(), counts
    # The numpy reference draws cover the same range.
    g = np.random.default_rng(0)
    ref = [draw_crop_flip(g) for _ in range(2000)]
    assert {d[0] for d in ref} == set(range(9)) == {d[1] for d in ref}
    assert 0.45 < np.mean([d[2] for d in ref]) < 0.55


def test_augmented_batch_really_differs_from_the_original():
    x = torch.from_numpy(_batch("uint8"))
    offsets = torch.full((len(x), 2), 4)
    flips = torch.zeros(len(x), dtype=torch.bool)
    identity = preprocess_batch(x, True, offsets, flips)
    torch.testing.assert_close(identity, preprocess_batch(x, False), rtol=0, atol=1e-6)
    flips[0] = True
    mirrored = preprocess_batch(x, True, offsets, flips)
    torch.testing.assert_close(mirrored[0], identity[0].flip(-1), rtol=0, atol=1e-6)
    assert not torch.allclose(mirrored[0], identity[0])
