"""What --mode test and --mode predict write, and what they refuse to write over.

The runs here are in-process (``main.main``): a refusal must come before any data or model is
loaded, so these take a fraction of a second each once the tiny model is trained.
"""
import hashlib
import json
import os
import pickle
import re
import shutil
import stat

import numpy as np
import pytest

import DataReader
import Model
from trainer.run import checkpoints
import main
from cifar_files import write_cifar, write_cifar10_meta
from cli_tools import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny data set with class names, a 2-epoch run with a checkpoint per epoch, and a private
    set of 5 uint8 images."""
    root = str(tmp_path_factory.mktemp("outputs"))
    data_dir = os.path.join(root, "data")
    write_cifar10_meta(write_cifar(data_dir, n_per_batch=16, n_test=12, seed=0))
    np.save(os.path.join(root, "private.npy"),
            np.random.default_rng(1).integers(0, 256, (5, 3072)).astype(np.uint8))
    flags = TINY + ["--data_dir", data_dir, "--modeldir", os.path.join(root, "model"),
                    "--split_index", "64", "--lr_decay_epochs"]
    assert main.main(flags + ["--max_epoch", "2", "--save_interval", "1"]) == 0
    return root


class Workspace:
    def __init__(self, root):
        self.root = root
        self.data_dir = os.path.join(root, "data")
        self.modeldir = os.path.join(root, "model")
        self.private = os.path.join(root, "private.npy")
        self.base = ["--data_dir", self.data_dir, "--modeldir", self.modeldir, "--device", "cpu",
                     "--no_download", "--eval_batch_size", "64"]

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def test(self, *extra):
        return self.base + ["--mode", "test", "--checkpoints", "2", *extra]

    def predict(self, *extra):
        return self.base + ["--mode", "predict", "--checkpoint", "2", "--private_data",
                            self.private, *extra]


@pytest.fixture
def ws(trained, tmp_path):
    root = str(tmp_path / "ws")
    shutil.copytree(trained, root, symlinks=True)
    return Workspace(root)


def tree(root: str) -> dict:
    """Every entry under root, links and FIFOs included but never followed or opened: relative
    path -> what it is (a file by the sha256 of its bytes)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            else:
                what = stat.S_IFMT(mode)
            found[os.path.relpath(path, root)] = what
    return found


class Evaluated(Exception):
    """Raised by the stand-ins below: the command went on to data or model before refusing."""


@pytest.fixture
def no_evaluation(monkeypatch):
    """Make loading the data set, the private images or any weights fail loudly."""
    def fail(*args, **kwargs):
        raise Evaluated("data or weights were loaded before the refusal")
    monkeypatch.setattr(DataReader, "load_data", fail)
    monkeypatch.setattr(DataReader, "load_testing_images", fail)
    monkeypatch.setattr(Model.MyModel, "load", fail)


def run(args) -> int:
    """main.main(args), its exit code whether it returns or exits (argument errors exit 2)."""
    try:
        return main.main(args)
    except SystemExit as e:
        return e.code


def assert_refused(ws, args, capsys, phrases, code=1):
    """One line "error: ..." holding every phrase, exit code, and nothing under ws changed."""
    before = tree(ws.root)
    capsys.readouterr()
    assert run(args) == code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for phrase in phrases:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    assert "wrote" not in captured.out
    assert tree(ws.root) == before, "files were written, changed or removed"
    return lines[0]


# --------------------------------------------------------------------------------------------
# --output and --json never replace an input, a checkpoint or a record of the model folder

RUN_FILES = ["model-1.ckpt", "model-2.ckpt", "model-7.ckpt", checkpoints.BEST,
             checkpoints.INTERRUPTED, checkpoints.LOCK, *checkpoints.RECORDS]


@pytest.mark.parametrize("name", RUN_FILES)
def test_predict_output_in_the_model_folder_is_refused_for_its_run_files(ws, capsys, name,
                                                                       no_evaluation):
    out = os.path.join(ws.modeldir, name)
    assert_refused(ws, ws.predict("--output", out), capsys, ["--output", name])


@pytest.mark.parametrize("name", ["metrics.csv", "config.json", "model-2.ckpt", checkpoints.BEST])
def test_test_json_in_the_model_folder_is_refused_for_its_run_files(ws, capsys, name,
                                                                   no_evaluation):
    out = os.path.join(ws.modeldir, name)
    assert_refused(ws, ws.test("--json", out), capsys, ["--json", name])


def test_a_run_file_named_another_way_is_still_refused(ws, capsys, monkeypatch, no_evaluation):
    monkeypatch.chdir(ws.modeldir)
    assert_refused(ws, ws.predict("--output", "./model-2.ckpt"), capsys,
                   ["--output", "model-2.ckpt"])
    os.symlink(ws.modeldir, ws.path("alias"))
    assert_refused(ws, ws.test("--json", os.path.join(ws.path("alias"), "metrics.csv")), capsys,
                   ["--json", "metrics.csv"])


def test_the_private_data_as_output_is_refused(ws, capsys, no_evaluation):
    same = os.path.join(ws.data_dir, "..", "private.npy")
    assert_refused(ws, ws.predict("--output", same), capsys, ["--output", "private.npy"])


def test_a_hard_link_to_the_checkpoint_read_is_refused(ws, capsys, no_evaluation):
    out = ws.path("probs.npy")
    os.link(os.path.join(ws.modeldir, "model-2.ckpt"), out)
    assert_refused(ws, ws.predict("--output", out), capsys, ["--output", "probs.npy"])


@pytest.mark.parametrize("name", ["test_batch", "data_batch_1", "batches.meta"])
def test_a_data_file_as_output_is_refused(ws, capsys, name, no_evaluation):
    out = os.path.join(ws.data_dir, "cifar-10-batches-py", name)
    assert_refused(ws, ws.test("--json", out), capsys, ["--json", name])
    assert_refused(ws, ws.predict("--output", out), capsys, ["--output", name])


def test_a_link_is_refused_and_left_as_it_is(ws, capsys, no_evaluation):
    target = ws.path("mine.json")
    with open(target, "w") as f:
        f.write("{}\n")
    link = ws.path("link.json")
    os.symlink(target, link)
    assert_refused(ws, ws.test("--json", link), capsys, ["--json", "link.json", "link"])
    dangling = ws.path("dangling.npy")
    os.symlink(ws.path("nowhere.npy"), dangling)
    assert_refused(ws, ws.predict("--output", dangling), capsys, ["--output", "dangling.npy"])


def test_a_fifo_is_refused_and_left_as_it_is(ws, capsys, no_evaluation):
    fifo = ws.path("pipe.json")
    os.mkfifo(fifo)
    assert_refused(ws, ws.test("--json", fifo), capsys, ["--json", "pipe.json", "regular file"])
    assert_refused(ws, ws.predict("--output", fifo), capsys, ["--output", "pipe.json"])


def test_a_device_is_refused(ws, capsys, no_evaluation):
    assert_refused(ws, ws.test("--json", os.devnull), capsys, ["--json", os.devnull,
                                                               "regular file"])


@pytest.mark.parametrize("flag", ["--json", "--output", "--private_data"])
def test_an_empty_path_is_refused(ws, capsys, flag, no_evaluation):
    args = ws.test(flag, "") if flag == "--json" else ws.predict(flag, "")
    assert_refused(ws, args, capsys, [flag, "empty"], code=2)


def test_predict_replaces_its_default_output_and_a_plain_file_the_user_named(ws, capsys):
    default = os.path.join(ws.modeldir, "predictions.npy")
    for out in (default, ws.path("mine.npy")):
        np.save(out, np.zeros(1))
        args = ws.predict() if out == default else ws.predict("--output", out)
        assert run(args) == 0
        assert np.load(out).shape == (5, 10)
    assert run(ws.test("--json", ws.path("mine.npy"))) == 0
    with open(ws.path("mine.npy")) as f:
        assert json.load(f)["checkpoints"][0]["checkpoint"] == "model-2.ckpt"


# --------------------------------------------------------------------------------------------
# What test reports

def test_duplicate_checkpoints_are_evaluated_once_in_the_order_given(ws, capsys):
    capsys.readouterr()
    assert run(ws.base + ["--mode", "test", "--checkpoints", "2", "1", "2", "1"]) == 0
    rows = re.findall(r"^(model-\d+\.ckpt)\s+\d+\s", capsys.readouterr().out, re.M)
    assert rows == ["model-2.ckpt", "model-1.ckpt"]


def test_an_empty_test_set_is_refused_before_evaluating(ws, capsys, monkeypatch):
    write_cifar(ws.data_dir, n_per_batch=16, n_test=0, seed=0)  # the same training images
    monkeypatch.setattr(Model.MyModel, "load", lambda *a: pytest.fail("evaluated no images"))
    message = assert_refused(ws, ws.test("--json", ws.path("r.json")), capsys,
                             ["test_batch", "no images"])
    assert "nan" not in message.lower()


def test_a_damaged_class_name_file_is_refused_before_evaluating(ws, capsys, no_evaluation):
    meta = os.path.join(ws.data_dir, "cifar-10-batches-py", "batches.meta")
    with open(meta, "wb") as f:
        pickle.dump({"label_names": ["cat"]}, f, protocol=2)
    assert_refused(ws, ws.test("--json", ws.path("r.json")), capsys, ["batches.meta"])


# --------------------------------------------------------------------------------------------
# Private images scaled to [0, 1]

def test_private_floats_within_0_and_1_are_predicted_with_a_warning(ws, capsys):
    scaled = ws.path("scaled.npy")
    np.save(scaled, np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32))
    capsys.readouterr()
    assert run(ws.predict("--private_data", scaled, "--output", ws.path("p.npy"))) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: "), err
    assert "scaled.npy" in err[0] and "[0, 255]" in err[0]


def test_private_images_in_0_to_255_give_no_warning(ws, capsys):
    floats = ws.path("floats.npy")
    np.save(floats, 255 * np.random.default_rng(3).random((4, 3072), dtype=np.float32))
    for private in (ws.private, floats):
        capsys.readouterr()
        assert run(ws.predict("--private_data", private, "--output", ws.path("p.npy"))) == 0
        assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------
# Flags that mean something in one mode only

MODES = ("train", "test", "predict", "plot", "sweep")
# flag -> (its values, the modes it applies to); written out here, not read from main.MODE_FLAGS,
# so that a flag missing there is caught.
ONE_MODE_FLAGS = {
    "--json": (["r.json"], ("test",)),
    "--eval_set": (["valid"], ("test",)),
    "--checkpoints": (["1"], ("test",)),
    "--checkpoint": (["1"], ("predict",)),
    "--private_data": (["p.npy"], ("predict",)),
    "--output": (["o.npy"], ("predict",)),
    "--sweep": (["learning_rate", "0.1"], ("sweep",)),
    "--resume": ([], ("train", "sweep")),
    "--overwrite": ([], ("train", "sweep")),
    "--test": ([], ("train",)),
    "--tta": (["flip"], ("test", "predict")),
    "--tensorboard": (["tb"], ("train", "sweep")),
}
WRONG = [(flag, mode) for flag, (_, modes) in ONE_MODE_FLAGS.items() for mode in MODES
         if mode not in modes]


@pytest.mark.parametrize("flag,mode", WRONG)
def test_a_flag_of_another_mode_is_refused(tmp_path, capsys, flag, mode):
    values, modes = ONE_MODE_FLAGS[flag]
    args = ["--mode", mode, flag, *values, "--data_dir", str(tmp_path / "no_data"),
            "--modeldir", str(tmp_path / "no_model"), "--device", "cpu", "--no_download"]
    if mode == "sweep" and flag != "--sweep":
        args += ["--sweep", "learning_rate", "0.1"]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.match(rf"^error: {flag} applies to --mode {modes[0]}\b", err), err
    assert os.listdir(tmp_path) == []
