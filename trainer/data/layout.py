"""Where the data sets' files are: their names, the folders they sit in, and where to find them.

Nothing is read here but folder listings; the readers in ``cifar.py`` and ``download.py`` take
their paths from these.
"""
import os
from dataclasses import dataclass

from configure import CIFAR100_MD5, CIFAR100_URL, CIFAR10_MD5, CIFAR10_URL
from trainer.data.errors import DataError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ROW = 3 * 32 * 32


@dataclass(frozen=True)
class DataSet:
    """Where the official python version of a data set keeps what, and what its entries are called.

    CIFAR-10: five training batches of 10,000 images and a test batch of 10,000, labels in
    'labels'; CIFAR-100: one training file of 50,000 and a test file of 10,000, each with
    'fine_labels' (100 classes) and 'coarse_labels' (20 superclasses). Class names are in the meta
    file, a list of byte strings per label mode.
    """
    name: str          # as people write it, for messages
    folder: str        # what the archive unpacks to
    archive: str       # the archive's file name
    train: tuple       # training files, concatenated in this order
    test: str          # the test file
    meta: str          # the file of class names
    contents: str      # the files load_data needs, for messages
    labels: dict       # label_mode -> the entry of the labels in train and test
    names: dict        # label_mode -> the entry of the class names in meta
    url: str
    md5: str


CIFAR10 = DataSet("CIFAR-10", FOLDER, ARCHIVE, tuple(TRAIN_BATCHES), TEST_BATCH, "batches.meta",
                  "data_batch_1..5 and test_batch", {"fine": "labels"}, {"fine": "label_names"},
                  CIFAR10_URL, CIFAR10_MD5)
CIFAR100 = DataSet("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test",
                   "meta", "train and test", {"fine": "fine_labels", "coarse": "coarse_labels"},
                   {"fine": "fine_label_names", "coarse": "coarse_label_names"},
                   CIFAR100_URL, CIFAR100_MD5)
DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def data_set(dataset: str, label_mode: str = "fine") -> DataSet:
    """The DataSet of a --dataset value; ValueError (a caller's bug: the config refuses both
    before any data is read) for an unknown one, or a label_mode it does not have."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    if label_mode not in ds.labels:
        raise ValueError(f"{ds.name} has no {label_mode!r} labels; expected one of "
                         f"{', '.join(ds.labels)}")
    return ds


def batch_folder(data_dir: str, ds: DataSet = CIFAR10) -> str:
    """The folder holding the data set's files: data_dir/<ds.folder> or data_dir itself."""
    for candidate in (os.path.join(data_dir, ds.folder), data_dir):
        if os.path.isfile(os.path.join(candidate, ds.test)) or \
                os.path.isfile(os.path.join(candidate, ds.train[0])):
            return candidate
    return None


def data_files(data_dir: str) -> list:
    """Every path under data_dir that the readers here may read, present or not: each data set's
    batch files and class-name file (in its folder or in data_dir itself) and its archive. For
    callers that must not write over an input."""
    paths = []
    for ds in DATASETS.values():
        for folder in (os.path.join(data_dir, ds.folder), data_dir):
            paths += [os.path.join(folder, name) for name in ds.train + (ds.test, ds.meta)]
        paths.append(os.path.join(data_dir, ds.archive))
    return paths


def has_dataset(data_dir: str, dataset: str = "cifar10") -> bool:
    return batch_folder(data_dir, data_set(dataset)) is not None


def has_cifar10(data_dir: str) -> bool:
    return has_dataset(data_dir, "cifar10")


def refuse_file_as_data_dir(data_dir: str, ds: DataSet = CIFAR10) -> None:
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"--data_dir {data_dir} is a file, not a folder; pass the folder that "
                        f"holds (or is to hold) {ds.folder}.")


def find_batch_folder(data_dir: str, ds: DataSet) -> str:
    """The folder under data_dir that holds the files of ds; a DataError saying what to put where
    when data_dir is not a folder or holds none of them."""
    refuse_file_as_data_dir(data_dir, ds)
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir} does not exist; create it with {ds.name} in it, "
                        f"or pass --data_dir.")
    folder = batch_folder(data_dir, ds)
    misplaced = os.path.join(data_dir, ds.folder)
    if folder is None and os.path.exists(misplaced) and not os.path.isdir(misplaced):
        raise DataError(f"{misplaced} is a file, not the folder of {ds.name} batches; move it away "
                        f"and put {ds.folder}/ from {ds.archive} there.")
    if folder is None:
        raise DataError(f"{data_dir} holds no {ds.name} batches; put the contents of {ds.archive} "
                        f"({ds.folder}/ with {ds.contents}) there.")
    return folder
