"""Reading a private ``.npy`` image set: its header is checked before any pixel is read.

The file is read with ``allow_pickle=False`` once its header says it holds plain numbers, and its
size must match what the header describes, so a few bytes cannot ask for gigabytes.
"""
import math
import os
import struct
import sys
import tokenize

import numpy as np

from trainer.data.errors import DataError, reason
from trainer.data.layout import ROW

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive


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
        raise DataError(f"{path} has a corrupt .npy header ({reason(e)}); save the images again "
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


def read_private_images(path: str) -> np.ndarray:
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
            raise DataError(f"{path} is not a readable .npy file ({reason(e)}); save the images "
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
