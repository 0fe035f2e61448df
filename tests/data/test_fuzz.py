"""Fuzzing the loaders the CLI uses: every mutated file ends in the project's own error or in a
sane load, never in another exception, a hang or code run from the file.

Each case is a mutated copy of a real-format file made by tests/cifar_files.py (or np.save):
truncated at many offsets, with bytes flipped (seeded), with its batch dict's keys or values
swapped, missing or retyped, or with a pickle that would run code. It goes through the functions
the CLI calls (``DataReader.load_data`` on a data_dir holding it among good batch files,
``DataReader.load_testing_images``) and must raise ``DataError`` naming the file, or, where the
mutation was harmless, return arrays that make sense (dtype, shape, labels in range, pixels in
[0, 255]).

The helpers at the top (``truncations``, ``byte_flips``, ``check_outcome``) serve any file format.
The default run takes a few seconds; ``RUN_FUZZ=1`` adds the ``fuzz_more`` tests, with many more
cases.
"""
import collections
import contextlib
import copy
import io
import os
import pickle
import random
import signal
import traceback

import numpy as np
import pytest
import torch

import DataReader
from trainer.run.checkpoints import CheckpointError
from configure import Config
from DataReader import DataError
from Model import MyModel
from cifar_files import Calls, make_batch, py2_dumps, write_cifar

CASE_SECONDS = 5  # hang guard per case; a case takes milliseconds
TARGET = "data_batch_3"  # the batch file that is mutated; the others stay good


# --------------------------------------------------------------------------------------------
# Reusable helpers

def truncations(blob: bytes, count: int):
    """Up to count prefixes of blob, from empty to one byte short, evenly spread: (label, bytes)."""
    offsets = sorted({int(n) for n in np.linspace(0, len(blob) - 1, count)})
    for n in offsets:
        yield f"truncated to {n} of {len(blob)} bytes", blob[:n]


def byte_flips(blob: bytes, count: int, seed: int, span=None, max_bytes: int = 3):
    """count copies of blob, each with 1 to max_bytes bytes changed to other random values;
    span=(start, stop) limits where. Seeded: the same arguments give the same cases."""
    rng = random.Random(seed)
    start, stop = span or (0, len(blob))
    start, stop = max(0, start), min(len(blob), stop)
    for i in range(count):
        mutated = bytearray(blob)
        where = sorted(rng.sample(range(start, stop), min(stop - start, rng.randint(1, max_bytes))))
        for position in where:
            mutated[position] ^= rng.randrange(1, 256)
        yield f"seed {seed} case {i}: bytes {where} changed", bytes(mutated)


class Hang(BaseException):
    """A case ran past its time limit (a BaseException, so the code under test cannot catch it)."""


@contextlib.contextmanager
def time_limit(seconds: float, label: str):
    """Raise Hang inside the block once it has run for seconds (SIGALRM: main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"{label}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_outcome(call, allowed_error, validate_ok, label: str, check_error=None,
                  seconds: float = CASE_SECONDS) -> str:
    """Run call(): it must raise allowed_error (which check_error, if given, then inspects) or
    return a result that validate_ok accepts. Any other exception, or a run past seconds, fails
    the test with label. Returns "refused" or "loaded"."""
    try:
        with time_limit(seconds, label):
            result = call()
    except allowed_error as e:
        if check_error is not None:
            check_error(e)
        return "refused"
    except Hang as e:
        pytest.fail(str(e))
    except Exception as e:  # the point of fuzzing: report it with the case that caused it
        pytest.fail(f"{label}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    try:
        validate_ok(result)
    except AssertionError as e:
        pytest.fail(f"{label}: loaded, but the result is wrong: {e}")
    return "loaded"


def names_file(path):
    """check_error for DataError: one line that names path."""
    def check(e):
        message = str(e)
        assert str(path) in message, f"the message does not name {path}: {message}"
        assert "\n" not in message, f"the message is not one line: {message!r}"
    return check


# --------------------------------------------------------------------------------------------
# Hostile payloads: each would create the marker file if it ran

def hostile_objects(marker):
    """(label, object) pairs whose unpickling, unrestricted, writes marker."""
    write = f"open({str(marker)!r}, 'w').close()"
    return [
        ("os.system", Calls(os.system, f"touch {marker}")),
        ("builtins.exec", Calls(exec, write)),
        ("builtins.eval", Calls(eval, write)),
        ("builtins.open", Calls(open, str(marker), "w")),
        ("numpy.save", Calls(np.save, str(marker), np.zeros(1))),
        ("pickle.loads", Calls(pickle.loads, pickle.dumps(Calls(open, str(marker), "w")))),
    ]


def hostile_opcodes(marker):
    """(label, bytes): hand-written pickles that reach a callable by each opcode that names one."""
    command = f"touch {marker}".encode()
    code = f"open({str(marker)!r}, 'w').close()".encode()
    return [
        ("GLOBAL+REDUCE", b"cos\nsystem\n(S'" + command + b"'\ntR."),
        ("INST", b"(S'" + command + b"'\nios\nsystem\n."),
        ("OBJ", b"(cos\nsystem\nS'" + command + b"'\no."),
        ("STACK_GLOBAL", b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(command)])
         + command + b"\x85R."),
        ("builtins.exec", b"\x80\x02cbuiltins\nexec\nX" + len(code).to_bytes(4, "little") + code
         + b"\x85R."),
        ("posix.system", b"cposix\nsystem\n(S'" + command + b"'\ntR."),
    ]


# --------------------------------------------------------------------------------------------
# CIFAR batches

def sane_cifar(arrays):
    """validate_ok for load_data: four arrays of the right dtypes and shapes, labels in range."""
    assert len(arrays) == 4
    x_train, y_train, x_test, y_test = arrays
    for x, y in ((x_train, y_train), (x_test, y_test)):
        assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
        assert x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072 and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.shape == (len(x),)
        if len(y):
            assert 0 <= y.min() and y.max() < 10, f"labels {y.min()}..{y.max()}"


class BatchFuzz:
    """A data_dir of good batches in one style; each case replaces TARGET and loads them all."""

    def __init__(self, tmp_path, style, rows=2):
        self.style = style
        self.data_dir = str(tmp_path / f"data_{style}")
        folder = write_cifar(self.data_dir, n_per_batch=rows, n_test=rows, seed=1, style=style)
        self.path = os.path.join(folder, TARGET)
        with open(self.path, "rb") as f:
            self.blob = f.read()
        self.marker = tmp_path / "CODE_RAN"
        self.outcomes = collections.Counter()

    def dumps(self, obj) -> bytes:
        if self.style == "py2":
            return py2_dumps(obj)
        return pickle.dumps(obj, protocol=int(self.style[1]))

    def run(self, label, blob):
        with open(self.path, "wb") as f:
            f.write(blob)
        outcome = check_outcome(lambda: DataReader.load_data(self.data_dir), DataError, sane_cifar,
                                f"{self.style} {TARGET} {label}", names_file(self.path))
        assert not self.marker.exists(), f"{label}: code from the file ran"
        self.outcomes[outcome] += 1
        return outcome


def dict_variants(data, labels, py2: bool):
    """(label, object, harmless): the batch dict with keys missing, swapped, retyped or added.
    py2: the file is written as Python 2 did, where text and bytes are one type."""
    recursive = list(labels)
    recursive.append(recursive)
    yield "labels missing", {"data": data}, False
    yield "data missing", {"labels": labels}, False
    yield "empty dict", {}, False
    yield "keys swapped", {"data": labels, "labels": data}, False
    yield "data as list", {"data": data.tolist(), "labels": labels}, False
    yield "data as bytes", {"data": data.tobytes(), "labels": labels}, False
    yield "data as None", {"data": None, "labels": labels}, False
    yield "data as 0-d array", {"data": np.ones((), np.uint8), "labels": labels}, False
    for dtype in (np.int8, np.int64, np.float32, np.float64, np.bool_):
        yield f"data as {np.dtype(dtype)}", {"data": data.astype(dtype), "labels": labels}, False
    yield "data flat", {"data": data.ravel(), "labels": labels}, False
    yield "data 3-d", {"data": data.reshape(len(data), 3, 1024), "labels": labels}, False
    yield "data one column short", {"data": data[:, :-1], "labels": labels}, False
    yield "data transposed", {"data": data.T, "labels": labels}, False
    yield "data in Fortran order", {"data": np.asfortranarray(data), "labels": labels}, True
    yield "labels as str", {"data": data, "labels": "".join(map(str, labels))}, False
    yield "labels as bytes", {"data": data, "labels": bytes(labels)}, False
    yield "labels as int", {"data": data, "labels": labels[0]}, False
    yield "labels as None", {"data": data, "labels": None}, False
    yield "labels as floats", {"data": data, "labels": [float(v) for v in labels]}, False
    yield "labels as bools", {"data": data, "labels": [bool(v % 2) for v in labels]}, False
    yield "labels as dict", {"data": data, "labels": dict(enumerate(labels))}, False
    yield "labels one too many", {"data": data, "labels": labels + [0]}, False
    yield "labels one short", {"data": data, "labels": labels[:-1]}, False
    yield "labels nested", {"data": data, "labels": [[v] for v in labels]}, False
    yield "labels ragged", {"data": data, "labels": [[1, 2], [3]]}, False
    yield "labels huge", {"data": data, "labels": [10 ** 30] * len(labels)}, False
    yield "labels negative", {"data": data, "labels": [-1] * len(labels)}, False
    yield "labels out of range", {"data": data, "labels": [10] * len(labels)}, False
    yield "labels containing themselves", {"data": data, "labels": recursive}, False
    yield "labels as tuple", {"data": data, "labels": tuple(labels)}, True
    yield "labels as int8 array", {"data": data, "labels": np.asarray(labels, np.int8)}, True
    yield "labels as uint64 array", {"data": data, "labels": np.asarray(labels, np.uint64)}, True
    yield "extra keys", {"data": data, "labels": labels, "extra": [1, 2], 5: "five"}, True
    yield "bytes keys", {b"data": data, b"labels": labels}, True
    yield "str and bytes keys", {b"data": data, "labels": labels}, True
    yield "data under bytes and str", {b"data": data, "data": data, "labels": labels}, py2
    yield "int keys", {0: data, 1: labels}, False
    yield "a list", [data, labels], False
    yield "a tuple", (data, labels), False
    yield "a bare array", data, False
    yield "None", None, False


@pytest.mark.parametrize("style", ["py2", "p2", "p5"])
def test_truncated_batches_are_refused(tmp_path, style):
    fuzz = BatchFuzz(tmp_path, style)
    outcomes = {fuzz.run(label, blob) for label, blob in truncations(fuzz.blob, 300)}
    assert outcomes == {"refused"}  # a prefix of a pickle is never a whole one


def _flip_cases(blob, count, seed):
    """Flips everywhere, and (twice as many) in the first and last 256 bytes, where a batch
    keeps its structure: the dict, the array headers, the labels."""
    yield from byte_flips(blob, count, seed)
    yield from byte_flips(blob, count, seed + 1, span=(0, 256))
    yield from byte_flips(blob, count, seed + 2, span=(len(blob) - 256, len(blob)))


@pytest.mark.parametrize("style", ["py2", "p2", "p5"])
def test_batches_with_flipped_bytes_are_refused_or_sane(tmp_path, style):
    fuzz = BatchFuzz(tmp_path, style)
    for label, blob in _flip_cases(fuzz.blob, 400, seed=0):
        fuzz.run(label, blob)
    assert fuzz.outcomes["refused"] > 0 and fuzz.outcomes["loaded"] > 0, fuzz.outcomes


@pytest.mark.parametrize("style", ["py2", "p2", "p5"])
def test_batch_dicts_with_wrong_keys_or_values_are_refused(tmp_path, style):
    fuzz = BatchFuzz(tmp_path, style)
    data, labels = make_batch(2, np.random.default_rng(5))
    labels = [int(v) for v in labels]
    for label, obj, harmless in dict_variants(data, labels, py2=style == "py2"):
        outcome = fuzz.run(label, fuzz.dumps(obj))
        assert outcome == ("loaded" if harmless else "refused"), f"{label}: {outcome}"


@pytest.mark.parametrize("style", ["py2", "p2", "p5"])
def test_batches_that_would_run_code_are_refused_and_run_nothing(tmp_path, style):
    fuzz = BatchFuzz(tmp_path, style)
    data, labels = make_batch(2, np.random.default_rng(5))
    labels = [int(v) for v in labels]
    for label, payload in hostile_objects(fuzz.marker):
        for where, obj in [("alone", payload), ("as labels", {"data": data, "labels": payload}),
                           ("as an extra entry", {"data": data, "labels": labels, "x": payload})]:
            assert fuzz.run(f"{label} {where}", fuzz.dumps(obj)) == "refused"
    for label, blob in hostile_opcodes(fuzz.marker):
        assert fuzz.run(label, blob) == "refused"
    assert not fuzz.marker.exists()


# --------------------------------------------------------------------------------------------
# Private .npy files

def sane_images(rows):
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.flags.c_contiguous
    assert rows.ndim == 2 and rows.shape[1] == 3072 and len(rows) >= 1
    assert np.isfinite(rows).all() and rows.min() >= 0 and rows.max() <= 255


def npy_bytes(header: str, payload: bytes = b"", version=(1, 0)) -> bytes:
    """An .npy file with the given header text (padded as np.save pads it) and payload."""
    size_bytes = 2 if version == (1, 0) else 4
    text = header.encode("latin1")
    pad = -(len(text) + 1 + 6 + 2 + size_bytes) % 64
    text += b" " * pad + b"\n"
    return (b"\x93NUMPY" + bytes(version) + len(text).to_bytes(size_bytes, "little") + text
            + payload)


class NpyFuzz:
    def __init__(self, tmp_path):
        self.path = tmp_path / "private.npy"
        self.marker = tmp_path / "CODE_RAN"
        self.outcomes = collections.Counter()

    def run(self, label, blob):
        self.path.write_bytes(blob)
        outcome = check_outcome(lambda: DataReader.load_testing_images(str(self.path)), DataError,
                                sane_images, f"private .npy {label}", names_file(self.path))
        assert not self.marker.exists(), f"{label}: code from the file ran"
        self.outcomes[outcome] += 1
        return outcome


def good_npys():
    """(label, bytes) of accepted private sets: rows of uint8 and an (N, 32, 32, 3) float32."""
    rng = np.random.default_rng(2)
    for label, array in [("uint8 rows", rng.integers(0, 256, (2, 3072)).astype(np.uint8)),
                         ("float32 hwc", rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32))]:
        buf = io.BytesIO()
        np.save(buf, array)
        yield label, buf.getvalue()


def npy_variants(marker):
    """(label, bytes, harmless): hand-made headers and files that are not what they claim."""
    rows = np.arange(3072, dtype=np.uint8)[None].repeat(2, 0)
    payload = rows.tobytes()
    header = "{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    yield "as np.save writes it", npy_bytes(header.format(descr="|u1", fortran=False,
                                                          shape=(2, 3072)), payload), True
    yield "Fortran order", npy_bytes(header.format(descr="|u1", fortran=True, shape=(2, 3072)),
                                     payload), True
    yield "big-endian uint16", npy_bytes(header.format(descr=">u2", fortran=False, shape=(1, 3072)),
                                         rows[0].astype(">u2").tobytes()), True
    yield "version 2.0", npy_bytes(header.format(descr="|u1", fortran=False, shape=(2, 3072)),
                                   payload, (2, 0)), True
    for shape in [(10 ** 12, 3072), (2 ** 62, 32, 32, 3), (-2, 3072), (2, -3072), (), (2,),
                  (0, 3072), (2, 3072, 1), (1, 3072)]:
        yield f"shape {shape}", npy_bytes(header.format(descr="|u1", fortran=False, shape=shape),
                                          payload), False
    for descr in ["|O", "<U3", "|b1", "<c8", "|V8", "<M8[s]", "<f8", "foo", "<u1000000000000",
                  [("a", "<f4")], [("a", "|u1", (3072,))]]:
        yield f"descr {descr!r}", npy_bytes(header.format(descr=descr, fortran=False,
                                                          shape=(2, 3072)), payload), False
    yield "fortran_order not a bool", npy_bytes(header.format(descr="|u1", fortran="'yes'",
                                                              shape=(2, 3072)), payload), False
    yield "header a list", npy_bytes("['|u1', False, (2, 3072)]", payload), False
    yield "header missing shape", npy_bytes("{'descr': '|u1', 'fortran_order': False}",
                                            payload), False
    yield "header with an extra key", npy_bytes("{'descr': '|u1', 'fortran_order': False, "
                                                "'shape': (2, 3072), 'x': 1}", payload), False
    yield "header calling code", npy_bytes(f"__import__('os').system('touch {marker}')",
                                           payload), False
    yield "header nested deeply", npy_bytes("(" * 5000 + ")" * 5000, payload), False
    good = npy_bytes(header.format(descr="|u1", fortran=False, shape=(2, 3072)), payload)
    for version in [(0, 0), (3, 0), (9, 9), (1, 255)]:
        yield f"version {version}", b"\x93NUMPY" + bytes(version) + good[8:], False
    yield "header length past the end", b"\x93NUMPY\x01\x00\xff\xff{'descr'", False
    yield "header too long", npy_bytes("{" + " " * 20000 + "}", payload), False
    objects = np.empty(2, dtype=object)
    objects[0] = Calls(open, str(marker), "w")
    buf = io.BytesIO()
    np.save(buf, objects, allow_pickle=True)
    yield "object array that would run code", buf.getvalue(), False
    yield "a pickle that would run code", pickle.dumps(Calls(os.system, f"touch {marker}")), False
    buf = io.BytesIO()
    np.savez(buf, images=rows)
    yield "an .npz", buf.getvalue(), False
    yield "text", b"1,2,3\n" * 10, False
    yield "empty", b"", False


def test_private_npy_variants_are_refused_or_sane(tmp_path):
    fuzz = NpyFuzz(tmp_path)
    for label, blob, harmless in npy_variants(fuzz.marker):
        outcome = fuzz.run(label, blob)
        assert outcome == ("loaded" if harmless else "refused"), f"{label}: {outcome}"


@pytest.mark.parametrize("which", [0, 1])
def test_truncated_private_npys_are_refused(tmp_path, which):
    fuzz = NpyFuzz(tmp_path)
    label, blob = list(good_npys())[which]
    outcomes = {fuzz.run(f"{label} {case}", cut) for case, cut in truncations(blob, 300)}
    assert outcomes == {"refused"}


@pytest.mark.parametrize("which", [0, 1])
def test_private_npys_with_flipped_bytes_are_refused_or_sane(tmp_path, which):
    fuzz = NpyFuzz(tmp_path)
    label, blob = list(good_npys())[which]
    for case, flipped in _flip_cases(blob, 300, seed=10):
        fuzz.run(f"{label} {case}", flipped)
    assert fuzz.outcomes["refused"] > 0 and fuzz.outcomes["loaded"] > 0, fuzz.outcomes


# --------------------------------------------------------------------------------------------
# Checkpoints

def _tiny_config(modeldir, **changes):
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=1, save_interval=1,
                  lr_decay_epochs=(), device="cpu", modeldir=str(modeldir), eval_batch_size=64,
                  amp="off")  # fp32: --amp auto would time bf16
    values.update(changes)
    return Config(**values)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """(bytes of model-1.ckpt from a real 1-epoch run, its training data)."""
    modeldir = tmp_path_factory.mktemp("fuzz_ckpt") / "m"
    x, y = make_batch(16, np.random.default_rng(0))
    MyModel(_tiny_config(modeldir), log=lambda *a: None).train(x, y)
    with open(modeldir / "model-1.ckpt", "rb") as f:
        return f.read(), x, y


class CheckpointFuzz:
    """Writes each mutated checkpoint as model-1.ckpt and loads it as test/predict do
    (``MyModel.load``) and as ``--resume 1`` and a plain ``--resume`` do (``MyModel.train``; the
    run asks for no more epochs than the file holds, so nothing is trained)."""

    def __init__(self, tmp_path, trained):
        self.blob, self.x, self.y = trained
        self.modeldir = tmp_path / "m"
        self.modeldir.mkdir()
        self.path = self.modeldir / "model-1.ckpt"
        self.marker = tmp_path / "CODE_RAN"
        self.outcomes = collections.Counter()

    def run(self, label, blob):
        self.path.write_bytes(blob)
        for how in ("load", 1, "latest"):
            model = MyModel(_tiny_config(self.modeldir), log=lambda *a: None)
            call = (lambda: model.load(1)) if how == "load" else \
                (lambda: model.train(self.x, self.y, resume=how))
            # A plain --resume names the folder and the files in it that it could not use.
            named = names_file(self.path) if how != "latest" else self.names_folder_and_file
            outcome = check_outcome(call, CheckpointError, self.sane(model),
                                    f"checkpoint {label}, {how}", named)
            assert not self.marker.exists(), f"{label}: code from the checkpoint ran"
            self.outcomes[outcome] += 1
        return outcome

    def names_folder_and_file(self, e):
        names_file(self.modeldir)(e)
        names_file(self.path.name)(e)

    @staticmethod
    def sane(model):
        def check(result):
            for name, tensor in model.network.state_dict().items():
                if tensor.is_floating_point():
                    assert torch.isfinite(tensor).all(), f"{name} is not finite"
            assert model.epoch in (0, 1)
        return check


def checkpoint_key_variants(blob):
    """(label, bytes): the checkpoint dict with entries dropped, swapped or retyped, at the top
    and one level down."""
    good = torch.load(io.BytesIO(blob), weights_only=True)
    strange = [None, 0, -1, 2.5, float("nan"), "x", [], {}, torch.zeros(3), [1, 2]]
    rng = random.Random(7)

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    for key in good:
        ckpt = copy.deepcopy(good)
        del ckpt[key]
        yield f"without {key}", saved(ckpt)
        for value in rng.sample(strange, 3):
            ckpt = copy.deepcopy(good)
            ckpt[key] = value
            yield f"{key} = {value!r}", saved(ckpt)
        other = rng.choice([k for k in good if k != key])
        ckpt = copy.deepcopy(good)
        ckpt[key], ckpt[other] = ckpt[other], ckpt[key]
        yield f"{key} swapped with {other}", saved(ckpt)
        if isinstance(good[key], dict):
            for inner in list(good[key])[:6]:
                ckpt = copy.deepcopy(good)
                del ckpt[key][inner]
                yield f"without {key}[{inner!r}]", saved(ckpt)
                ckpt = copy.deepcopy(good)
                ckpt[key][inner] = rng.choice(strange)
                yield f"{key}[{inner!r}] = {ckpt[key][inner]!r}", saved(ckpt)
    yield "a list, not a dict", saved(list(good.values()))


def test_truncated_checkpoints_are_refused(tmp_path, trained_checkpoint):
    fuzz = CheckpointFuzz(tmp_path, trained_checkpoint)
    for label, blob in truncations(fuzz.blob, 40):
        assert fuzz.run(label, blob) == "refused", label


def test_checkpoints_with_flipped_bytes_are_refused_or_sane(tmp_path, trained_checkpoint):
    fuzz = CheckpointFuzz(tmp_path, trained_checkpoint)
    for label, blob in byte_flips(fuzz.blob, 60, seed=20):
        fuzz.run(label, blob)
    assert fuzz.outcomes["refused"] > 0, fuzz.outcomes


def test_checkpoints_with_wrong_entries_are_refused_or_sane(tmp_path, trained_checkpoint):
    fuzz = CheckpointFuzz(tmp_path, trained_checkpoint)
    for label, blob in checkpoint_key_variants(fuzz.blob):
        fuzz.run(label, blob)
    assert fuzz.outcomes["refused"] > 0 and fuzz.outcomes["loaded"] > 0, fuzz.outcomes


def test_checkpoints_that_would_run_code_are_refused_and_run_nothing(tmp_path, trained_checkpoint):
    fuzz = CheckpointFuzz(tmp_path, trained_checkpoint)
    good = torch.load(io.BytesIO(fuzz.blob), weights_only=True)
    for label, payload in hostile_objects(fuzz.marker):
        for where in ("epoch", "config"):
            ckpt = dict(good, **{where: payload})
            buffer = io.BytesIO()
            torch.save(ckpt, buffer)
            assert fuzz.run(f"{label} as {where}", buffer.getvalue()) == "refused"


# --------------------------------------------------------------------------------------------
# The long run (RUN_FUZZ=1)

@pytest.mark.fuzz_more
@pytest.mark.parametrize("style", ["py2", "p2", "p3", "p4", "p5"])
def test_more_batch_mutations(tmp_path, style):
    fuzz = BatchFuzz(tmp_path, style, rows=3)
    for label, blob in truncations(fuzz.blob, len(fuzz.blob)):
        assert fuzz.run(label, blob) == "refused"
    for seed in range(0, 30, 3):
        for label, blob in _flip_cases(fuzz.blob, 500, seed):
            fuzz.run(label, blob)
    assert fuzz.outcomes["refused"] > 0 and fuzz.outcomes["loaded"] > 0, fuzz.outcomes


@pytest.mark.fuzz_more
def test_more_checkpoint_mutations(tmp_path, trained_checkpoint):
    fuzz = CheckpointFuzz(tmp_path, trained_checkpoint)
    for label, blob in truncations(fuzz.blob, 400):
        assert fuzz.run(label, blob) == "refused", label
    for seed in range(200, 210):
        for label, blob in byte_flips(fuzz.blob, 100, seed):
            fuzz.run(label, blob)
    assert fuzz.outcomes["refused"] > 0, fuzz.outcomes


@pytest.mark.fuzz_more
@pytest.mark.parametrize("which", [0, 1])
def test_more_private_npy_mutations(tmp_path, which):
    fuzz = NpyFuzz(tmp_path)
    label, blob = list(good_npys())[which]
    for case, cut in truncations(blob, len(blob)):
        assert fuzz.run(f"{label} {case}", cut) == "refused"
    for seed in range(100, 130, 3):
        for case, flipped in _flip_cases(blob, 1000, seed):
            fuzz.run(f"{label} {case}", flipped)
    assert fuzz.outcomes["refused"] > 0 and fuzz.outcomes["loaded"] > 0, fuzz.outcomes
