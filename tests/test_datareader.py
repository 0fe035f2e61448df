"""DataReader.py: every on-disk format of CIFAR-10 loads the same; anything else is refused by name."""
import os
import pickle

import numpy as np
import pytest

import DataReader
from DataReader import (DataError, fingerprint, load_data, load_testing_images, train_valid_split,
                        train_vaild_split)
from cifar_files import TRAIN, make_batch, py2_dumps, write_cifar

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
    assert pickle.BINSTRING in raw or pickle.SHORT_BINSTRING in raw


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


def test_labels_as_numpy_array_are_accepted(tmp_path):
    data_dir, folder = batches(tmp_path, "p4")
    x, y = make_batch(5, np.random.default_rng(1))
    write_batch(os.path.join(folder, "test_batch"), x, y.astype(np.int32), "p4")
    _, _, x_test, y_test = load_data(data_dir)
    assert y_test.dtype == np.int64
    np.testing.assert_array_equal(y_test, y)


# ------------------------------------------------------------------ hostile pickles

class _Hostile:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_payloads(marker):
    return {
        "os.system": _Hostile(os.system, f"touch {marker}"),
        "builtins.open": _Hostile(open, str(marker), "w"),
        "numpy.save": _Hostile(np.save, str(marker), np.zeros(1)),
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
    blob = pickle.dumps(_Hostile(open, str(marker), "w"), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        DataReader.safe_unpickle(blob)
    assert not marker.exists()
    # The control: the same bytes do create the marker when unpickled without restriction,
    # so the refusal above is what protected it.
    handle = pickle.loads(blob)
    handle.close()
    assert marker.exists()


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_batch_raises_data_error(tmp_path):
    data_dir, folder = batches(tmp_path)
    path = os.path.join(folder, "data_batch_2")
    os.chmod(path, 0)
    try:
        with pytest.raises(DataError) as info:
            load_data(data_dir)
        assert_names(info, path)
    finally:
        os.chmod(path, 0o644)


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
    array[0] = _Hostile(open, str(marker), "w")
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


@pytest.mark.parametrize("content", ["missing", "text", "truncated", "npz"])
def test_private_images_unreadable_files_are_refused(tmp_path, content):
    path = tmp_path / ("private.npz" if content == "npz" else "private.npy")
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
