"""Reading CIFAR-10, CIFAR-100 and private image sets from disk, safely.

Images travel as rows of 3072 uint8 values in the official layout: the red plane, then green, then
blue, each 32x32 row-major; ``row.reshape(3, 32, 32)`` gives (C, H, W).

Nothing here runs code from a file: CIFAR batches go through the restricted unpickler of
``safe_pickle.py``, which admits only the names numpy's arrays are pickled with and builds the
arrays itself; private sets are read with ``allow_pickle=False`` once their header is checked, and
archives are unpacked member by member.
"""
import errno
import gzip
import hashlib
import math
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import tokenize
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass

import numpy as np

from configure import CIFAR100_MD5, CIFAR100_URL, CIFAR10_MD5, CIFAR10_URL, CLASS_COUNTS
from trainer.data.safe_pickle import safe_unpickle

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ROW = 3 * 32 * 32
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive


class DataError(ValueError):
    """Data on disk is missing or unusable; the message names the file and what to do."""


def _reason(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text, shortened, for quoting inside a one-line message."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100 files

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


def _data_set(dataset: str, label_mode: str = "fine") -> DataSet:
    """The DataSet of a --dataset value; ValueError (a caller's bug: the config refuses both
    before any data is read) for an unknown one, or a label_mode it does not have."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    if label_mode not in ds.labels:
        raise ValueError(f"{ds.name} has no {label_mode!r} labels; expected one of "
                         f"{', '.join(ds.labels)}")
    return ds


def _batch_folder(data_dir: str, ds: DataSet = CIFAR10) -> str:
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
    return _batch_folder(data_dir, _data_set(dataset)) is not None


def has_cifar10(data_dir: str) -> bool:
    return has_dataset(data_dir, "cifar10")


def _unpickle_file(path: str, ds: DataSet, what: str, replace_with: str) -> dict:
    """Read and safely unpickle one file of the data set -> its entries, keys as str.

    Anything but a readable dict of distinct keys raises a DataError naming path; what is the kind
    of file ("batch", "meta file"), replace_with says what to put there instead.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path} is missing; put {ds.contents} from the {ds.name} python version "
                        f"in {os.path.dirname(path)}.") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a {what}; replace it with {replace_with}."
                        ) from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); replace it with a readable copy "
                        f"of {os.path.basename(path)}.") from None
    try:
        obj = safe_unpickle(raw)
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):
            raise DataError(f"{path} is not a {ds.name} {what} and was not loaded ({_reason(e)}); "
                            f"replace it with the official file.") from None
        raise DataError(f"{path} is corrupt or truncated ({_reason(e)}); download {ds.name} "
                        f"again.") from None
    # Each of these is some corruption: a stack popped empty (IndexError), an unknown opcode
    # (KeyError), a length past a C integer (OverflowError), ...
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeDecodeError, struct.error, OverflowError, RecursionError) as e:
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}); download {ds.name} "
                        f"again.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold the dict of a {ds.name} {what}; replace it with the "
                        f"official file.")
    entries = {}
    for key, value in obj.items():
        text = key.decode("latin1") if isinstance(key, bytes) else key
        if text in entries:
            raise DataError(f"{path} holds the entry {text!r} twice (as bytes and as str); replace "
                            f"it with the official file.")
        entries[text] = value
    return entries


def _read_batch(path: str, num_classes: int, ds: DataSet = CIFAR10, label_key: str = "labels"):
    """One batch file -> (x (n, 3072) uint8, y (n,) int64), the labels taken from label_key."""
    name = os.path.basename(path)
    entries = _unpickle_file(path, ds, "batch file", f"{name} from the {ds.name} python version")
    if "data" not in entries or label_key not in entries:
        raise DataError(f"{path} lacks the 'data' or '{label_key}' entry of a {ds.name} batch; "
                        f"replace it with the official file.")
    x, labels = entries["data"], entries[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != ROW:
        what = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), found {what}; "
                        f"replace it with the official file.")
    try:
        y = np.asarray(labels)
        if y.size == 0:  # np.asarray([]) is float; a batch of no images has no labels to check
            y = y.astype(np.int64)
    except (ValueError, TypeError, OverflowError, RecursionError):
        y = np.asarray([], dtype=object)
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise DataError(f"{path}: '{label_key}' must be {x.shape[0]} integers, one per image; "
                        f"replace {name} with the official file.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), found {y.min()}..{y.max()}; "
                        f"check the file or --num_classes.")
    return np.ascontiguousarray(x), y.astype(np.int64)


def _refuse_file_as_data_dir(data_dir: str, ds: DataSet = CIFAR10) -> None:
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"--data_dir {data_dir} is a file, not a folder; pass the folder that "
                        f"holds (or is to hold) {ds.folder}.")


def load_data(data_dir: str, num_classes: int = 10, dataset: str = "cifar10",
              label_mode: str = "fine"):
    """Read the python version of CIFAR-10 or CIFAR-100 under ``data_dir``.

    dataset: "cifar10" (data_batch_1..5, test_batch) or "cifar100" (train, test); label_mode:
    "fine" (CIFAR-10's 10 classes, CIFAR-100's 100) or "coarse" (CIFAR-100's 20 superclasses).
    Returns x_train (N, 3072) uint8, y_train (N,) int64, x_test (M, 3072) uint8, y_test (M,) int64;
    N = 50,000 and M = 10,000 for the official files, fewer for a small copy. Labels outside
    [0, num_classes) are refused.
    """
    ds = _data_set(dataset, label_mode)
    _refuse_file_as_data_dir(data_dir, ds)
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir} does not exist; create it with {ds.name} in it, "
                        f"or pass --data_dir.")
    folder = _batch_folder(data_dir, ds)
    misplaced = os.path.join(data_dir, ds.folder)
    if folder is None and os.path.exists(misplaced) and not os.path.isdir(misplaced):
        raise DataError(f"{misplaced} is a file, not the folder of {ds.name} batches; move it away "
                        f"and put {ds.folder}/ from {ds.archive} there.")
    if folder is None:
        raise DataError(f"{data_dir} holds no {ds.name} batches; put the contents of {ds.archive} "
                        f"({ds.folder}/ with {ds.contents}) there.")
    key = ds.labels[label_mode]
    train = [_read_batch(os.path.join(folder, name), num_classes, ds, key) for name in ds.train]
    x_test, y_test = _read_batch(os.path.join(folder, ds.test), num_classes, ds, key)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def class_names(data_dir: str, dataset: str = "cifar10", label_mode: str = "fine"):
    """The class names of the data set under data_dir, from its meta file (CIFAR-10's
    batches.meta, CIFAR-100's meta): a list of str, index = label. None when there is no meta
    file (callers then show class numbers); a meta file that is there but unusable is a DataError
    naming it."""
    ds = _data_set(dataset, label_mode)
    folder = _batch_folder(data_dir, ds)
    if folder is None:
        return None
    path = os.path.join(folder, ds.meta)
    if not os.path.lexists(path):
        return None
    entries = _unpickle_file(path, ds, "meta file", f"{ds.meta} from the {ds.name} python "
                                                    f"version, or delete it to show class numbers")
    key = ds.names[label_mode]
    names = entries.get(key)
    count = CLASS_COUNTS[(dataset, label_mode)]
    if not isinstance(names, list) or len(names) != count:
        what = f"{len(names)} names" if isinstance(names, list) else \
            ("no such entry" if names is None else f"a {type(names).__name__}")
        raise DataError(f"{path}: '{key}' must list the {count} class names, found {what}; replace "
                        f"it with the official file or delete it.")
    texts = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text or not text.isprintable():
            raise DataError(f"{path}: class name {i} of '{key}' is {ascii(text)}, not a line of "
                            f"text; replace it with the official file or delete it.")
    return texts


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


# --------------------------------------------------------------------------------------------
# Private test images

def _read_npy_header(f, path: str):
    """Read the header of the .npy file open as f -> (shape, fortran_order, dtype); f is left at
    the first data byte. Refuses a file that is not an .npy by name."""
    magic = f.read(len(NPY_MAGIC))
    if not magic:
        raise DataError(f"{path} is empty; save the images with np.save.")
    if magic.startswith(ZIP_MAGIC):
        raise DataError(f"{path} is an .npz archive, not an .npy file; save a single array with "
                        f"np.save.")
    if magic != NPY_MAGIC:
        raise DataError(f"{path} is not an .npy file (it lacks the .npy signature); save the "
                        f"images with np.save.")
    version = tuple(f.read(2))
    if len(version) < 2:
        raise DataError(f"{path} ends inside its .npy header; save the images again with np.save.")
    if version not in ((1, 0), (2, 0)):  # 3.0 only adds utf-8 field names, of no use to images
        raise DataError(f"{path} uses .npy format version {'.'.join(map(str, version))}, which is "
                        f"not read here; save the images as a plain array with np.save.")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    try:
        shape, fortran_order, dtype = read_header(f)
    # TokenError: numpy re-reads a header it cannot parse as one written by Python 2.
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, UnicodeDecodeError,
            struct.error, OverflowError, RecursionError, MemoryError) as e:
        raise DataError(f"{path} has a corrupt .npy header ({_reason(e)}); save the images again "
                        f"with np.save.") from None
    if any(n < 0 for n in shape):
        raise DataError(f"{path} has a corrupt .npy header (shape {shape}); save the images again "
                        f"with np.save.")
    return shape, fortran_order, dtype


def _private_layout(path: str, shape: tuple) -> str:
    if len(shape) == 2 and shape[1] == ROW:
        return "rows"
    if len(shape) == 4 and shape[1:] == (32, 32, 3):
        return "hwc"
    if len(shape) == 4 and shape[1:] == (3, 32, 32):
        return "chw"
    raise DataError(f"{path} has shape {shape}; expected (N, 3072), (N, 32, 32, 3) or "
                    f"(N, 3, 32, 32).")


def load_testing_images(path: str) -> np.ndarray:
    """Read a private ``.npy`` image set -> (N, 3072) float32 rows in the official layout, in [0, 255].

    Accepted: (N, 3072) rows in the official layout, (N, 32, 32, 3) or (N, 3, 32, 32); uint8, or
    float with values in [0, 255]; C or Fortran order, either byte order. The header is checked
    against the file's size before any pixel is read, so a few bytes cannot ask for gigabytes.
    Float images that all lie within [0, 1] are most likely scaled to [0, 1]: they are read, with
    a warning on stderr.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"private data file {path} does not exist; pass --private_data with the "
                        f"path of your .npy file.") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an .npy file; pass --private_data with the path "
                        f"of your .npy file.") from None
    except NotADirectoryError:
        raise DataError(f"private data file {path} cannot exist: a folder on its path is a file; "
                        f"pass --private_data (or --data_dir) with the right path.") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); check its path and "
                        f"permissions.") from None
    with f:
        shape, fortran_order, dtype = _read_npy_header(f, path)
        if dtype.hasobject:
            raise DataError(f"{path} holds Python objects, which are not loaded; save the images "
                            f"as a plain uint8 or float array with np.save.")
        if dtype.kind not in "uif":
            raise DataError(f"{path} holds {dtype} values; images must be uint8 or float in "
                            f"[0, 255].")
        layout = _private_layout(path, shape)
        if shape[0] == 0:
            raise DataError(f"{path} holds no images.")
        needed = math.prod(shape) * dtype.itemsize
        present = os.fstat(f.fileno()).st_size - f.tell()
        if present != needed:
            what = "is truncated" if present < needed else "has extra bytes after its images"
            raise DataError(f"{path} {what}: its header describes {shape} {dtype} ({needed} bytes) "
                            f"but {present} bytes follow; save the images again with np.save.")
        try:
            f.seek(0)
            x = np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # the file changed since its size was checked
            raise DataError(f"{path} is not a readable .npy file ({_reason(e)}); save the images "
                            f"with np.save.") from None
    if layout == "hwc":
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), ROW)
    else:
        rows = x.reshape(len(x), ROW)
    if not np.isfinite(rows).all():
        raise DataError(f"{path} contains NaN or infinite values; fix or drop those images.")
    low, high = rows.min(), rows.max()
    if low < 0 or high > 255:
        raise DataError(f"{path} has values in [{low:g}, {high:g}]; pixels must lie in [0, 255] "
                        f"(scale images in [0, 1] by 255).")
    if dtype.kind == "f" and high <= 1.0:  # as dark as this, real photographs never are
        print(f"warning: {path} holds float images whose pixels all lie within [0, 1]; images are "
              f"expected in [0, 255], so multiply them by 255 unless they really are this dark.",
              file=sys.stderr, flush=True)
    return np.ascontiguousarray(rows, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Download and unpacking

def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_members(archive: str, target: str, members) -> None:
    """Refuse an archive with a member that is a link or device, or whose path leaves target."""
    for m in members:
        norm = os.path.normpath(m.name)
        if os.path.isabs(m.name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            raise DataError(f"{archive} contains the path {m.name!r}, which leaves {target}; "
                            f"the archive was not unpacked.")
        if not (m.isfile() or m.isdir()) or (m.isfile() and norm == os.curdir):
            raise DataError(f"{archive} contains {m.name!r}, which is not a plain file or "
                            f"folder; the archive was not unpacked.")


def _unpack_error(source: str, target: str, e: OSError) -> DataError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(f"the disk holding {target} ran out of space while unpacking {source}; "
                         f"nothing was unpacked, free some space (CIFAR-10 and CIFAR-100 each need "
                         f"about 180 MB) and try again.")
    return DataError(f"could not unpack {source} into {target} ({e.strerror or e}); nothing was "
                     f"unpacked, check that {target} is a folder you can write to.")


def _move_into_place(staging: str, target: str, source: str) -> None:
    """Move every top-level entry of staging into target, or none: an entry already in target is
    left untouched and named (only an empty folder is replaced)."""
    names = sorted(os.listdir(staging))
    for name in names:
        dest = os.path.join(target, name)
        empty_folder = (os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest)
                        and os.path.isdir(os.path.join(staging, name)))
        if os.path.lexists(dest) and not empty_folder:
            kind = "folder" if os.path.isdir(dest) else "file"
            raise DataError(f"{dest} is in the way of unpacking {source}: a {kind} of that name is "
                            f"already there and was left untouched; move or delete it and try "
                            f"again.")
    moved = []
    try:
        for name in names:
            was_empty_folder = os.path.isdir(os.path.join(target, name))
            os.replace(os.path.join(staging, name), os.path.join(target, name))
            moved.append((name, was_empty_folder))
    except BaseException:
        for name, was_empty_folder in reversed(moved):  # put target back as it was
            os.replace(os.path.join(target, name), os.path.join(staging, name))
            if was_empty_folder:
                os.mkdir(os.path.join(target, name))
        raise


def _safe_extract(archive: str, target: str, source: str = None) -> None:
    """Unpack a .tar.gz into target, refusing members that are links, devices or escape target.

    Members are written to a hidden temporary folder inside target and moved into place only when
    all are complete, so a failure (a full disk, something in the way, Ctrl-C) leaves target as it
    was. ``source`` names the archive in messages (default: its path).
    """
    source = source or archive
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            _check_members(source, target, members)
            try:
                staging = tempfile.mkdtemp(prefix=".cifar-unpacking.", dir=target)
            except OSError as e:
                raise _unpack_error(source, target, e) from None
            try:
                for m in members:
                    dest = os.path.join(staging, m.name)
                    if m.isdir():
                        os.makedirs(dest, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    with tar.extractfile(m) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                _move_into_place(staging, target, source)
            except gzip.BadGzipFile:  # an OSError, yet the archive's fault: reported below
                raise
            except OSError as e:
                raise _unpack_error(source, target, e) from None
            finally:
                shutil.rmtree(staging)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{source} could not be unpacked ({e or type(e).__name__}); it is corrupt "
                        f"or not a .tar.gz archive.") from None


def _md5_of_file(path: str) -> str:
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); check its permissions.") from None
    return digest.hexdigest()


def ensure_dataset(data_dir: str, dataset: str = "cifar10", download: bool = True, url: str = None,
                   md5: str = None, log=_to_stderr) -> None:
    """Make sure data_dir holds the files of dataset ("cifar10" or "cifar100").

    Nothing happens if it does. Otherwise the official archive (``cifar-10-python.tar.gz``,
    ``cifar-100-python.tar.gz``) in data_dir, if there, is unpacked once its MD5 matches (no
    network needed; a mismatch is refused and the file kept); otherwise the archive is downloaded
    from url when download is on. url and md5 default to the official ones of dataset; an md5 of
    "" checks none. ``log`` gets one line saying which of these happens.
    """
    ds = _data_set(dataset)
    url = ds.url if url is None else url
    md5 = ds.md5 if md5 is None else md5
    _refuse_file_as_data_dir(data_dir, ds)
    if has_dataset(data_dir, dataset):
        return
    local = os.path.join(data_dir, ds.archive)
    if os.path.isfile(local):
        found = _md5_of_file(local)
        if md5 and found != md5:
            raise DataError(f"{local} has MD5 {found}, not {md5} as the official archive has; "
                            f"delete it, or replace it with the official {ds.archive}.")
        log(f"{ds.name} not found in {data_dir}; unpacking {local}")
        _safe_extract(local, data_dir)
        return
    if not download:
        raise DataError(f"{data_dir} holds no {ds.name}; put the contents of {ds.archive} "
                        f"({ds.folder}/) there, or drop --no_download to fetch it.")
    log(f"{ds.name} not found in {data_dir}; downloading {url}")
    download_dataset(data_dir, dataset, url, md5)


def ensure_cifar10(data_dir: str, download: bool = True, url: str = CIFAR10_URL,
                   md5: str = CIFAR10_MD5, log=_to_stderr) -> None:
    """ensure_dataset for CIFAR-10."""
    ensure_dataset(data_dir, "cifar10", download, url, md5, log)


def download_cifar10(data_dir: str, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     progress: bool = None) -> None:
    """download_dataset for CIFAR-10."""
    download_dataset(data_dir, "cifar10", url, md5, progress)


def download_dataset(data_dir: str, dataset: str = "cifar10", url: str = None, md5: str = None,
                     progress: bool = None) -> None:
    """Fetch the archive of dataset into data_dir, check its MD5 and unpack it there; url and md5
    default to the official ones (an md5 of "" checks none)."""
    from tqdm import tqdm

    ds = _data_set(dataset)
    url = ds.url if url is None else url
    md5 = ds.md5 if md5 is None else md5
    _refuse_file_as_data_dir(data_dir, ds)
    created = not os.path.isdir(data_dir)
    try:
        try:
            os.makedirs(data_dir, exist_ok=True)
            fd, part = tempfile.mkstemp(prefix=f".{ds.archive[:-len('.tar.gz')]}.", suffix=".part",
                                        dir=data_dir)
        except OSError as e:
            raise DataError(f"cannot write to {data_dir} ({e.strerror}); choose a --data_dir you "
                            f"can write to.") from None
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        total = int(response.headers.get("Content-Length") or 0) or None
                        with tqdm(total=total, unit="B", unit_scale=True, desc=ds.name,
                                  disable=None if progress is None else not progress) as bar:
                            for chunk in iter(lambda: response.read(1 << 20), b""):
                                out.write(chunk)
                                digest.update(chunk)
                                bar.update(len(chunk))
                except (urllib.error.URLError, OSError, ValueError) as e:
                    reason = getattr(e, "reason", None) or e
                    raise DataError(f"could not download {ds.name} from {url} ({reason}); download "
                                    f"{ds.archive} yourself and put it in {data_dir}, or unpack it "
                                    f"there so that {os.path.join(data_dir, ds.folder)} holds "
                                    f"{ds.contents}.") from None
            if md5 and digest.hexdigest() != md5:
                raise DataError(f"the file downloaded from {url} has MD5 {digest.hexdigest()}, not "
                                f"{md5}, and was discarded; try again, or put the official "
                                f"{ds.archive} in {data_dir} yourself.")
            _safe_extract(part, data_dir, source=f"the archive from {url}")
        finally:
            if os.path.exists(part):
                os.remove(part)
    finally:
        if created and os.path.isdir(data_dir) and not os.listdir(data_dir):
            os.rmdir(data_dir)  # leave no trace of a failed first download
