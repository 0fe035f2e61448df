"""Pure preprocessing: the per-image reference (numpy) and its batched twin (torch).

Training images are padded by 4 pixels on each side (``pad``, --translate), cropped back to 32x32
at a random offset and flipped left-right with probability 0.5 (He et al. 2016, Sec. 4.2); every
image, training or not, is then standardized by its own mean and standard deviation (the deviation
floored at 1/sqrt(3072), as in the course skeleton's ``tf.image.per_image_standardization``).

``preprocess_image`` is the readable reference, one image at a time. ``preprocess_batch`` does the
same on a whole batch at once on any device: given the same crop offsets and flips it gives the
same numbers (up to float rounding).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4
SIZE = 32
MIN_STD = 1.0 / math.sqrt(3 * SIZE * SIZE)
PAD_MODES = ("constant", "reflect")


# --------------------------------------------------------------------------------------------
# Per-image reference (numpy)

def parse_record(record, training: bool, generator: np.random.Generator = None,
                 pad_mode: str = "constant") -> np.ndarray:
    """One row of 3072 values (red, green, blue planes) -> preprocessed (3, 32, 32) float32."""
    image = np.asarray(record, dtype=np.float32).reshape(3, SIZE, SIZE)
    return preprocess_image(image, training, generator, pad_mode)


def draw_crop_flip(generator: np.random.Generator, pad: int = PAD):
    """Random draws for one training image: crop offsets (dy, dx) in [0, 2 * pad] and a flip."""
    dy, dx = generator.integers(0, 2 * pad + 1, size=2)
    flip = bool(generator.random() < 0.5)
    return int(dy), int(dx), flip


def crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool, pad_mode: str = "constant",
              pad: int = PAD):
    """(3, 32, 32) -> pad ``pad`` pixels each side, take the 32x32 window at (dy, dx), mirror it
    if flip."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, not {pad_mode!r}")
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode=pad_mode)
    out = padded[:, dy:dy + SIZE, dx:dx + SIZE]
    return out[:, :, ::-1] if flip else out


def standardize(image: np.ndarray) -> np.ndarray:
    """Subtract the image's mean, divide by its standard deviation (floored at 1/sqrt(3072))."""
    image = image.astype(np.float32)
    std = max(float(image.std()), MIN_STD)
    return ((image - image.mean()) / std).astype(np.float32)


def preprocess_image(image: np.ndarray, training: bool, generator: np.random.Generator = None,
                     pad_mode: str = "constant") -> np.ndarray:
    """(3, 32, 32) image with values in [0, 255] -> (3, 32, 32) float32, standardized.

    When training, a random crop and flip come first; their randomness is drawn from ``generator``
    (a ``numpy.random.Generator``; a fresh unseeded one when None).
    """
    image = np.asarray(image, dtype=np.float32)
    if training:
        if generator is None:
            generator = np.random.default_rng()
        image = crop_flip(image, *draw_crop_flip(generator), pad_mode=pad_mode)
    return standardize(image)


# --------------------------------------------------------------------------------------------
# Whole batches at once (torch, on the data's device)

def draw_batch_crop_flip(n: int, generator: torch.Generator, pad: int = PAD):
    """Random draws for n training images: offsets (n, 2) int64 in [0, 2 * pad] and flips (n,)
    bool."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def standardize_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) -> float32, each image standardized on its own."""
    x = x.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(MIN_STD)
    return (x - mean) / std


def crop_flip_batch(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                    pad_mode: str = "constant", pad: int = PAD) -> torch.Tensor:
    """(B, 3, 32, 32) -> the same crops and flips as ``crop_flip``, for every image at once;
    ``pad`` pixels each side (offsets in [0, 2 * pad]).

    One gather does all of it: image b's output pixel (i, j) is padded pixel
    (dy_b + i, dx_b + j), or (dy_b + i, dx_b + 31 - j) when b is flipped.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, not {pad_mode!r}")
    if pad_mode == "reflect" and not x.is_floating_point():
        x = x.float()  # reflect padding is defined for float tensors only
    padded = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)  # (B, 3, 32 + 2 pad, 32 + 2 pad)
    b = x.shape[0]
    ar = torch.arange(SIZE, device=x.device)
    rows = offsets[:, 0, None] + ar  # (B, 32)
    cols = offsets[:, 1, None] + torch.where(flips[:, None], SIZE - 1 - ar, ar)  # (B, 32)
    batch_index = torch.arange(b, device=x.device)[:, None, None, None]
    channel_index = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def channel_stats(rows: np.ndarray):
    """(N, 3072) rows in [0, 255] -> (mean, std), each (3,) float32: every channel's mean and
    (population) deviation over all images and pixels, for ``--normalize dataset``."""
    planes = np.asarray(rows).reshape(len(rows), 3, SIZE * SIZE)
    mean = planes.mean(axis=(0, 2), dtype=np.float64)
    std = np.sqrt(((planes - mean[None, :, None]) ** 2).mean(axis=(0, 2)))
    return mean.astype(np.float32), np.maximum(std, MIN_STD).astype(np.float32)


def normalize_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) -> float32, each channel shifted by mean[c] and divided by std[c]."""
    return (x.float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def preprocess_batch(x: torch.Tensor, training: bool, offsets: torch.Tensor = None,
                     flips: torch.Tensor = None, pad_mode: str = "constant",
                     generator: torch.Generator = None, mean_std=None,
                     pad: int = PAD) -> torch.Tensor:
    """(B, 3, 32, 32) uint8 or float in [0, 255] -> (B, 3, 32, 32) float32, standardized: each
    image by itself, or by the data set's channel statistics ``mean_std`` (two (3,) tensors).

    When training, images are padded by ``pad`` pixels, cropped and flipped by ``offsets`` and
    ``flips`` (on x's device), or by fresh draws from ``generator`` when those are not given.
    """
    if training:
        if offsets is None or flips is None:
            offsets, flips = draw_batch_crop_flip(x.shape[0], generator, pad)
            offsets, flips = offsets.to(x.device), flips.to(x.device)
        x = crop_flip_batch(x, offsets, flips, pad_mode, pad)
    return standardize_batch(x) if mean_std is None else normalize_batch(x, *mean_std)
