"""Reading the batch files and meta files of CIFAR-10 and CIFAR-100, checking what they hold.

Nothing here runs code from a file: each file goes through the restricted unpickler of
``safe_pickle.py``, which admits only the names numpy's arrays are pickled with and builds the
arrays itself. Anything but the official layout is a DataError naming the file.
"""
import os
import pickle
import struct

import numpy as np

from trainer.data.errors import DataError, reason
from trainer.data.layout import CIFAR10, ROW, DataSet
from trainer.data.safe_pickle import safe_unpickle


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
            raise DataError(f"{path} is not a {ds.name} {what} and was not loaded ({reason(e)}); "
                            f"replace it with the official file.") from None
        raise DataError(f"{path} is corrupt or truncated ({reason(e)}); download {ds.name} "
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


def read_batch(path: str, num_classes: int, ds: DataSet = CIFAR10, label_key: str = "labels"):
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


def read_class_names(path: str, ds: DataSet, label_mode: str, count: int) -> list:
    """The meta file at path -> its ``count`` class names of label_mode, a list of str (index =
    label); a DataError naming the file when it is unusable."""
    entries = _unpickle_file(path, ds, "meta file", f"{ds.meta} from the {ds.name} python "
                                                    f"version, or delete it to show class numbers")
    key = ds.names[label_mode]
    names = entries.get(key)
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
