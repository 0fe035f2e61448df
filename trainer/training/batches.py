"""The seeded plan of each epoch, and how one or several processes share its batches.

An epoch's order and augmentation are drawn from a generator seeded by (seed, epoch), so any process
can rebuild any epoch's plan: that is what makes resuming exact and lets several processes split
each global batch between them without sending each other anything.
"""
import torch

import ImageUtils


def epoch_plan(n: int, epoch: int, seed: int, pad: int = ImageUtils.PAD, flip: str = "random"):
    """The seeded plan of one epoch: a permutation of n images, crop offsets (in [0, 2 * pad])
    and flips for each position of that permutation. Identical in every process, whatever its
    rank.

    flip "random" draws each position's flip afresh; "alternating" (airbench94) keeps epoch 1's
    random flip of each image and mirrors every image in every even epoch, so that each image is
    seen flipped in every other epoch."""
    order, offsets, flips = _random_plan(n, epoch, seed, pad)
    if flip == "alternating":
        first_order, _, first_flips = _random_plan(n, 1, seed, pad)
        by_image = torch.empty_like(first_flips)
        by_image[first_order] = first_flips  # epoch 1's flip of each image
        flips = by_image[order] ^ (epoch % 2 == 0)
    return order, offsets, flips


def _random_plan(n: int, epoch: int, seed: int, pad: int):
    # Wrapped to 64 bits so that every seed configure.py admits (0 to 2**63 - 1) gives a generator.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2 ** 64)
    order = torch.randperm(n, generator=generator)
    offsets, flips = ImageUtils.draw_batch_crop_flip(n, generator, pad)
    return order, offsets, flips


def batch_slices(n: int, batch_size: int, rank: int = 0, world_size: int = 1):
    """Position ranges of one process's share of each global batch of ``batch_size`` positions
    of the permutation: step k covers positions k * batch_size to (k + 1) * batch_size - 1, and
    rank r takes those of them that are r modulo world_size. The last batch may be smaller; under
    several processes one with fewer positions than processes is left out, so that no process
    has an empty step."""
    sizes = global_batch_sizes(n, batch_size, world_size)
    return [torch.arange(k * batch_size + rank, k * batch_size + size, world_size)
            for k, size in enumerate(sizes)]


def global_batch_sizes(n: int, batch_size: int, world_size: int = 1):
    """The number of images of each step over all processes (see batch_slices)."""
    sizes = [min(batch_size, n - k) for k in range(0, n, batch_size)]
    if world_size > 1 and sizes and sizes[-1] < world_size:
        sizes.pop()
    return sizes
