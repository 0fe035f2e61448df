"""The command line end to end, as a user runs it: ``python main.py ...`` in the repository root."""
import dataclasses
import glob
import hashlib
import os
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import DataReader
import Model
from trainer.run import checkpoints
from cifar_files import write_cifar
from cli_tools import TIMEOUT, TINY, load, run_main, start_main
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
                      eval_batch_size=64, amp="off")

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


ROW = re.compile(r"^model-(\d+)\.ckpt\s+\d+\s+(\d+\.\d\d)%\s+\d+\.\d{4}\s+(\d+)$")


def report_rows(stdout: str, set_name: str) -> list:
    """(checkpoint number, accuracy in %, images) of each row of the test report's table."""
    lines = stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("checkpoint ")]
    assert len(header) == 1 and f"{set_name} acc" in lines[header[0]], stdout
    return [m.groups() for m in map(ROW.match, lines[header[0] + 1:]) if m]


def expected_percent(ws: Workspace, number: int, x, y) -> str:
    model = MyModel(ws.config(), log=lambda *a: None)
    model.load(number)
    return f"{100 * model.accuracy(x, y):.2f}"


def tree(root: str) -> dict:
    """Every entry under root: relative path -> None for a folder, "-> target" for a symbolic link
    (never followed: a case plants a link to itself), the sha256 of a file's bytes otherwise.

    Of the run lock ``.lock`` only its presence counts: a run that takes the lock writes its
    process id there before it can refuse anything."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                found[key] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[key] = None
            elif name == checkpoints.LOCK:
                found[key] = "lock"
            else:
                with open(path, "rb") as f:
                    found[key] = hashlib.sha256(f.read()).hexdigest()
    return found


def stderr_lines(done) -> list:
    return [line for line in done.stderr.splitlines() if line.strip()]


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
    found = report_rows(done.stdout, "test")
    _, _, x_test, y_test = DataReader.load_data(workspace.data_dir)
    assert found == [(str(n), expected_percent(workspace, n, x_test, y_test), str(N_TEST))
                     for n in (1, 2)]


def test_mode_test_on_the_validation_split(workspace):
    done = run_main(workspace.flags(mode="test", eval_set="valid"))
    assert done.returncode == 0, done.stderr
    found = report_rows(done.stdout, "valid")
    x, y, _, _ = DataReader.load_data(workspace.data_dir)
    # Without --checkpoints the newest is used.
    assert found == [("2", expected_percent(workspace, 2, x[SPLIT:], y[SPLIT:]),
                      str(N_TRAIN - SPLIT))]


def test_validation_uses_the_split_the_checkpoint_was_trained_with(workspace):
    # Images 60 to 79 trained the model: validating with the command line's split would score them.
    done = run_main(workspace.flags(mode="test", eval_set="valid", split_index=60))
    assert done.returncode == 0, done.stderr
    assert f"split_index {SPLIT}" in done.stdout
    found = report_rows(done.stdout, "valid")
    x, y, _, _ = DataReader.load_data(workspace.data_dir)
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


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(workspace):
    old = load(os.path.join(workspace.modeldir, "model-1.ckpt"))
    notes = os.path.join(workspace.modeldir, "notes.txt")
    with open(notes, "w") as f:
        f.write("lr 0.1 looked good")
    done = run_main(workspace.flags(max_epoch=1, seed=1) + ["--overwrite"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    # The old run had two epochs: its model-2.ckpt must not pass for an epoch of the new one.
    assert Model.list_checkpoints(workspace.modeldir) == [1]
    new = load(os.path.join(workspace.modeldir, "model-1.ckpt"))
    assert new["config"]["seed"] == 1 and len(new["metrics"]) == 1
    assert any(not torch.equal(new["model"][k], old["model"][k])
               for k in old["model"] if old["model"][k].is_floating_point())
    with open(notes) as f:
        assert f.read() == "lr 0.1 looked good"


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
        if f.metadata.get("internal"):  # set by a run itself (plan_anchor), never a flag
            assert f"--{f.name}" not in entries
            continue
        assert f"--{f.name}" in entries, f"--{f.name} missing from --help"
        assert f"(default: {f.default})" in entries[f"--{f.name}"].replace("- ", "-"), f.name
        if isinstance(f.default, bool) and f.name.startswith("no_"):
            # --no_decay_bn_bias is a "no" already: no --no_no_ twin.
            assert f"--no_{f.name}" not in entries
        elif isinstance(f.default, bool):
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


def _lock_is_a_folder(ws):
    # The run lock cannot be made whatever the permissions, so this holds when run as root too.
    lock = os.path.join(ws.modeldir, checkpoints.LOCK)
    if os.path.lexists(lock):
        os.remove(lock)
    os.mkdir(lock)
    return ws.flags() + ["--max_epoch", "3", "--resume"], 1, [lock, "--modeldir"]


def _resume_from_a_missing_modeldir(ws):
    # tree() shows the folder was not created.
    return ws.flags(modeldir=ws.path("no_model")) + ["--max_epoch", "3", "--resume", "2"], 1, \
        ["--modeldir", "no_model", "does not exist"]


def _fresh_run_on_a_used_modeldir(ws):
    return ws.flags() + ["--max_epoch", "2"], 1, \
        [f"--modeldir {ws.modeldir}", "model-1.ckpt", "--resume", "another --modeldir",
         "--overwrite"]


def _checkpoint_is_a_folder(ws):
    path = os.path.join(ws.modeldir, "model-2.ckpt")
    os.remove(path)
    os.mkdir(path)
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, ["model-2.ckpt", "is a folder"], \
        ["no checkpoint 2"]


def _checkpoint_is_a_link_loop(ws):
    path = os.path.join(ws.modeldir, "model-2.ckpt")
    os.remove(path)
    os.symlink(path, path)
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, ["model-2.ckpt", "link"], \
        ["no checkpoint 2"]


def _rewrite_checkpoint(ws, change, number=2, modeldir=None) -> str:
    """Load model-<number>.ckpt, let change(ckpt) edit it, save it (to modeldir if given)."""
    path = os.path.join(ws.modeldir, f"model-{number}.ckpt")
    ckpt = load(path)
    change(ckpt)
    if modeldir is not None:
        os.makedirs(modeldir, exist_ok=True)
        path = os.path.join(modeldir, f"model-{number}.ckpt")
    torch.save(ckpt, path)
    return path


def _conv_weight(ckpt) -> str:
    """The name of a convolution weight deep inside the network (not the first tensor listed)."""
    return [k for k, v in ckpt["model"].items() if v.dim() == 4][-2]


def _tensor_of_another_shape(ws):
    name = []

    def change(ckpt):
        name.append(_conv_weight(ckpt))
        w = ckpt["model"][name[0]]
        ckpt["model"][name[0]] = torch.zeros(w.shape[0] + 1, *w.shape[1:])

    _rewrite_checkpoint(ws, change)
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, ["model-2.ckpt", name[0], "shape"]


def _integer_weights(ws):
    name = []

    def change(ckpt):
        name.append(_conv_weight(ckpt))
        ckpt["model"][name[0]] = ckpt["model"][name[0]].round().to(torch.int64)

    _rewrite_checkpoint(ws, change)
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, ["model-2.ckpt", name[0], "int64"]


def _nan_weights(ws):
    name = []

    def change(ckpt):
        name.append(_conv_weight(ckpt))
        ckpt["model"][name[0]][0, 0, 1, 1] = float("nan")

    _rewrite_checkpoint(ws, change)
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, ["model-2.ckpt", name[0], "NaN"]


def _other_num_classes(ws):
    # The two network names are alike: the message must say what differs.
    return ws.flags(mode="test", num_classes=100) + ["--checkpoints", "2"], 1, \
        ["model-2.ckpt", "num_classes 10", "num_classes 100", "--num_classes 10"]


class _RunsAShellCommand:
    """Unpickled without restriction, this becomes os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _checkpoint_asking_for_os_system(ws):
    # The marker sits in the workspace: tree() would see it too. The refusal text is checked whole
    # by test_a_checkpoint_asking_for_os_system_is_refused_in_torchs_own_words.
    marker = ws.path("hacked")
    torch.save({"model": _RunsAShellCommand(f"touch {marker}")},
               os.path.join(ws.modeldir, "model-2.ckpt"))
    return ws.flags(mode="test") + ["--checkpoints", "2"], 1, \
        ["model-2.ckpt", "not a loadable checkpoint"]


def _validating_a_train_all_checkpoint(ws):
    # A copy of model-2.ckpt that says it was trained on every image, in a folder of its own.
    modeldir = ws.path("all_model")
    _rewrite_checkpoint(ws, lambda ckpt: ckpt["config"].update(train_all=True), modeldir=modeldir)
    return ws.flags(mode="test", eval_set="valid", modeldir=modeldir) + ["--checkpoints", "2"], 1, \
        ["model-2.ckpt", "--train_all", "--eval_set test"]


def _validating_on_other_data(ws):
    other = ws.path("other_data")
    write_cifar(other, n_per_batch=N_TRAIN // 5, n_test=N_TEST, seed=1)
    return ws.flags(mode="test", eval_set="valid", data_dir=other), 1, \
        ["model-2.ckpt", "other_data", "--data_dir"]


def _predict_output_is_a_folder(ws):
    out = ws.path("outdir")
    os.mkdir(out)
    return _private(ws, np.zeros((2, 3072), np.uint8)) + ["--output", out], 1, \
        ["outdir", "is a folder"], ["free some space"]


def _default_predictions_path_is_a_folder(ws):
    os.mkdir(os.path.join(ws.modeldir, "predictions.npy"))
    return _private(ws, np.zeros((2, 3072), np.uint8)), 1, \
        ["predictions.npy", "is a folder"], ["free some space"]


def _private_data_is_text(ws):  # needs DataReader's .npy signature check
    path = ws.path("images.txt")
    with open(path, "w") as f:
        f.write("0 0 0 255 255 255\n")
    return ws.flags(mode="predict") + ["--private_data", path], 1, \
        ["images.txt", "not an .npy file"], ["Python objects"]


def _test_data_dir_is_a_file(ws):  # needs DataReader's data_dir-is-a-file check
    path = ws.path("data.bin")
    with open(path, "wb") as f:
        f.write(b"not a folder")
    return ws.flags(mode="test", data_dir=path), 1, ["data.bin", "is a file"], ["does not exist"]


def _predict_output_folder_missing(ws):
    out = ws.path("nowhere", "p.npy")
    return _private(ws, np.zeros((2, 3072), np.uint8)) + ["--output", out], 1, ["nowhere"]


def _split_index_too_large(ws):
    return ws.flags(modeldir=ws.path("new_model"), split_index=N_TRAIN), 1, ["--split_index"]


def _negative_learning_rate(ws):
    return ws.flags(modeldir=ws.path("new_model"), learning_rate=-0.1), 2, ["--learning_rate"]


def _infinite_learning_rate(ws):
    return ws.flags(modeldir=ws.path("new_model"), learning_rate="inf"), 2, ["--learning_rate"]


def _infinite_weight_decay(ws):
    return ws.flags(modeldir=ws.path("new_model"), weight_decay="inf"), 2, ["--weight_decay"]


def _seed_too_large(ws):
    return ws.flags(modeldir=ws.path("new_model"), seed=2 ** 63), 2, ["--seed", str(2 ** 63)]


def _device_meta(ws):
    return ws.flags(modeldir=ws.path("new_model"), device="meta"), 2, ["--device meta"]


def _device_xpu(ws):
    return ws.flags(modeldir=ws.path("new_model"), device="xpu"), 2, ["--device xpu"]


def _resume_in_test_mode(ws):
    return ws.flags(mode="test") + ["--resume"], 2, ["--resume applies to --mode train"]


def _checkpoints_in_predict_mode(ws):
    return _private(ws, np.zeros((2, 3072), np.uint8)) + ["--checkpoints", "1"], 2, \
        ["--checkpoints applies to --mode test"]


def _overwrite_in_test_mode(ws):
    return ws.flags(mode="test") + ["--overwrite"], 2, ["--overwrite applies to --mode train"]


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
    "run lock is a folder": _lock_is_a_folder,
    "resume from a missing modeldir": _resume_from_a_missing_modeldir,
    "fresh run on a used modeldir": _fresh_run_on_a_used_modeldir,
    "checkpoint is a folder": _checkpoint_is_a_folder,
    "checkpoint is a link loop": _checkpoint_is_a_link_loop,
    "tensor of another shape": _tensor_of_another_shape,
    "integer weights": _integer_weights,
    "NaN weights": _nan_weights,
    "checkpoint of another num_classes": _other_num_classes,
    "checkpoint asking for os.system": _checkpoint_asking_for_os_system,
    "validating a train_all checkpoint": _validating_a_train_all_checkpoint,
    "validating on other data": _validating_on_other_data,
    "predict output folder missing": _predict_output_folder_missing,
    "predict output is a folder": _predict_output_is_a_folder,
    "default predictions path is a folder": _default_predictions_path_is_a_folder,
    "private data is a text file": _private_data_is_text,
    "test data_dir is a file": _test_data_dir_is_a_file,
    "split_index too large": _split_index_too_large,
    "negative learning rate": _negative_learning_rate,
    "infinite learning rate": _infinite_learning_rate,
    "infinite weight decay": _infinite_weight_decay,
    "seed 2**63": _seed_too_large,
    "device meta": _device_meta,
    "device xpu": _device_xpu,
    "resume in test mode": _resume_in_test_mode,
    "checkpoints in predict mode": _checkpoints_in_predict_mode,
    "overwrite in test mode": _overwrite_in_test_mode,
    "resnet_size 0": _resnet_size_zero,
    "lr_decay_epochs out of order": _decay_epochs_out_of_order,
    "batch larger than the data": _batch_larger_than_data,
    "unparsable number": _unparsable_number,
    "resume not a number": _resume_not_a_number,
}


@pytest.fixture(scope="module")
def bad_runs(trained, tmp_path_factory):
    """Every bad-input case, set up in its own copy of the trained workspace and run two at a time
    (each run mostly imports torch): name -> (workspace, expected code, phrases the message must
    hold, phrases it must not, result, tree before)."""
    cases = {}
    for i, (name, setup) in enumerate(BAD_INPUT.items()):
        ws = copy_workspace(trained, tmp_path_factory.mktemp(f"bad{i}"))
        args, code, phrases, *absent = setup(ws)
        cases[name] = (ws, args, code, phrases, absent[0] if absent else [], tree(ws.root))

    def run(name):
        # One thread per process: two processes share the two cores without oversubscription.
        return name, run_main(cases[name][1], env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, cases))
    return {name: (ws, code, phrases, absent, results[name], before)
            for name, (ws, args, code, phrases, absent, before) in cases.items()}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_refused_cleanly(bad_runs, name):
    ws, code, phrases, absent, done, before = bad_runs[name]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = stderr_lines(done)
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
    for phrase in absent:
        assert phrase not in message, f"{phrase!r} in {message!r}"
    assert tree(ws.root) == before, "files were written, changed or removed"


def test_a_checkpoint_asking_for_os_system_is_refused_in_torchs_own_words(bad_runs):
    # torch's refusal is many sentences; the one to quote names what the file asked for
    # ("Trying to load unsupported GLOBAL posix.system ..."), whole, not cut mid-sentence.
    ws, _, _, _, done, _ = bad_runs["checkpoint asking for os.system"]
    assert not os.path.exists(ws.path("hacked")), "the checkpoint ran its command"
    found = re.search(r"not a loadable checkpoint \((.*)\); ", stderr_lines(done)[0])
    assert found, done.stderr
    reason = found.group(1)
    try:
        torch.load(os.path.join(ws.modeldir, "model-2.ckpt"), weights_only=True)
    except Exception as e:  # whatever torch raises, its text is what main quotes
        torch_text = " ".join(str(e).split())
    else:
        pytest.fail("torch loaded a checkpoint that asks for os.system")
    # A whole sentence of torch's text (not cut mid-word), and the one naming what was refused.
    assert re.search(r"(?:^|[.!?:] )" + re.escape(reason) + r"[.!?]?(?: |$)", torch_text), \
        f"{reason!r} is not a whole sentence of {torch_text!r}"
    assert "system" in reason, f"{reason!r} does not say what the file asked for"


# --------------------------------------------------------------------------------------------
# One training run per model folder

PAUSED = {Model.PAUSE_ENV: "1:0"}  # wait before the first step until a signal comes


def start_paused(args):
    """Start a training run that waits before its first step; return it once it waits."""
    proc = start_main(args, env=PAUSED)
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    try:
        for line in proc.stderr:
            if "paused before step" in line:
                return proc
        out, err = proc.communicate()
        raise AssertionError(f"the run ended (rc {proc.returncode}) before pausing:\n{out}\n{err}")
    finally:
        watchdog.cancel()


def test_a_second_run_on_a_busy_modeldir_is_refused_at_once(workspace):
    modeldir = workspace.path("busy")
    first = start_paused(workspace.flags(modeldir=modeldir, max_epoch=2))
    try:
        before = tree(modeldir)
        # Waiting for the lock would hang here: the first run waits for a signal.
        second = run_main(workspace.flags(modeldir=modeldir, max_epoch=2) + ["--resume"],
                          timeout=120)
        assert second.returncode == 1, second.stderr
        lines = stderr_lines(second)
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"process {first.pid}" in lines[0] and f"--modeldir {modeldir}" in lines[0]
        assert tree(modeldir) == before
        with open(os.path.join(modeldir, checkpoints.LOCK)) as f:
            assert f.read().strip() == str(first.pid)

        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 130, err
        assert "Traceback" not in out + err
        saved = checkpoints.read_checkpoint(os.path.join(modeldir, checkpoints.INTERRUPTED),
                                            for_resume=True)
        assert (saved["epoch"], saved["step"]) == (0, 1)
        assert Model.list_checkpoints(modeldir) == []
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()


def test_the_lock_of_a_killed_run_does_not_block_the_next(workspace):
    modeldir = workspace.path("killed")
    first = start_paused(workspace.flags(modeldir=modeldir, max_epoch=1))
    first.kill()
    first.communicate()
    assert os.path.exists(os.path.join(modeldir, checkpoints.LOCK))
    # Killed before its first checkpoint, it left records only: nothing to resume, so the next
    # run starts anew over them, asked to.
    resumed = run_main(workspace.flags(modeldir=modeldir, max_epoch=1) + ["--resume"], timeout=120)
    assert resumed.returncode == 1 and "pass --overwrite instead" in resumed.stderr, resumed.stderr
    done = run_main(workspace.flags(modeldir=modeldir, max_epoch=1) + ["--overwrite"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert Model.list_checkpoints(modeldir) == [1]


# --------------------------------------------------------------------------------------------
# Ctrl-C while starting: importing torch, then reading data and building the network

@pytest.mark.parametrize("after, delay", [("start", 0.3), ("start", 1.0), ("config", 0.0),
                                          ("config", 0.5)])
@pytest.mark.parametrize("mode", ["train", "predict"])
def test_ctrl_c_while_starting_ends_quietly(workspace, mode, after, delay):
    """SIGINT `delay` seconds after the process starts (torch is being imported) or after it prints
    its configuration (data, the lock, the network and the optimizer, whose first use imports
    torch._dynamo). Before about 0.1 s the interpreter itself is starting: no script helps there.

    A rare failure here is a real one (issue 8, item 12): a KeyboardInterrupt raised inside torch's
    imports can abort the process from C++ ("terminate called after throwing an instance of
    'pybind11::error_already_set'", exit -6) or become "RuntimeError: Error calling __set_name__"
    with a traceback."""
    output = os.path.join(workspace.modeldir, "predictions.npy")
    if mode == "predict":
        np.save(os.path.join(workspace.data_dir, "private_test_images.npy"),
                np.zeros((4, 3072), np.uint8))
        flags = workspace.flags(mode="predict")
    else:
        flags = workspace.flags(modeldir=workspace.path("new_model"), max_epoch=1)
    proc = start_main(flags)
    try:
        if after == "config":
            first = proc.stdout.readline()
            assert first.startswith("config: "), first + proc.communicate()[1]
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # 0: it finished before the signal came; -SIGINT: it came at the very end, once Python had put
    # back the signal's default action (no message; a shell shows 130 too).
    assert proc.returncode in (130, 0, -signal.SIGINT), err
    assert "Traceback" not in out + err, err
    assert not glob.glob(os.path.join(workspace.root, "**", "*.part"), recursive=True)
    if proc.returncode == 130 and mode == "predict":
        assert not os.path.exists(output)
