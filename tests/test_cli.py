"""The command line end to end, as a user runs it: ``python main.py ...`` in the repository root."""
import dataclasses
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import DataReader
import Model
from cifar_files import write_cifar
from cli_tools import TINY, load, run_main, snapshot
from configure import Config
from Model import MyModel

N_TRAIN, N_TEST, SPLIT = 100, 20, 80


@dataclasses.dataclass
class Workspace:
    root: str
    data_dir: str
    modeldir: str

    def flags(self, **changes) -> list:
        """The tiny run's flags, with --data_dir and --modeldir pointing into this workspace."""
        values = {"data_dir": self.data_dir, "modeldir": self.modeldir, "split_index": SPLIT}
        values.update(changes)
        out = TINY + ["--lr_decay_epochs"]
        for k, v in values.items():
            out += [f"--{k}", str(v)]
        return out

    def config(self) -> Config:
        return Config(resnet_size=1, first_num_filters=4, device="cpu", modeldir=self.modeldir,
                      eval_batch_size=64)

    def path(self, *parts) -> str:
        return os.path.join(self.root, *parts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny set (5 x 20 training, 20 test images) and a 2-epoch run, a checkpoint per epoch."""
    root = str(tmp_path_factory.mktemp("trained"))
    ws = Workspace(root, os.path.join(root, "data"), os.path.join(root, "model"))
    write_cifar(ws.data_dir, n_per_batch=N_TRAIN // 5, n_test=N_TEST, seed=0)
    done = run_main(ws.flags() + ["--max_epoch", "2", "--save_interval", "1"])
    return ws, done


def copy_workspace(trained, root) -> Workspace:
    ws, _ = trained
    root = str(root)
    os.makedirs(root, exist_ok=True)
    copy = Workspace(root, os.path.join(root, "data"), os.path.join(root, "model"))
    shutil.copytree(ws.data_dir, copy.data_dir)
    shutil.copytree(ws.modeldir, copy.modeldir)
    return copy


@pytest.fixture
def workspace(trained, tmp_path) -> Workspace:
    return copy_workspace(trained, tmp_path / "ws")


def accuracy_line(set_name):
    return re.compile(rf"^model-(\d+)\.ckpt\s+{set_name} accuracy\s+(\d+\.\d\d)%"
                      rf"\s+\((\d+) images\)$")


def expected_percent(ws: Workspace, number: int, x, y) -> str:
    model = MyModel(ws.config(), log=lambda *a: None)
    model.load(number)
    return f"{100 * model.accuracy(x, y):.2f}"


# --------------------------------------------------------------------------------------------
# What works

def test_train_writes_a_checkpoint_each_epoch(trained):
    ws, done = trained
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip() == ""
    assert f"on {SPLIT} images, validating on {N_TRAIN - SPLIT}" in done.stdout
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and all("valid" in line for line in epochs)
    assert Model.list_checkpoints(ws.modeldir) == [1, 2]
    assert load(os.path.join(ws.modeldir, "model-2.ckpt"))["epoch"] == 2


def test_mode_test_prints_one_accuracy_per_checkpoint(workspace):
    done = run_main(workspace.flags(mode="test") + ["--checkpoints", "1", "2"])
    assert done.returncode == 0, done.stderr
    found = [accuracy_line("test").match(line) for line in done.stdout.splitlines()]
    found = [m.groups() for m in found if m]
    _, _, x_test, y_test = DataReader.load_data(workspace.data_dir)
    assert found == [(str(n), expected_percent(workspace, n, x_test, y_test), str(N_TEST))
                     for n in (1, 2)]


def test_mode_test_on_the_validation_split(workspace):
    done = run_main(workspace.flags(mode="test", eval_set="valid"))
    assert done.returncode == 0, done.stderr
    found = [accuracy_line("valid").match(line) for line in done.stdout.splitlines()]
    found = [m.groups() for m in found if m]
    x, y, _, _ = DataReader.load_data(workspace.data_dir)
    # Without --checkpoints the newest is used.
    assert found == [("2", expected_percent(workspace, 2, x[SPLIT:], y[SPLIT:]),
                      str(N_TRAIN - SPLIT))]


def _check_probabilities(path, n, num_classes=10) -> np.ndarray:
    p = np.load(path, allow_pickle=False)
    assert p.dtype == np.float32 and p.shape == (n, num_classes)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    return p


def _in_process_probabilities(ws: Workspace, number: int, private: str) -> np.ndarray:
    model = MyModel(ws.config(), log=lambda *a: None)
    model.load(number)
    return model.predict_prob(DataReader.load_testing_images(private))


def test_predict_with_default_paths(workspace):
    rng = np.random.default_rng(1)
    private = os.path.join(workspace.data_dir, "private_test_images.npy")
    np.save(private, rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8))
    done = run_main(workspace.flags(mode="predict"))
    assert done.returncode == 0, done.stderr
    output = os.path.join(workspace.modeldir, "predictions.npy")
    assert f"wrote {output}" in done.stdout and "model-2.ckpt" in done.stdout
    p = _check_probabilities(output, 6)
    np.testing.assert_allclose(p, _in_process_probabilities(workspace, 2, private), atol=1e-6)


def test_predict_with_checkpoint_private_data_and_output_given(workspace):
    rng = np.random.default_rng(2)
    private = workspace.path("mine.npy")
    np.save(private, rng.uniform(0, 255, (5, 3072)).astype(np.float32))
    os.makedirs(workspace.path("out"))
    output = workspace.path("out", "probs.npy")
    done = run_main(workspace.flags(mode="predict") + ["--checkpoint", "1", "--private_data",
                                                        private, "--output", output])
    assert done.returncode == 0, done.stderr
    p = _check_probabilities(output, 5)
    np.testing.assert_allclose(p, _in_process_probabilities(workspace, 1, private), atol=1e-6)
    assert not np.allclose(p, _in_process_probabilities(workspace, 2, private), atol=1e-6)
    assert not os.path.exists(os.path.join(workspace.modeldir, "predictions.npy"))


def test_train_all_uses_every_image_and_no_validation(trained, tmp_path):
    ws, _ = trained
    modeldir = str(tmp_path / "all")
    flags = ws.flags(modeldir=modeldir, max_epoch=1)
    flags = flags[:flags.index("--split_index")] + flags[flags.index("--split_index") + 2:]
    done = run_main(flags + ["--train_all"])  # the default --split_index 45000 does not matter
    assert done.returncode == 0, done.stderr
    assert f"on {N_TRAIN} images" in done.stdout and "validating" not in done.stdout
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 1 and "valid" not in epochs[0]
    ckpt = load(os.path.join(modeldir, "model-1.ckpt"))
    assert ckpt["config"]["train_all"] is True
    assert "valid_acc" not in ckpt["metrics"][0]
    x, y, _, _ = DataReader.load_data(ws.data_dir)
    assert ckpt["data"] == DataReader.fingerprint(x, y)


def _help_entries(text: str) -> dict:
    """'--flag' -> its help text (whitespace collapsed), from argparse's --help output."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\S+)", line)
        if m:
            current = m.group(1).split(",")[0]
            entries[current] = line[m.end():]
        elif current and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_help_lists_every_config_field_with_its_default():
    done = run_main(["--help"])
    assert done.returncode == 0
    entries = _help_entries(done.stdout)
    for f in dataclasses.fields(Config):
        assert f"--{f.name}" in entries, f"--{f.name} missing from --help"
        assert f"(default: {f.default})" in entries[f"--{f.name}"].replace("- ", "-"), f.name
        if isinstance(f.default, bool):
            # The --no_ switch must not claim a default of its own that contradicts the field's.
            assert "(default:" not in entries[f"--no_{f.name}"], entries[f"--no_{f.name}"]
    for flag, text in entries.items():
        assert text.count("(default:") <= 1, f"{flag} states two defaults: {text}"


# --------------------------------------------------------------------------------------------
# Bad input: a non-zero exit, one line "error: ...", no traceback, nothing written or lost

def _missing_data_folder(ws):
    return ws.flags(data_dir=ws.path("no_such_folder"), modeldir=ws.path("new_model")), 1, \
        ["no_such_folder"]


def _missing_batch_file(ws):
    os.remove(os.path.join(ws.data_dir, "cifar-10-batches-py", "data_batch_3"))
    return ws.flags(modeldir=ws.path("new_model")), 1, ["data_batch_3"]


def _corrupt_batch_file(ws):
    path = os.path.join(ws.data_dir, "cifar-10-batches-py", "data_batch_2")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return ws.flags(modeldir=ws.path("new_model")), 1, ["data_batch_2", "corrupt"]


def _private(ws, array, allow_pickle=False):
    path = ws.path("private.npy")
    np.save(path, array, allow_pickle=allow_pickle)
    return ws.flags(mode="predict") + ["--private_data", path]


def _private_wrong_shape(ws):
    return _private(ws, np.zeros((4, 32, 32), np.uint8)), 1, ["private.npy", "shape"]


def _private_nan(ws):
    x = np.full((3, 3072), 100.0, np.float32)
    x[1, 7] = np.nan
    return _private(ws, x), 1, ["private.npy", "NaN"]


def _private_object_array(ws):
    x = np.empty(2, dtype=object)
    x[0], x[1] = {"a": 1}, [1, 2]
    return _private(ws, x, allow_pickle=True), 1, ["private.npy", "Python objects"]


def _test_missing_checkpoint(ws):
    return ws.flags(mode="test") + ["--checkpoints", "1", "9"], 1, \
        ["no checkpoint 9", "checkpoints there: 1, 2"]


def _predict_missing_checkpoint(ws):
    return _private(ws, np.zeros((2, 3072), np.uint8)) + ["--checkpoint", "9"], 1, \
        ["no checkpoint 9", "checkpoints there: 1, 2"]


def _other_architecture(ws):
    return ws.flags(mode="test", resnet_size=2) + ["--checkpoints", "2"], 1, \
        ["model-2.ckpt", "resnet_size 1", "resnet_size 2"]


def _damaged_checkpoint(ws):
    path = os.path.join(ws.modeldir, "model-2.ckpt")
    with open(path, "r+b") as f:
        f.truncate(300)
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, ["model-2.ckpt", "not a loadable"]


def _modeldir_under_a_file(ws):
    with open(ws.path("a_file"), "w") as f:
        f.write("not a folder")
    return ws.flags(modeldir=ws.path("a_file", "model")), 1, ["--modeldir", "a_file"]


def _modeldir_read_only(ws):
    if os.geteuid() == 0:
        return None  # root writes through any mode bits; _modeldir_under_a_file covers this
    os.chmod(ws.modeldir, 0o500)
    return ws.flags(modeldir=ws.modeldir) + ["--max_epoch", "3", "--resume"], 1, ["--modeldir"]


def _predict_output_folder_missing(ws):
    out = ws.path("nowhere", "p.npy")
    return _private(ws, np.zeros((2, 3072), np.uint8)) + ["--output", out], 1, ["nowhere"]


def _split_index_too_large(ws):
    return ws.flags(modeldir=ws.path("new_model"), split_index=N_TRAIN), 1, ["--split_index"]


def _negative_learning_rate(ws):
    return ws.flags(modeldir=ws.path("new_model"), learning_rate=-0.1), 2, ["--learning_rate"]


def _resnet_size_zero(ws):
    return ws.flags(modeldir=ws.path("new_model"), resnet_size=0), 2, ["--resnet_size"]


def _decay_epochs_out_of_order(ws):
    return ws.flags(modeldir=ws.path("new_model")) + ["--lr_decay_epochs", "150", "100"], 2, \
        ["--lr_decay_epochs", "150 100"]


def _batch_larger_than_data(ws):
    return ws.flags(modeldir=ws.path("new_model"), batch_size=1000), 2, \
        ["--batch_size", f"{SPLIT} training images"]


USAGE = "usage"  # argparse rejects the flag itself: a usage message, exit 2


def _unparsable_number(ws):
    return ws.flags(modeldir=ws.path("new_model"), batch_size="abc"), USAGE, \
        ["--batch_size", "invalid int value"]


def _resume_not_a_number(ws):
    return ws.flags() + ["--max_epoch", "3", "--resume", "abc"], USAGE, ["--resume", "abc"]


BAD_INPUT = {
    "missing data folder": _missing_data_folder,
    "missing batch file": _missing_batch_file,
    "corrupt batch file": _corrupt_batch_file,
    "private data of the wrong shape": _private_wrong_shape,
    "private data with NaN": _private_nan,
    "private data of Python objects": _private_object_array,
    "test: missing checkpoint": _test_missing_checkpoint,
    "predict: missing checkpoint": _predict_missing_checkpoint,
    "checkpoint of another architecture": _other_architecture,
    "damaged checkpoint": _damaged_checkpoint,
    "modeldir under a file": _modeldir_under_a_file,
    "read-only modeldir": _modeldir_read_only,
    "predict output folder missing": _predict_output_folder_missing,
    "split_index too large": _split_index_too_large,
    "negative learning rate": _negative_learning_rate,
    "resnet_size 0": _resnet_size_zero,
    "lr_decay_epochs out of order": _decay_epochs_out_of_order,
    "batch larger than the data": _batch_larger_than_data,
    "unparsable number": _unparsable_number,
    "resume not a number": _resume_not_a_number,
}


@pytest.fixture(scope="module")
def bad_runs(trained, tmp_path_factory):
    """Every bad-input case, set up in its own copy of the trained workspace and run two at a time
    (each run mostly imports torch): name -> (workspace, expected code, phrases, result, before)."""
    cases = {}
    for i, (name, setup) in enumerate(BAD_INPUT.items()):
        ws = copy_workspace(trained, tmp_path_factory.mktemp(f"bad{i}"))
        made = setup(ws)
        if made is not None:
            cases[name] = (ws, *made, snapshot(ws.root))

    def run(name):
        # One thread per process: two processes share the two cores without oversubscription.
        return name, run_main(cases[name][1], env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, cases))
    return {name: (ws, code, phrases, results[name], before)
            for name, (ws, args, code, phrases, before) in cases.items()}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_refused_cleanly(bad_runs, name):
    if name not in bad_runs:
        pytest.skip("running as root: mode bits do not stop root from writing")
    ws, code, phrases, done, before = bad_runs[name]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if code == USAGE:
        assert done.returncode == 2
        assert lines[0].startswith("usage:")
        message = lines[-1]
        assert re.match(r"^main\.py: error: argument ", message), done.stderr
    else:
        assert done.returncode == code, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        message = lines[0]
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert snapshot(ws.root) == before, "files were written, changed or removed"
