"""The usual course pipeline, for comparison: one epoch of training through a torch DataLoader whose
Dataset preprocesses one image at a time with ImageUtils, then validation as the course versions
do it (one image at a time by default, or in DataLoader batches with --eval batched).

    python bench/usual_pipeline.py --data_dir D [--resnet_size 3] [--batch_size 128] [--eval per_image]

It reuses this project's network and per-image preprocessing, so the only difference from
``main.py --mode train --max_epoch 1`` is the data path and the evaluation loop. Prints one line:
``usual: train_s=... valid_s=... valid_acc=...``.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import DataReader  # noqa: E402
import ImageUtils  # noqa: E402
from NetWork import ResNet  # noqa: E402


class PerImageDataset(Dataset):
    """Each item: one row parsed and preprocessed by ImageUtils, as in the course skeleton."""

    def __init__(self, x, y, training, seed=0):
        self.x, self.y, self.training = x, y, training
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        image = ImageUtils.parse_record(self.x[i], self.training, self.rng)
        return torch.from_numpy(image), int(self.y[i])


def seed_worker(worker_id):
    """Give each DataLoader worker its own augmentation generator.

    Every worker starts with a copy of the dataset, generator state included, so without this all
    workers would draw the same crops and flips. torch seeds each worker with base_seed + worker_id
    (the base drawn anew each epoch from the main process's generator), as its documentation on
    randomness in DataLoader workers shows.
    """
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(torch.initial_seed())


def train_loader(x, y, batch_size, num_workers=0):
    """Shuffled, augmented training batches as the usual pipeline makes them."""
    return DataLoader(PerImageDataset(x, y, True), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, worker_init_fn=seed_worker)


def train_steps(net, loader, optimizer, max_steps=None):
    """Train over loader (at most max_steps batches); return images seen."""
    net.train()
    seen = 0
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


@torch.no_grad()
def validate_per_image(net, x, y):
    net.eval()
    correct = 0
    for i in range(len(x)):
        image = torch.from_numpy(ImageUtils.parse_record(x[i], False))[None]
        correct += int(net(image).argmax(1).item() == y[i])
    return correct / len(x)


@torch.no_grad()
def validate_batched(net, x, y, batch_size):
    net.eval()
    loader = DataLoader(PerImageDataset(x, y, False), batch_size=batch_size)
    correct = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in loader)
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--resnet_size", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--split_index", type=int, default=45000)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--eval", choices=("per_image", "batched"), default="per_image")
    args = p.parse_args()

    torch.manual_seed(0)
    x, y, _, _ = DataReader.load_data(args.data_dir)
    x_train, y_train, x_valid, y_valid = DataReader.train_valid_split(x, y, args.split_index)
    net = ResNet(1, args.resnet_size)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    loader = train_loader(x_train, y_train, args.batch_size, args.num_workers)
    start = time.perf_counter()
    train_steps(net, loader, optimizer)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    if args.eval == "per_image":
        acc = validate_per_image(net, x_valid, y_valid)
    else:
        acc = validate_batched(net, x_valid, y_valid, args.batch_size)
    print(f"usual: train_s={train_s:.2f} valid_s={time.perf_counter() - start:.2f} "
          f"valid_acc={acc:.4f}")


if __name__ == "__main__":
    main()
