"""DataReader.py: every on-disk format of CIFAR-10 loads the same; anything else is refused by name."""
import io
import os
import pickle
import pickletools
import struct
import tracemalloc

import numpy as np
import pytest

import DataReader
from trainer.data import safe_pickle
from DataReader import (DataError, fingerprint, load_data, load_testing_images, train_valid_split,
                        train_vaild_split)
from cifar_files import TRAIN, Calls, make_batch, py2_dumps, write_cifar

STYLES = ["py2", "p2", "p3", "p4", "p5"]


def expected_arrays(n_per_batch, n_test, seed=0):
    """What write_cifar wrote, rebuilt from the same generator (independently of any file)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in TRAIN:
        x, y = make_batch(n_per_batch, rng)
        xs.append(x)
        ys.append(y)
    x_test, y_test = make_batch(n_test, rng)
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


def batches(tmp_path, style="py2", n_per_batch=6, n_test=4, seed=0):
    data_dir = tmp_path / f"data_{style}"
    folder = write_cifar(str(data_dir), n_per_batch, n_test, seed, style)
    return str(data_dir), folder


def write_batch(path, data, labels, style="py2"):
    if style == "py2":
        blob = py2_dumps({b"batch_label": b"x", b"labels": labels, b"data": data,
                          b"filenames": [b"a.png"] * (len(labels) if hasattr(labels, "__len__") else 0)})
    else:
        blob = pickle.dumps({"batch_label": "x", "labels": labels, "data": data}, protocol=int(style[1]))
    with open(path, "wb") as f:
        f.write(blob)


def assert_names(info, path):
    """The DataError message names the offending file by its path."""
    assert str(path) in str(info.value), str(info.value)


# ------------------------------------------------------------------ formats

@pytest.mark.parametrize("style", STYLES)
def test_every_style_loads_the_written_arrays(tmp_path, style):
    data_dir, _ = batches(tmp_path, style)
    x_train, y_train, x_test, y_test = load_data(data_dir)
    ex_train, ey_train, ex_test, ey_test = expected_arrays(6, 4)
    assert x_train.dtype == np.uint8 and x_test.dtype == np.uint8
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert x_train.shape == (30, 3072) and y_train.shape == (30,)
    assert x_test.shape == (4, 3072) and y_test.shape == (4,)
    np.testing.assert_array_equal(x_train, ex_train)
    np.testing.assert_array_equal(y_train, ey_train)
    np.testing.assert_array_equal(x_test, ex_test)
    np.testing.assert_array_equal(y_test, ey_test)
    assert x_train.flags.c_contiguous


def test_all_styles_give_identical_arrays(tmp_path):
    results = [load_data(batches(tmp_path, s, 3, 2)[0]) for s in STYLES]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_py2_file_really_uses_python2_opcodes(tmp_path):
    # Guards the fixture: the official format stores pixels with (SHORT_)BINSTRING and names the
    # numpy 1 reconstructor.
    _, folder = batches(tmp_path, "py2")
    raw = open(os.path.join(folder, "data_batch_1"), "rb").read()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "BINSTRING" in opcodes or "SHORT_BINSTRING" in opcodes
    assert not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE"}  # dtype codes too are bytes


def test_python2_numpy_bytes_load(tmp_path):
    # A batch spelled out opcode by opcode as Python 2's numpy pickled a uint8 array (dtype code
    # and byte order as byte strings, the dtype's align and copy as the ints 0 and 1), checked
    # against numpy's own unpickling of the same bytes.
    pixels = bytes(range(256)) * 12  # one image
    array = (b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85U\x01b"
             b"\x87Rq\x04(K\x01K\x01M\x00\x0c\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06"
             b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T\x00\x0c\x00\x00"
             + pixels + b"tb")
    blob = b"\x80\x02}q\x00(U\x04dataq\x01" + array + b"U\x06labelsq\x07]q\x08K\x07au."
    reference = pickle.loads(blob, encoding="bytes")
    assert reference[b"data"].dtype == np.uint8 and reference[b"data"].shape == (1, 3072)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in TRAIN + ["test_batch"]:
        (folder / name).write_bytes(blob)
    x_train, y_train, x_test, y_test = load_data(str(tmp_path))
    np.testing.assert_array_equal(x_test, reference[b"data"])
    np.testing.assert_array_equal(y_test, [7])
    assert x_train.shape == (5, 3072) and x_train.flags.writeable


def test_data_dir_may_point_straight_at_the_batches(tmp_path):
    data_dir, folder = batches(tmp_path)
    via_parent = load_data(data_dir)
    direct = load_data(folder)
    for a, b in zip(via_parent, direct):
        np.testing.assert_array_equal(a, b)
    assert DataReader.has_cifar10(data_dir) and DataReader.has_cifar10(folder)
    assert not DataReader.has_cifar10(str(tmp_path))


@pytest.mark.parametrize("n_per_batch, n_test", [(1, 1), (7, 3), (33, 0)])
def test_batches_of_any_row_count(tmp_path, n_per_batch, n_test):
    data_dir, _ = batches(tmp_path, "py2", n_per_batch, n_test)
    x_train, y_train, x_test, y_test = load_data(data_dir)
    assert x_train.shape == (5 * n_per_batch, 3072) and y_train.shape == (5 * n_per_batch,)
    assert x_test.shape == (n_test, 3072) and y_test.shape == (n_test,)
    assert y_test.dtype == np.int64


@pytest.mark.parametrize("style", STYLES)
def test_zero_row_batches_load_in_every_style(tmp_path, style):
    # Protocol 2 from Python 3 stores the empty pixel buffer as a call to bytes().
    data_dir, folder = batches(tmp_path, style, n_per_batch=0, n_test=0)
    if style == "p2":
        assert b"__builtin__\nbytes\n" in open(os.path.join(folder, "test_batch"), "rb").read()
    x_train, y_train, x_test, y_test = load_data(data_dir)
    assert x_train.shape == (0, 3072) and x_train.dtype == np.uint8
    assert x_test.shape == (0, 3072) and x_test.dtype == np.uint8
    assert y_train.shape == (0,) and y_test.shape == (0,) and y_test.dtype == np.int64


def test_batches_of_different_sizes_are_concatenated_in_order(tmp_path):
    data_dir, folder = batches(tmp_path, "py2")
    rng = np.random.default_rng(9)
    x2, y2 = make_batch(11, rng)
    write_batch(os.path.join(folder, "data_batch_2"), x2, [int(v) for v in y2], "p3")
    x_train, y_train, _, _ = load_data(data_dir)
    assert len(x_train) == 6 + 11 + 6 * 3
    np.testing.assert_array_equal(x_train[6:17], x2)
    np.testing.assert_array_equal(y_train[6:17], y2)


def test_numpy2_reconstruct_path_loads(tmp_path):
    data_dir, folder = batches(tmp_path, "py2")
    reference = load_data(data_dir)
    for name in TRAIN + ["test_batch"]:
        path = os.path.join(folder, name)
        raw = open(path, "rb").read()
        assert raw.count(b"numpy.core.multiarray\n") == 1
        with open(path, "wb") as f:
            f.write(raw.replace(b"numpy.core.multiarray\n", b"numpy._core.multiarray\n"))
    assert b"numpy._core.multiarray\n" in open(os.path.join(folder, "test_batch"), "rb").read()
    for a, b in zip(reference, load_data(data_dir)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("style", ["p2", "p3", "p4", "p5"])
def test_fortran_ordered_and_big_endian_arrays_load_the_same(tmp_path, style):
    data_dir, folder = batches(tmp_path, style)
    x, y = make_batch(5, np.random.default_rng(1))
    write_batch(os.path.join(folder, "test_batch"), np.asfortranarray(x), y.astype(">i4"), style)
    _, _, x_test, y_test = load_data(data_dir)
    np.testing.assert_array_equal(x_test, x)
    np.testing.assert_array_equal(y_test, y)
    assert x_test.flags.c_contiguous and y_test.dtype == np.int64


def test_labels_as_numpy_array_are_accepted(tmp_path):
    data_dir, folder = batches(tmp_path, "p4")
    x, y = make_batch(5, np.random.default_rng(1))
    write_batch(os.path.join(folder, "test_batch"), x, y.astype(np.int32), "p4")
    _, _, x_test, y_test = load_data(data_dir)
    assert y_test.dtype == np.int64
    np.testing.assert_array_equal(y_test, y)


# ------------------------------------------------------------------ hostile pickles

def _hostile_payloads(marker):
    return {
        "os.system": Calls(os.system, f"touch {marker}"),
        "builtins.open": Calls(open, str(marker), "w"),
        "numpy.save": Calls(np.save, str(marker), np.zeros(1)),
    }


@pytest.mark.parametrize("which", ["os.system", "builtins.open", "numpy.save"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, which, protocol):
    data_dir, folder = batches(tmp_path)
    marker = tmp_path / "PWNED"
    payload = _hostile_payloads(marker)[which]
    path = os.path.join(folder, "data_batch_3")
    x, y = make_batch(6, np.random.default_rng(0))
    with open(path, "wb") as f:
        pickle.dump({"data": x, "labels": [int(v) for v in y], "extra": payload}, f, protocol=protocol)
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)
    assert "not loaded" in str(info.value) or "refusing" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "PWNED.npy").exists()


def test_hostile_pickle_alone_is_refused_by_safe_unpickle(tmp_path):
    marker = tmp_path / "marker"
    blob = pickle.dumps(Calls(open, str(marker), "w"), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_pickle.safe_unpickle(blob)
    assert not marker.exists()
    # The control: the same bytes do create the marker when unpickled without restriction,
    # so the refusal above is what protected it.
    handle = pickle.loads(blob)
    handle.close()
    assert marker.exists()


class _Dtype:
    """Pickles as numpy.dtype(code) with the state given (numpy's own: (3, '|', None, None, None,
    -1, -1, 0) for uint8)."""

    def __init__(self, code, state):
        self.code, self.state = code, state

    def __reduce__(self):
        return np.dtype, (self.code, False, True), self.state


class _Array:
    """Pickles as numpy does (_reconstruct, then a state with shape, dtype, order and data)."""

    def __init__(self, shape, dtype, data):
        self.shape, self.dtype, self.data = shape, dtype, data

    def __reduce__(self):
        reconstruct = np.zeros(0, np.uint8).__reduce__()[0]
        return reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.data)


@pytest.mark.parametrize("what, state", [
    ("object flags", (3, "|", None, None, None, -1, -1, 63)),
    ("refcount flag", (3, "<", None, None, None, -1, -1, 1)),
    ("fields", (3, "|", None, ("a",), {"a": (np.dtype("u1"), 0)}, -1, -1, 0)),
    ("a subarray", (3, "|", (np.dtype("u1"), (2,)), None, None, -1, -1, 0)),
    ("an unknown byte order", (3, "x", None, None, None, -1, -1, 0)),
    ("numpy's own state", None),
])
@pytest.mark.parametrize("entry", ["data", "labels"])
def test_numpy_dtype_states_beyond_plain_numbers_are_refused(tmp_path, capfd, what, state, entry):
    # numpy's own dtype.__setstate__ takes such flags from a file and then treats the numbers as
    # Python objects: internal errors, labels read from uninitialized memory.
    data_dir, folder = batches(tmp_path, "p4")
    path = os.path.join(folder, "data_batch_1")
    code, shape, size = ("u1", (2, 3072), 2 * 3072) if entry == "data" else ("i8", (2,), 16)
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    batch[entry] = _Array(shape, _Dtype(code, state) if state else np.dtype(code), bytes(size))
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)
    if state is None:  # the control: with numpy's own state the same file loads
        assert load_data(data_dir)[0].shape == (6 * 4 + 2, 3072)
        return
    with pytest.raises(DataError, match="refusing") as info:
        load_data(data_dir)
    assert_names(info, path)
    assert capfd.readouterr().err == ""  # and numpy printed no internal error


@pytest.mark.parametrize("code", ["O", "V8", "U3", "M8[s]", "(2,)u1", "u1,u1"])
def test_numpy_dtypes_other_than_plain_numbers_are_refused(tmp_path, code):
    data_dir, folder = batches(tmp_path, "p4")
    path = os.path.join(folder, "data_batch_1")
    with open(path, "wb") as f:
        pickle.dump({"data": _Array((1,), _Dtype(code, (3, "|", None, None, None, -1, -1, 0)),
                                    bytes(8)), "labels": [0]}, f, protocol=4)
    with pytest.raises(DataError, match="refusing") as info:
        load_data(data_dir)
    assert_names(info, path)


@pytest.mark.parametrize("module", [b"__builtin__", b"builtins"])
def test_bytes_with_arguments_is_refused(tmp_path, module):
    # bytes() is admitted for the empty buffer only: bytes(n) would allocate n bytes on request.
    data_dir, folder = batches(tmp_path, "p2")
    path = os.path.join(folder, "data_batch_1")
    blob = (b"\x80\x02}(X\x04\x00\x00\x00datac" + module + b"\nbytes\nJ@B\x0f\x00\x85R"
            b"X\x06\x00\x00\x00labels]u.")
    with open(path, "wb") as f:
        f.write(blob)
    with pytest.raises(DataError, match="refusing to load bytes") as info:
        load_data(data_dir)
    assert_names(info, path)


def test_a_file_cannot_change_the_loader(tmp_path):
    # BUILD with a slot state would set attributes on what a GLOBAL gave: here the default
    # arguments of the stand-in for _codecs.encode, for every later load.
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_1")
    with open(path, "wb") as f:
        f.write(b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__X\x06\x00\x00\x00latin1"
                b"\x85s\x86b.")
    encode = safe_pickle.SafeUnpickler(b"").find_class("_codecs", "encode")
    assert encode.__defaults__ is None
    with pytest.raises(DataError, match="refusing") as info:
        load_data(data_dir)
    assert_names(info, path)
    assert encode.__defaults__ is None


def _encode_call(text: str, encoding: str) -> bytes:
    """A protocol 2 pickle of ``_codecs.encode(text, encoding)``, as Python 3 pickles bytes."""
    def unicode(value: str) -> bytes:
        raw = value.encode("utf-8")
        return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"_codecs\nencode\n" + unicode(text)
            + unicode(encoding) + pickle.TUPLE2 + pickle.REDUCE + pickle.STOP)


def test_codecs_encode_is_admitted_for_latin1_only():
    assert safe_pickle.safe_unpickle(_encode_call("\x00\xff", "latin1")) == b"\x00\xff"
    for encoding in ("utf-8", "rot13", "hex", "LATIN1"):  # any other name looks a codec up
        with pytest.raises(pickle.UnpicklingError, match=f"_codecs.encode .*{encoding!r}"):
            safe_pickle.safe_unpickle(_encode_call("\x00\xff", encoding))


def test_a_refused_name_is_quoted_on_one_line(tmp_path):
    # A name with a line break in it (protocol 4 names are strings of any content) must not
    # break the one-line message.
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_1")
    with open(path, "wb") as f:
        f.write(b"\x80\x04\x8c\x03os\n\x8c\x07sys\ntem\x93.")
    with pytest.raises(DataError, match="refusing") as info:
        load_data(data_dir)
    assert_names(info, path)
    assert "\n" not in str(info.value) and "'os\\n.sys\\ntem'" in str(info.value)


# ------------------------------------------------------------------ broken files

def _corruptions(raw):
    return {
        "truncated_half": raw[: len(raw) // 2],
        "truncated_tail": raw[:-1],
        "empty": b"",
        "garbage": b"this is not a pickle at all\n" * 4,
        "bad_header": b"\xff\xfe" + raw[2:],
        "html": b"<html><body>404 Not Found</body></html>",
    }


@pytest.mark.parametrize("style", ["py2", "p2", "p4", "p5"])
@pytest.mark.parametrize("kind", ["truncated_half", "truncated_tail", "empty", "garbage",
                                  "bad_header", "html"])
def test_corrupt_or_truncated_batch_raises_data_error_naming_the_file(tmp_path, style, kind):
    data_dir, folder = batches(tmp_path, style)
    path = os.path.join(folder, "data_batch_2")
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(_corruptions(raw)[kind])
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)


@pytest.mark.parametrize("name", ["data_batch_4", "test_batch", "data_batch_1"])
def test_missing_batch_file_raises_data_error_naming_the_file(tmp_path, name):
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, name)
    os.remove(path)
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)
    assert "missing" in str(info.value)


@pytest.mark.parametrize("data, why", [
    (np.zeros((4, 3071), np.uint8), "shape"),
    (np.zeros((4, 32, 32, 3), np.uint8), "shape"),
    (np.zeros(3072, np.uint8), "shape"),
    (np.zeros((4, 3072), np.float32), "dtype"),
    (np.zeros((4, 3072), np.int64), "dtype"),
    ([[0] * 3072] * 4, "type"),
    (b"\x00" * (4 * 3072), "type"),
])
@pytest.mark.parametrize("style", ["py2", "p4"])
def test_wrong_data_shape_or_dtype_raises_data_error(tmp_path, data, why, style):
    data_dir, folder = batches(tmp_path, style)
    path = os.path.join(folder, "data_batch_5")
    write_batch(path, data, [0, 1, 2, 3], style)
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)
    assert "(n, 3072)" in str(info.value)


@pytest.mark.parametrize("labels", [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, "x"], [0.0, 1.0, 2.0, 3.0],
                                    None, [[0], [1], [2], [3]]])
def test_wrong_labels_raise_data_error(tmp_path, labels):
    data_dir, folder = batches(tmp_path, "p3")
    path = os.path.join(folder, "test_batch")
    write_batch(path, np.zeros((4, 3072), np.uint8), labels, "p3")
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)


@pytest.mark.parametrize("bad_label", [10, -1, 255])
def test_labels_out_of_range_raise_data_error(tmp_path, bad_label):
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_1")
    write_batch(path, np.zeros((3, 3072), np.uint8), [0, bad_label, 9])
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)
    assert "[0, 10)" in str(info.value)


def test_num_classes_bounds_the_labels(tmp_path):
    data_dir, folder = batches(tmp_path)
    with pytest.raises(DataError, match="num_classes"):
        load_data(data_dir, num_classes=2)
    assert load_data(data_dir, num_classes=10)[1].max() <= 9


@pytest.mark.parametrize("obj", [[1, 2, 3], {b"data": np.zeros((1, 3072), np.uint8)},
                                 {b"labels": [0]}, "a string"])
def test_not_a_batch_dict_raises_data_error(tmp_path, obj):
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_3")
    with open(path, "wb") as f:
        f.write(py2_dumps(obj))
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)


def test_data_and_labels_given_twice_are_refused(tmp_path):
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_2")
    x, y = make_batch(3, np.random.default_rng(0))
    with open(path, "wb") as f:
        pickle.dump({b"data": x, "data": x[:0], b"labels": [int(v) for v in y], "labels": []}, f,
                    protocol=2)
    with pytest.raises(DataError, match="twice") as info:
        load_data(data_dir)
    assert_names(info, path)


class _EmptyHanded:
    """Pickles as an array of the given shape whose pixels are not in the file."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __reduce__(self):
        reconstruct = np.zeros(0, np.uint8).__reduce__()[0]  # numpy's own, admitted by the loader
        return reconstruct, (np.ndarray, self.shape, self.dtype)


def test_array_without_its_data_is_refused(tmp_path):
    # A few hundred bytes that would give 300 MB of uninitialized memory as "images".
    data_dir, folder = batches(tmp_path, "p4")
    path = os.path.join(folder, "data_batch_4")
    with open(path, "wb") as f:
        pickle.dump({"data": _EmptyHanded((100000, 3072), np.uint8),
                     "labels": _EmptyHanded((100000,), np.int64)}, f, protocol=4)
    assert os.path.getsize(path) < 1000
    with pytest.raises(DataError, match="carries no data") as info:
        load_data(data_dir)
    assert_names(info, path)


@pytest.mark.parametrize("what, blob", [
    # [] memoized at index 5 million: the C unpickler grows its memo array to match (80 MB)
    ("a huge memo index", b"\x80\x02]r" + (5_000_000).to_bytes(4, "little") + b"."),
    # a bytearray said to hold 100 MB: pickle sets the memory aside before reading
    ("a huge bytearray length", b"\x80\x05\x96" + (100_000_000).to_bytes(8, "little") + b"ab."),
])
def test_a_few_bytes_cannot_ask_for_memory(tmp_path, what, blob):
    # Found by fuzzing: single flipped bytes gave such numbers near 10^9, and loading took
    # gigabytes and a minute.
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_1")
    with open(path, "wb") as f:
        f.write(blob)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_data(data_dir)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_names(info, path)
    assert peak < 10_000_000, f"{what}: {peak / 1e6:.0f} MB"


def test_batch_that_is_a_folder_is_named(tmp_path):
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_3")
    os.remove(path)
    os.mkdir(path)
    with pytest.raises(DataError, match="is a folder, not a batch file") as info:
        load_data(data_dir)
    assert_names(info, path)


def test_data_dir_that_is_a_file_is_named_as_a_file(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_data(str(path))
    assert str(info.value) == (f"--data_dir {path} is a file, not a folder; pass the folder that "
                               f"holds (or is to hold) cifar-10-batches-py.")


def test_batch_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "cifar-10-batches-py").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not the folder of CIFAR-10 batches") as info:
        load_data(str(tmp_path))
    assert_names(info, tmp_path / "cifar-10-batches-py")


def test_missing_data_folder_raises_data_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError) as info:
        load_data(str(missing))
    assert_names(info, missing)
    assert "does not exist" in str(info.value)


def test_empty_data_folder_raises_data_error_saying_what_to_put_there(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_data(str(empty))
    assert_names(info, empty)
    assert "cifar-10-batches-py" in str(info.value)


def test_unreadable_batch_raises_data_error(tmp_path):
    # A link to itself cannot be opened, even by root (as CI runs).
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_2")
    os.remove(path)
    os.symlink(path, path)
    with pytest.raises(DataError) as info:
        load_data(data_dir)
    assert_names(info, path)
    assert "cannot be read" in str(info.value) and "symbolic links" in str(info.value)


# ------------------------------------------------------------------ split and fingerprint

def test_train_valid_split_is_a_fixed_prefix_split():
    x = np.arange(100 * 3).reshape(100, 3)
    y = np.arange(100)
    x_tr, y_tr, x_va, y_va = train_valid_split(x, y, 40)
    np.testing.assert_array_equal(x_tr, x[:40])
    np.testing.assert_array_equal(y_tr, np.arange(40))
    np.testing.assert_array_equal(x_va, x[40:])
    np.testing.assert_array_equal(y_va, np.arange(40, 100))
    assert train_vaild_split is train_valid_split
    for a, b in zip(train_vaild_split(x, y, 99), (x[:99], y[:99], x[99:], y[99:])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -1, 100, 101, 45000])
def test_bad_split_index_raises_data_error(bad):
    x, y = np.zeros((100, 3072), np.uint8), np.zeros(100, np.int64)
    with pytest.raises(DataError) as info:
        train_valid_split(x, y, bad)
    assert "split_index" in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(DataError):
        train_vaild_split(x, y, bad)


def test_default_split_index_is_45000():
    x = np.zeros((50000, 1), np.uint8)
    y = np.arange(50000)
    _, y_tr, _, y_va = train_valid_split(x, y)
    assert len(y_tr) == 45000 and len(y_va) == 5000 and y_va[0] == 45000


def test_fingerprint_tells_data_sets_apart():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3072)).astype(np.uint8)
    y = rng.integers(0, 10, 20).astype(np.int64)
    fp = fingerprint(x, y)
    assert fp == fingerprint(x.copy(), y.copy())
    assert fp.startswith("20:")
    x2 = x.copy()
    x2[7, 100] ^= 1
    y2 = y.copy()
    y2[3] = (y2[3] + 1) % 10
    swapped = x[[1, 0] + list(range(2, 20))]
    others = {fingerprint(x2, y), fingerprint(x, y2), fingerprint(swapped, y), fingerprint(x[:19], y[:19])}
    assert fp not in others
    assert len(others) == 4


def test_fingerprint_of_loaded_data_differs_between_seeds(tmp_path):
    a = load_data(batches(tmp_path / "a", seed=0)[0])
    b = load_data(batches(tmp_path / "b", seed=1)[0])
    assert fingerprint(a[0], a[1]) != fingerprint(b[0], b[1])
    assert fingerprint(a[0], a[1]) == fingerprint(*load_data(batches(tmp_path / "c", seed=0)[0])[:2])


# ------------------------------------------------------------------ private test images

def _private_rows(n=5):
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    rows[0, :] = 0
    rows[1, :] = 255
    return rows


def _layouts(rows):
    chw = rows.reshape(len(rows), 3, 32, 32)
    hwc = chw.transpose(0, 2, 3, 1)
    assert hwc[2, 5, 7, 1] == rows[2, 1024 + 5 * 32 + 7]  # (N, H, W, C) really is the same image
    return {"rows": rows, "hwc": np.ascontiguousarray(hwc), "chw": chw}


@pytest.mark.parametrize("layout", ["rows", "hwc", "chw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int16])
def test_private_images_in_every_layout_give_the_same_rows(tmp_path, layout, dtype):
    rows = _private_rows()
    array = _layouts(rows)[layout].astype(dtype)
    path = tmp_path / f"private_{layout}.npy"
    np.save(path, array)
    out = load_testing_images(str(path))
    assert out.shape == (5, 3072) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rows.astype(np.float32))


def test_private_images_fractional_floats_are_kept(tmp_path):
    rows = _private_rows().astype(np.float64) * (254.5 / 255)
    path = tmp_path / "p.npy"
    np.save(path, rows)
    np.testing.assert_allclose(load_testing_images(str(path)), rows, rtol=1e-6)


@pytest.mark.parametrize("case", ["nan", "inf", "-inf", "negative", "above_255", "unit_scale_ok"])
def test_private_images_values_are_checked(tmp_path, case):
    rows = _private_rows().astype(np.float32)
    if case == "nan":
        rows[2, 10] = np.nan
    elif case == "inf":
        rows[3, 0] = np.inf
    elif case == "-inf":
        rows[3, 0] = -np.inf
    elif case == "negative":
        rows[1, 1] = -0.5
    elif case == "above_255":
        rows[4, 3071] = 255.5
    else:
        rows = rows / 255.0
    path = tmp_path / "private.npy"
    np.save(path, rows)
    if case == "unit_scale_ok":  # in range, so accepted as given
        np.testing.assert_allclose(load_testing_images(str(path)), rows)
        return
    with pytest.raises(DataError) as info:
        load_testing_images(str(path))
    assert_names(info, path)
    assert ("NaN" in str(info.value)) == (case in ("nan", "inf", "-inf"))


@pytest.mark.parametrize("shape", [(5, 3071), (5, 32, 32), (5, 3, 32, 31), (5, 32, 3, 32), (3072,),
                                   (1, 5, 3, 32, 32), (0, 3072)])
def test_private_images_wrong_shapes_are_refused(tmp_path, shape):
    path = tmp_path / "private.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(DataError) as info:
        load_testing_images(str(path))
    assert_names(info, path)


def test_private_images_object_array_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "PWNED"
    array = np.empty(2, dtype=object)
    array[0] = Calls(open, str(marker), "w")
    array[1] = 3
    path = tmp_path / "objects.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(DataError) as info:
        load_testing_images(str(path))
    assert_names(info, path)
    assert "Python objects" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U3", "S4"])
def test_private_images_of_other_dtypes_are_refused(tmp_path, dtype):
    path = tmp_path / "private.npy"
    np.save(path, np.zeros((2, 3072), dtype=dtype))
    with pytest.raises(DataError) as info:
        load_testing_images(str(path))
    assert_names(info, path)


@pytest.mark.parametrize("content", ["missing", "text", "truncated", "npz", "under a file"])
def test_private_images_unreadable_files_are_refused(tmp_path, content):
    path = tmp_path / ("private.npz" if content == "npz" else "private.npy")
    if content == "under a file":  # --data_dir naming a file, with the default private path
        (tmp_path / "data").write_text("a file")
        path = tmp_path / "data" / "private_test_images.npy"
    if content == "text":
        path.write_text("1,2,3\n")
    elif content == "truncated":
        np.save(path, np.zeros((4, 3072), np.uint8))
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) - 100])
    elif content == "npz":
        np.savez(path, images=np.zeros((4, 3072), np.uint8))
    with pytest.raises(DataError) as info:
        load_testing_images(str(path))
    assert_names(info, path)


@pytest.mark.parametrize("layout", ["rows", "hwc", "chw"])
@pytest.mark.parametrize("order", ["fortran", "big_endian", "both"])
def test_private_images_in_fortran_order_or_big_endian_load_the_same(tmp_path, layout, order):
    rows = _private_rows()
    array = _layouts(rows)[layout].astype(np.float32)
    if order in ("big_endian", "both"):
        array = array.astype(">f4")
    if order in ("fortran", "both"):
        array = np.asfortranarray(array)
    path = tmp_path / "private.npy"
    np.save(path, array)
    assert (b"'fortran_order': True" in path.read_bytes()[:128]) == (order != "big_endian")
    out = load_testing_images(str(path))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rows.astype(np.float32))


def _npy_with_header(shape, descr="|u1", payload=b"", version=1):
    """An .npy file whose header says shape and descr, followed by payload."""
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    write = (np.lib.format.write_array_header_1_0 if version == 1
             else np.lib.format.write_array_header_2_0)
    write(buf, header)
    return buf.getvalue() + payload


@pytest.mark.parametrize("shape", [(10 ** 12, 3072), (2 ** 40, 32, 32, 3), (5, 3072)])
def test_private_images_header_larger_than_the_file_is_refused_before_reading(tmp_path, shape):
    path = tmp_path / "private.npy"
    path.write_bytes(_npy_with_header(shape, payload=b"\x00" * 3072))
    with pytest.raises(DataError, match="is truncated: its header describes") as info:
        load_testing_images(str(path))
    assert_names(info, path)
    assert "3072 bytes follow" in str(info.value)


def test_private_images_extra_bytes_after_the_images_are_refused(tmp_path):
    path = tmp_path / "private.npy"
    path.write_bytes(_npy_with_header((1, 3072), payload=b"\x00" * 3073))
    with pytest.raises(DataError, match="extra bytes") as info:
        load_testing_images(str(path))
    assert_names(info, path)


def test_private_images_header_version_2_loads(tmp_path):
    rows = _private_rows(2)
    path = tmp_path / "private.npy"
    path.write_bytes(_npy_with_header((2, 3072), payload=rows.tobytes(), version=2))
    np.testing.assert_array_equal(load_testing_images(str(path)), rows)


@pytest.mark.parametrize("content, says", [
    (b"1,2,3\n", "is not an .npy file"),
    (pickle.dumps(np.zeros((2, 3072), np.uint8)), "is not an .npy file"),
    (b"", "is empty"),
    (b"\x93NUMPY\x01\x00\xff\xff{'descr'", "corrupt .npy header"),
    (b"\x93NUMPY\x03\x00\x10\x00\x00\x00{}", "version 3.0"),
])
def test_private_images_that_are_not_npy_files_say_so(tmp_path, content, says):
    path = tmp_path / "private.npy"
    path.write_bytes(content)
    with pytest.raises(DataError, match=says) as info:
        load_testing_images(str(path))
    assert_names(info, path)
    assert "Python objects" not in str(info.value)


def test_private_images_npz_is_named_as_such(tmp_path):
    path = tmp_path / "private.npz"
    np.savez(path, images=np.zeros((4, 3072), np.uint8))
    with pytest.raises(DataError, match="is an .npz archive, not an .npy file") as info:
        load_testing_images(str(path))
    assert_names(info, path)


def test_private_images_folder_without_images_is_named_as_such(tmp_path):
    # A folder is a set of PNG/JPEG files (trainer/data/image_files.py); an empty one is refused.
    with pytest.raises(DataError, match="holds no PNG or JPEG files") as info:
        load_testing_images(str(tmp_path))
    assert_names(info, tmp_path)


def test_private_images_huge_floats_are_reported_as_out_of_range(tmp_path):
    # Checked before the conversion to float32, which would turn 1e300 into infinity.
    rows = _private_rows().astype(np.float64)
    rows[0, 0] = 1e300
    path = tmp_path / "private.npy"
    np.save(path, rows)
    with pytest.raises(DataError, match="pixels must lie in") as info:
        load_testing_images(str(path))
    assert "1e+300" in str(info.value)
