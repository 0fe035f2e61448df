"""Small CIFAR-10 data sets in the official formats, made by the tests themselves."""
import os
import pickle
import struct

import numpy as np

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


class Py2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote its str: SHORT_BINSTRING / BINSTRING opcodes, as in the
    official CIFAR-10 files (Python 3 would write them through _codecs.encode). Text (numpy's dtype
    codes such as 'u1' and '|', which Python 2 numpy gave as str) is written the same way."""

    def _write_string(self, data: bytes):
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def save_bytes(self, obj):
        self._write_string(obj)
        self.memoize(obj)

    def save_str(self, obj):
        self._write_string(obj.encode("latin1"))
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str

    def save_global(self, obj, name=None):
        # numpy 2 names its reconstructor numpy._core...; the official files say numpy.core...
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            self.write(pickle.GLOBAL + module.replace("numpy._core", "numpy.core").encode()
                       + b"\n" + (name or obj.__name__).encode() + b"\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch[type(len)] = save_global
    dispatch[type] = save_global


def py2_dumps(obj) -> bytes:
    import io
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_batch(n: int, rng: np.random.Generator, num_classes: int = 10, learnable: bool = True):
    """n images and labels; with learnable, each class has its own colour so a net can learn it."""
    labels = rng.integers(0, num_classes, n)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    if learnable:
        planes = data.reshape(n, 3, 1024)
        for c in range(num_classes):
            rows = labels == c
            planes[rows, c % 3] //= 4  # a dark plane whose position depends on the class
            planes[rows, (c // 3) % 3, :256 * (1 + c % 4)] = 255
    return data, labels


def write_cifar(folder: str, n_per_batch: int = 20, n_test: int = 20, seed: int = 0,
                style: str = "py2", learnable: bool = True, num_classes: int = 10) -> str:
    """Write data_batch_1..5 and test_batch under folder/cifar-10-batches-py; return that path.

    style: "py2" (official byte format), or "p2".."p5" (the dicts re-saved by Python 3 with that
    pickle protocol and str keys).
    """
    out = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [(b, n_per_batch) for b in TRAIN] + [("test_batch", n_test)]:
        data, labels = make_batch(n, rng, num_classes, learnable)
        if style == "py2":
            blob = py2_dumps({b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                              b"data": data,
                              b"filenames": [f"img_{i}.png".encode() for i in range(n)]})
        else:
            blob = pickle.dumps({"batch_label": name, "labels": [int(v) for v in labels],
                                 "data": data, "filenames": [f"img_{i}.png" for i in range(n)]},
                                protocol=int(style[1:]))
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)
    return out


class Calls:
    """Pickles as a call of func(*args): what a hostile file holds in place of data."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# --------------------------------------------------------------------------------------------
# CIFAR-10's batches.meta, and CIFAR-100

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
CIFAR100_FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
CIFAR100_COARSE_NAMES = [f"coarse_{i:02d}" for i in range(20)]
# The superclass of each fine class: five fine classes each, and not simply fine // 5, so that a
# loader mixing the two label sets up is caught.
COARSE_OF_FINE = np.array([(7 * f) % 20 for f in range(100)])


def _dump(obj_py2: dict, style: str) -> bytes:
    """obj (bytes keys and strings, as Python 2 wrote them) in the given style: "py2", or "p2".."p5"
    (re-saved by Python 3 with that protocol, keys and strings as str)."""
    if style == "py2":
        return py2_dumps(obj_py2)

    def text(v):
        if isinstance(v, bytes):
            return v.decode("latin1")
        if isinstance(v, list):
            return [text(e) for e in v]
        return v

    return pickle.dumps({k.decode("latin1"): text(v) for k, v in obj_py2.items()},
                        protocol=int(style[1:]))


def write_cifar10_meta(folder: str, names=CIFAR10_NAMES, style: str = "py2") -> str:
    """Write batches.meta (as in the official archive) into folder; return its path."""
    path = os.path.join(folder, "batches.meta")
    with open(path, "wb") as f:
        f.write(_dump({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names],
                       b"num_vis": 3072}, style))
    return path


def cifar100_arrays(n_train: int, n_test: int, seed: int = 0):
    """The images and labels write_cifar100 writes: (x, fine, coarse) for train, then for test."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_train, n_test):
        x, fine = make_batch(n, rng, 100)
        out.append((x, fine, COARSE_OF_FINE[fine]))
    return out


def write_cifar100(folder: str, n_train: int = 40, n_test: int = 16, seed: int = 0,
                   style: str = "py2", meta: bool = True) -> str:
    """Write train, test and (with meta) meta under folder/cifar-100-python; return that path.

    The official format: dicts with b'data' (n, 3072) uint8, b'fine_labels', b'coarse_labels',
    b'filenames', b'batch_label'; meta holds b'fine_label_names' and b'coarse_label_names'.
    style: "py2" (official byte format), or "p2".."p5" (re-saved by Python 3, str keys).
    """
    out = os.path.join(folder, "cifar-100-python")
    os.makedirs(out, exist_ok=True)
    for name, (x, fine, coarse) in zip(("train", "test"), cifar100_arrays(n_train, n_test, seed)):
        blob = _dump({b"batch_label": f"{name}ing batch 1 of 1".encode(),
                      b"fine_labels": [int(v) for v in fine],
                      b"coarse_labels": [int(v) for v in coarse], b"data": x,
                      b"filenames": [f"img_{i}.png".encode() for i in range(len(x))]}, style)
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)
    if meta:
        with open(os.path.join(out, "meta"), "wb") as f:
            f.write(_dump({b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
                           b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]},
                          style))
    return out
