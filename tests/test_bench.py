"""bench/usual_pipeline.py: the baseline's DataLoader workers augment independently.
bench/gpu_check.sh: without CUDA it says so and writes nothing."""
import os
import subprocess
import sys

import numpy as np
import pytest
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


GPU_CHECK = os.path.join(ROOT, "bench", "gpu_check.sh")


def test_gpu_check_is_valid_bash_throughout():
    # Only the no-CUDA branch runs on this machine; bash -n parses the CUDA branch too.
    r = subprocess.run(["bash", "-n", GPU_CHECK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    output = tmp_path / "figures.txt"
    r = subprocess.run(["bash", GPU_CHECK, str(output)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "gpu_check: no CUDA device on this machine; nothing to check\n"
    assert os.listdir(tmp_path) == []  # neither figures.txt nor the default gpu_check.txt
