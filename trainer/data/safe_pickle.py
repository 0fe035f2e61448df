"""A restricted unpickler for CIFAR-10 and CIFAR-100 files: files that come from strangers.

A batch names a few globals: numpy's array reconstruction (_reconstruct, ndarray, dtype, or
_frombuffer for protocol 5) and, for protocol 2 written by Python 3, _codecs.encode and bytes.
None of numpy's own functions is called with what the file says: the names stand for the
stand-ins below, which check every argument and build the arrays with np.frombuffer. (numpy's
dtype.__setstate__ accepts flags from the file that make numpy treat plain numbers as Python
objects, and _reconstruct alone gives an array of uninitialized memory.)
"""
import io
import math
import pickle
import struct

import numpy as np


def _text(value):
    """Python 2 strings arrive as bytes (encoding='bytes'); dtype codes may be either."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _refuse(what: str):
    raise pickle.UnpicklingError(f"refusing to load {what}: a CIFAR file holds only plain "
                                 f"numeric numpy arrays, lists and strings")


_BYTEORDERS = ("<", ">", "|", "=")


class _Dtype:
    """Stands for ``numpy.dtype(code, align, copy)`` and its ``__setstate__(state)``."""

    code, byteorder = None, "|"  # what a file that skips __init__ (NEWOBJ) leaves

    def __init__(self, code, align=False, copy=True):
        self.code = _text(code)

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]): a
        # plain number type has no subarray, names or fields, elsize and alignment -1, flags 0.
        if not (isinstance(state, tuple) and len(state) >= 2 and _text(state[1]) in _BYTEORDERS):
            _refuse("a numpy dtype with an unknown state")
        if not all(v is None or (type(v) is int and v in (-1, 0)) for v in state[2:]):
            _refuse(f"a numpy dtype {self.code!r} with fields, subarrays or flags")
        self.byteorder = _text(state[1])

    def dtype(self) -> np.dtype:
        if not isinstance(self.code, str):
            _refuse(f"a numpy dtype given by a {type(self.code).__name__}")
        try:
            dtype = np.dtype(self.code)
        except (TypeError, ValueError, OverflowError, MemoryError):
            _refuse(f"the numpy dtype {self.code!r}")
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            _refuse(f"the numpy dtype {self.code!r}")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _array(data, dtype, shape, fortran_order) -> np.ndarray:
    """An array built from bytes in the file, once every part is checked."""
    if not isinstance(dtype, _Dtype):
        _refuse(f"an array whose dtype is a {type(dtype).__name__}")
    dtype = dtype.dtype()
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        _refuse(f"an array of shape {shape!r}")
    if not isinstance(data, (bytes, bytearray)):
        _refuse(f"an array whose data is a {type(data).__name__}")
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise pickle.UnpicklingError(f"an array of shape {shape} {dtype} needs {needed} bytes, the "
                                     f"file gives {len(data)}")
    flat = np.frombuffer(data, dtype)
    if not flat.flags.writeable:  # bytes: copy, so the arrays handed on can be written
        flat = flat.copy()
    return flat.reshape(shape, order="F" if fortran_order else "C")


class _NdarrayName:
    """Stands for ``numpy.ndarray``, which a batch names only as _reconstruct's first argument."""

    __slots__ = ()  # nothing for a file to set on it


class _Reconstructed:
    """Stands for ``_reconstruct(ndarray, shape, typecode)``; its ``__setstate__`` gives the real
    shape, dtype, order and data, and then the array is built."""

    array = None

    def __init__(self, cls, shape, typecode):
        if not isinstance(cls, _NdarrayName):
            _refuse(f"_reconstruct of a {type(cls).__name__}")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:  # (version, shape, dtype, fortran, data)
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            _refuse("an array with an unknown state")
        shape, dtype, fortran_order, data = state
        if fortran_order not in (True, False):
            _refuse(f"an array whose Fortran flag is {fortran_order!r}")
        self.array = _array(data, dtype, shape, fortran_order)


def _frombuffer(buffer, dtype, shape, order):
    """Stands for numpy's ``_frombuffer``: protocol 5 arrays, their data in the pickle itself."""
    if order not in ("C", "F"):
        _refuse(f"an array of order {order!r}")
    return _array(buffer, dtype, shape, order == "F")


def _latin1_encode(text, encoding):
    """Stands for ``_codecs.encode(text, "latin1")``, how Python 3 pickles bytes in protocol 2.

    Only that encoding is admitted: any other name would have codecs look a codec up by it.
    """
    if encoding != "latin1" or not isinstance(text, str):
        _refuse(f"_codecs.encode of a {type(text).__name__} with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    """Stands for ``bytes()``, how Python 3 pickles b"" in protocol 2 (the pixels of no images).

    Only the call without arguments is admitted: bytes(n) would hand out n bytes of memory.
    """
    if args:
        _refuse("bytes() with arguments")
    return b""


_ALLOWED = {("_codecs", "encode"): _latin1_encode,
            ("builtins", "bytes"): _empty_bytes,
            ("__builtin__", "bytes"): _empty_bytes,  # the same, as protocol 2 spells it
            ("numpy", "ndarray"): _NdarrayName(),
            ("numpy", "dtype"): _Dtype}
for _core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 names
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _Reconstructed
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


class SafeUnpickler(pickle._Unpickler):
    """Unpickler for CIFAR batches: any global outside a short list is refused before it runs.

    Built on pickle's Python implementation, as fast here (a batch's pixels are one string among
    some ten thousand small opcodes) and with its memo in a dict: the C one grows an array to the
    largest memo index a file names, so a few flipped bytes ask it for gigabytes of memory. For
    the same reason a bytearray's stated length is checked before any memory is set aside for it.
    A state (BUILD) is given only to the dtypes and arrays above: set on anything else (one of the
    admitted functions, say) it would change that thing for every later load.
    """

    def __init__(self, data: bytes):
        # encoding='bytes' keeps Python 2 strings (the pixels of the official files) as bytes.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.size = len(data)

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            what = f"{module}.{name}"
            _refuse(what if what.isprintable() else ascii(what))

    def load_bytearray8(self):
        size, = struct.unpack("<Q", self.read(8))
        if size > self.size:
            raise pickle.UnpicklingError(f"a bytearray of {size} bytes in a file of {self.size}")
        value = bytearray(self.read(size))
        if len(value) != size:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(value)

    def load_build(self):
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if not isinstance(target, (_Dtype, _Reconstructed)):
            _refuse(f"a state for a {type(target).__name__}")
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.BUILD[0]] = load_build


def safe_unpickle(data: bytes):
    """Unpickle a CIFAR batch; numpy arrays at the top level or among a dict's values come back
    as arrays, anything else as it was unpickled."""
    obj = SafeUnpickler(data).load()
    if isinstance(obj, dict):
        return {key: _built(value) for key, value in obj.items()}
    return _built(obj)


def _built(value):
    if isinstance(value, _Reconstructed):
        if value.array is None:
            _refuse("a numpy array that carries no data")
        return value.array
    return value
