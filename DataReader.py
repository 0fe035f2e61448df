"""Reading CIFAR-10 and private image sets from disk, safely.

Images travel as rows of 3072 uint8 values in the official layout: the red plane, then green, then
blue, each 32x32 row-major; ``row.reshape(3, 32, 32)`` gives (C, H, W).

Nothing here runs code from a file: CIFAR batches go through an unpickler that admits only the few
numpy and codec functions those files need, and private sets are read with ``allow_pickle=False``.
"""
import hashlib
import importlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np

from configure import CIFAR10_MD5, CIFAR10_URL

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
ROW = 3 * 32 * 32


class DataError(ValueError):
    """Data on disk is missing or unusable; the message names the file and what to do."""


# --------------------------------------------------------------------------------------------
# Restricted unpickling

def _numpy_attr(private_module: str, public_module: str, name: str):
    """The object numpy 1 stores as ``public_module.name`` and numpy 2 as ``private_module.name``."""
    for module in (private_module, public_module):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has neither {private_module}.{name} nor {public_module}.{name}")


def _allowed_globals() -> dict:
    reconstruct = _numpy_attr("numpy._core.multiarray", "numpy.core.multiarray", "_reconstruct")
    frombuffer = _numpy_attr("numpy._core.numeric", "numpy.core.numeric", "_frombuffer")
    allowed = {("_codecs", "encode"): __import__("_codecs").encode,
               ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer  # protocol 5 arrays
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: any global outside a short list is refused before it runs."""

    _allowed = None

    def find_class(self, module, name):
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _allowed_globals()
        try:
            return SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays, "
                f"lists and strings") from None


def safe_unpickle(data: bytes):
    # encoding='bytes' keeps Python 2 strings (the pixel buffers of the official files) as bytes.
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


# --------------------------------------------------------------------------------------------
# CIFAR-10 batches

def _batch_folder(data_dir: str) -> str:
    """The folder holding data_batch_1..5 and test_batch: data_dir itself or data_dir/FOLDER."""
    for candidate in (os.path.join(data_dir, FOLDER), data_dir):
        if os.path.isfile(os.path.join(candidate, TEST_BATCH)) or \
                os.path.isfile(os.path.join(candidate, TRAIN_BATCHES[0])):
            return candidate
    return None


def has_cifar10(data_dir: str) -> bool:
    return _batch_folder(data_dir) is not None


def _read_batch(path: str, num_classes: int):
    """One batch file -> (x (n, 3072) uint8, y (n,) int64)."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path} is missing; put all of data_batch_1..5 and test_batch from the "
                        f"CIFAR-10 python version in {os.path.dirname(path)}.") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); check its permissions.") from None
    try:
        batch = safe_unpickle(raw)
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):
            raise DataError(f"{path} is not a CIFAR-10 batch and was not loaded: {e}. Replace it "
                            f"with the official file.") from None
        raise DataError(f"{path} is corrupt or truncated ({e}); download CIFAR-10 again.") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeDecodeError, struct.error) as e:
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}); download CIFAR-10 "
                        f"again.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} does not hold a CIFAR-10 batch dict; replace it with the official "
                        f"file.")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks the 'data' or 'labels' entry of a CIFAR-10 batch; replace it "
                        f"with the official file.")
    x, labels = batch["data"], batch["labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != ROW:
        what = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), found {what}; "
                        f"replace it with the official file.")
    try:
        y = np.asarray(labels)
        if y.size == 0:  # np.asarray([]) is float; a batch of no images has no labels to check
            y = y.astype(np.int64)
    except (ValueError, TypeError):
        y = np.asarray([], dtype=object)
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise DataError(f"{path}: 'labels' must be {x.shape[0]} integers, one per image; replace "
                        f"{name} with the official file.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), found {y.min()}..{y.max()}; "
                        f"check the file or --num_classes.")
    return np.ascontiguousarray(x), y.astype(np.int64)


def load_data(data_dir: str, num_classes: int = 10):
    """Read the CIFAR-10 python batches under ``data_dir``.

    Returns x_train (N, 3072) uint8, y_train (N,) int64, x_test (M, 3072) uint8, y_test (M,) int64;
    N = 50,000 and M = 10,000 for the official files, fewer for a small copy.
    """
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir} does not exist; create it with CIFAR-10 in it, or "
                        f"pass --data_dir.")
    folder = _batch_folder(data_dir)
    if folder is None:
        raise DataError(f"{data_dir} holds no CIFAR-10 batches; put the contents of "
                        f"cifar-10-python.tar.gz ({FOLDER}/data_batch_1..5, test_batch) there.")
    train = [_read_batch(os.path.join(folder, name), num_classes) for name in TRAIN_BATCHES]
    x_test, y_test = _read_batch(os.path.join(folder, TEST_BATCH), num_classes)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


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

def load_testing_images(path: str) -> np.ndarray:
    """Read a private ``.npy`` image set -> (N, 3072) float32 rows in the official layout, in [0, 255].

    Accepted: (N, 3072) rows in the official layout, (N, 32, 32, 3) or (N, 3, 32, 32); uint8, or
    float with values in [0, 255].
    """
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"private data file {path} does not exist; pass --private_data with the "
                        f"path of your .npy file.") from None
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds Python objects, which are not loaded; save the images "
                            f"as a plain uint8 or float array with np.save.") from None
        raise DataError(f"{path} is not a readable .npy file ({e}); save the images with "
                        f"np.save.") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy file ({e}); save the images with "
                        f"np.save.") from None
    if not isinstance(x, np.ndarray):
        raise DataError(f"{path} is an .npz archive; save a single array with np.save.")
    if x.dtype.kind not in "uif":
        raise DataError(f"{path} holds {x.dtype} values; images must be uint8 or float in [0, 255].")
    if x.ndim == 2 and x.shape[1] == ROW:
        rows = x
    elif x.ndim == 4 and x.shape[1:] == (32, 32, 3):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), ROW)
    elif x.ndim == 4 and x.shape[1:] == (3, 32, 32):
        rows = x.reshape(len(x), ROW)
    else:
        raise DataError(f"{path} has shape {x.shape}; expected (N, 3072), (N, 32, 32, 3) or "
                        f"(N, 3, 32, 32).")
    if len(rows) == 0:
        raise DataError(f"{path} holds no images.")
    rows = rows.astype(np.float32)
    if not np.isfinite(rows).all():
        raise DataError(f"{path} contains NaN or infinite values; fix or drop those images.")
    if rows.min() < 0 or rows.max() > 255:
        raise DataError(f"{path} has values in [{rows.min():g}, {rows.max():g}]; pixels must lie in "
                        f"[0, 255] (scale images in [0, 1] by 255).")
    return np.ascontiguousarray(rows)


# --------------------------------------------------------------------------------------------
# Download

def _safe_extract(archive: str, target: str) -> None:
    """Unpack a .tar.gz into target, refusing members that are links, devices or escape target."""
    root = os.path.realpath(target)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            dest = os.path.realpath(os.path.join(root, m.name))
            if os.path.isabs(m.name) or not (dest == root or dest.startswith(root + os.sep)):
                raise DataError(f"{archive} contains the path {m.name!r}, which leaves {target}; "
                                f"the archive was not unpacked.")
            if not (m.isfile() or m.isdir()):
                raise DataError(f"{archive} contains {m.name!r}, which is not a plain file or "
                                f"folder; the archive was not unpacked.")
        for m in members:
            dest = os.path.join(root, m.name)
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def download_cifar10(data_dir: str, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     progress: bool = None) -> None:
    """Fetch the CIFAR-10 archive into data_dir, check its MD5 and unpack it there."""
    from tqdm import tqdm

    created = not os.path.isdir(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=".cifar-10-python.", suffix=".part", dir=data_dir)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10",
                              disable=None if progress is None else not progress) as bar:
                        for chunk in iter(lambda: response.read(1 << 20), b""):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise DataError(f"could not download CIFAR-10 from {url} ({reason}); download "
                                f"cifar-10-python.tar.gz yourself and unpack it in {data_dir}, so "
                                f"that {os.path.join(data_dir, FOLDER)} holds data_batch_1..5 and "
                                f"test_batch.") from None
        if md5 and digest.hexdigest() != md5:
            raise DataError(f"the file downloaded from {url} has MD5 {digest.hexdigest()}, not {md5}; "
                            f"it was discarded. Try again, or unpack the official archive in "
                            f"{data_dir} yourself.")
        try:
            _safe_extract(part, data_dir)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DataError(f"the archive from {url} could not be unpacked ({e}).") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
        if created and not os.listdir(data_dir):  # leave no trace of a failed first download
            os.rmdir(data_dir)
