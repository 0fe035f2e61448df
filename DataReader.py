"""Reading CIFAR-10, CIFAR-100 and private image sets from disk: the course's data API.

Images travel as rows of 3072 uint8 values in the official layout: the red plane, then green, then
blue, each 32x32 row-major; ``row.reshape(3, 32, 32)`` gives (C, H, W).

This file says what is read; how it is read safely lives in ``trainer/data/``:

* ``layout.py``: the data sets' file names and folders, and where to find them under --data_dir;
* ``cifar.py``: batch and meta files, through the restricted unpickler of ``safe_pickle.py`` (no
  code from a file ever runs);
* ``private.py``: a private ``.npy`` image set, its header checked before any pixel is read;
* ``image_files.py``: a PNG/JPEG file or a folder of them as a private set (needs Pillow);
* ``download.py`` and ``archive.py``: the official archive, found or fetched, MD5 checked,
  unpacked member by member.

Every unusable file is a ``DataError`` whose message names the file and what to do.
"""
import os
import zlib

import numpy as np

from configure import CLASS_COUNTS
from trainer.data.cifar import read_batch, read_class_names
from trainer.data.download import download_cifar10, download_dataset, ensure_cifar10, ensure_dataset
from trainer.data.errors import DataError
from trainer.data.layout import (CIFAR100, DATASETS, TRAIN_BATCHES, batch_folder, data_files, data_set,
                                 find_batch_folder, has_cifar10, has_dataset)
from trainer.data.image_files import image_paths, is_image_source, read_image_files, to_rows
from trainer.data.private import read_private_images

# What other modules use from here besides the functions below: the error, the data sets, the
# files a run must not write over, and making sure the data is on disk.
__all__ = ["load_data", "class_names", "train_valid_split", "train_vaild_split", "fingerprint",
           "load_testing_images", "load_private_images", "private_files", "DataError", "CIFAR100",
           "DATASETS", "TRAIN_BATCHES", "data_files", "has_dataset", "has_cifar10",
           "ensure_dataset", "ensure_cifar10", "download_dataset", "download_cifar10"]


def load_data(data_dir: str, num_classes: int = 10, dataset: str = "cifar10",
              label_mode: str = "fine"):
    """Read the python version of CIFAR-10 or CIFAR-100 under ``data_dir``.

    dataset: "cifar10" (data_batch_1..5, test_batch) or "cifar100" (train, test); label_mode:
    "fine" (CIFAR-10's 10 classes, CIFAR-100's 100) or "coarse" (CIFAR-100's 20 superclasses).
    Returns x_train (N, 3072) uint8, y_train (N,) int64, x_test (M, 3072) uint8, y_test (M,) int64;
    N = 50,000 and M = 10,000 for the official files, fewer for a small copy. Labels outside
    [0, num_classes) are refused.
    """
    ds = data_set(dataset, label_mode)
    folder = find_batch_folder(data_dir, ds)
    key = ds.labels[label_mode]
    train = [read_batch(os.path.join(folder, name), num_classes, ds, key) for name in ds.train]
    x_test, y_test = read_batch(os.path.join(folder, ds.test), num_classes, ds, key)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def class_names(data_dir: str, dataset: str = "cifar10", label_mode: str = "fine"):
    """The class names of the data set under data_dir, from its meta file (CIFAR-10's
    batches.meta, CIFAR-100's meta): a list of str, index = label. None when there is no meta
    file (callers then show class numbers); a meta file that is there but unusable is a DataError
    naming it."""
    ds = data_set(dataset, label_mode)
    folder = batch_folder(data_dir, ds)
    if folder is None:
        return None
    path = os.path.join(folder, ds.meta)
    if not os.path.lexists(path):
        return None
    return read_class_names(path, ds, label_mode, CLASS_COUNTS[(dataset, label_mode)])


def train_valid_split(x_train, y_train, split_index: int = 45000):
    """The first ``split_index`` images train; the rest validate (no shuffling: the split is fixed)."""
    if not 0 < split_index < len(x_train):
        raise DataError(f"--split_index {split_index} must lie between 1 and {len(x_train) - 1} for "
                        f"{len(x_train)} training images.")
    return x_train[:split_index], y_train[:split_index], x_train[split_index:], y_train[split_index:]


train_vaild_split = train_valid_split  # the course skeleton's spelling


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """A short digest of a data set, so a checkpoint can tell which data it was trained on."""
    crc = zlib.crc32(np.ascontiguousarray(y).tobytes())
    crc = zlib.crc32(np.ascontiguousarray(x).data, crc)
    return f"{len(x)}:{crc:08x}"


def load_testing_images(path: str) -> np.ndarray:
    """Read a private ``.npy`` image set -> (N, 3072) float32 rows in the official layout, in [0, 255].

    Accepted: (N, 3072) rows, (N, 32, 32, 3) or (N, 3, 32, 32); uint8, or float with values in
    [0, 255]. Anything else is a DataError; float images that all lie within [0, 1] are read with
    a warning on stderr (they are most likely scaled to [0, 1]). A PNG/JPEG file or a folder of
    them is read as ``load_private_images`` does.
    """
    return load_private_images(path)[0]


def load_private_images(path: str):
    """Read a private image set -> ((N, 3072) float32 rows as ``load_testing_images`` returns them,
    names): ``path`` is an ``.npy`` file (names: None), or a PNG/JPEG file or a folder of them
    (names: the file names, one per row; see trainer/data/image_files.py: converted to RGB,
    resized to 32x32, unreadable files in a folder skipped with a warning; Pillow needed)."""
    if is_image_source(path):
        images, names = read_image_files(path)
        return to_rows(images), names
    return read_private_images(path), None


def private_files(path: str) -> list:
    """The files a private image set at ``path`` is read from (the .npy, the image or a folder's
    images), for callers that must not write over an input."""
    return image_paths(path) if is_image_source(path) else [path]
