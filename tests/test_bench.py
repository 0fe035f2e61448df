"""bench/usual_pipeline.py: the baseline's DataLoader workers augment independently."""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import usual_pipeline  # noqa: E402


def test_workers_draw_different_augmentations():
    # Eight copies of one image: each worker takes a whole batch of four, so the two batches
    # differ only if the workers' crops and flips differ.
    image = np.random.default_rng(0).integers(0, 256, 3072).astype(np.uint8)
    x, y = np.tile(image, (8, 1)), np.zeros(8, np.int64)
    torch.manual_seed(0)  # fixes the workers' base seed, so the test gives the same answer each run
    loader = usual_pipeline.train_loader(x, y, batch_size=4, num_workers=2)
    first, second = [batch for batch, _ in loader]
    assert not torch.equal(first, second)
    # Within a worker, too, the images are augmented differently (the generator moves on).
    assert len({first[i].numpy().tobytes() for i in range(4)}) > 1
