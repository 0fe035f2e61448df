"""Checkpoints: contents, atomic writes, exact resume (in process and after kills), refusals."""
import errno
import os
import re
import shutil
import signal

import numpy as np
import pytest
import torch

import main
import Model
import checkpoints
from cifar_files import make_batch, write_cifar
from cli_tools import (TINY, assert_same_training_state, load, run_main, snapshot, start_main,
                       wait_for_file)
from configure import Config
from Model import MyModel

TRAINING_KEYS = {"epoch", "model", "optimizer", "config", "rng", "metrics"}


def tiny_config(modeldir, **overrides) -> Config:
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=2, save_interval=1,
                  lr_decay_epochs=(), device="cpu", modeldir=str(modeldir), eval_batch_size=64)
    values.update(overrides)
    return Config(**values)


def tiny_model(modeldir, **overrides) -> MyModel:
    return MyModel(tiny_config(modeldir, **overrides), log=lambda *a: None)


def data(n: int = 24, seed: int = 0):
    return make_batch(n, np.random.default_rng(seed))


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def leftovers(folder) -> list:
    return [name for name in os.listdir(folder) if name.endswith(".part")]


# --------------------------------------------------------------------------------------------
# Contents

def test_checkpoint_loads_with_weights_only_and_holds_the_training_state(tmp_path):
    x, y = data()
    model = tiny_model(tmp_path / "m")
    model.train(x, y)
    assert Model.list_checkpoints(str(tmp_path / "m")) == [1, 2]
    ckpt = torch.load(str(tmp_path / "m" / "model-2.ckpt"), map_location="cpu", weights_only=True)
    assert TRAINING_KEYS <= set(ckpt)
    assert ckpt["epoch"] == 2
    assert not any(k.startswith("module.") or "_orig_mod." in k for k in ckpt["model"])
    live = model.network.state_dict()
    assert ckpt["model"].keys() == live.keys()
    assert all(torch.equal(ckpt["model"][k], live[k]) for k in live)
    assert len(ckpt["optimizer"]["state"]) == len(list(model.network.parameters()))
    assert all("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())
    assert ckpt["config"] == model.config.to_dict()
    assert [m["epoch"] for m in ckpt["metrics"]] == [1, 2]
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"])
    # The weights alone rebuild the network, under the documented names.
    fresh = tiny_model(tmp_path / "other")
    fresh.network.load_state_dict(ckpt["model"], strict=True)


# --------------------------------------------------------------------------------------------
# Atomic writes

def _failing_writer(obj, f):
    f.write(b"\x80\x02 half a checkpoint" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_save_that_fails_mid_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "model-1.ckpt")
    checkpoints.atomic_save({"epoch": 1, "w": torch.arange(5.0)}, path)
    before = file_bytes(path)
    with pytest.raises(Model.CheckpointError) as info:
        checkpoints.atomic_save({"epoch": 2, "w": torch.zeros(5)}, path, writer=_failing_writer)
    message = str(info.value)
    assert path in message and "No space left on device" in message and "intact" in message
    assert file_bytes(path) == before
    assert load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["model-1.ckpt"]  # no temporary file left


def test_atomic_save_interrupted_mid_write_leaves_no_temporary(tmp_path):
    def interrupted(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    path = str(tmp_path / "model-1.ckpt")
    with pytest.raises(KeyboardInterrupt):
        checkpoints.atomic_save({"epoch": 1}, path, writer=interrupted)
    assert os.listdir(tmp_path) == []


def test_disk_full_during_training_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    x, y = data()
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=1).train(x, y)
    before = file_bytes(modeldir / "model-1.ckpt")
    real_save = checkpoints.atomic_save
    monkeypatch.setattr(checkpoints, "atomic_save",
                        lambda obj, path, **kw: real_save(obj, path, _failing_writer))
    with pytest.raises(Model.CheckpointError, match="No space left on device"):
        tiny_model(modeldir, max_epoch=2).train(x, y, resume="latest")
    assert sorted(os.listdir(modeldir)) == ["model-1.ckpt"]
    assert file_bytes(modeldir / "model-1.ckpt") == before


def test_stale_temporaries_are_removed_when_training_starts(tmp_path):
    modeldir = tmp_path / "m"
    modeldir.mkdir()
    stale = modeldir / f".model-3.ckpt{checkpoints._TMP_MARK}4242.part"
    stale.write_bytes(b"left by a killed process")
    (modeldir / "notes.txt").write_text("mine")
    x, y = data(16)
    tiny_model(modeldir, max_epoch=1).train(x, y)
    assert not stale.exists()
    assert (modeldir / "notes.txt").read_text() == "mine"
    assert (modeldir / "model-1.ckpt").exists()


# --------------------------------------------------------------------------------------------
# Exact resume, in process

@pytest.mark.parametrize("resume", ["latest", "2"])
def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, resume):
    x, y = data(32)
    schedule = dict(lr_decay_epochs=(3,), save_interval=1)
    straight = tiny_model(tmp_path / "straight", max_epoch=4, **schedule)
    straight.train(x, y)

    tiny_model(tmp_path / "split", max_epoch=2, **schedule).train(x, y)
    resumed = tiny_model(tmp_path / "split", max_epoch=4, **schedule)
    history = resumed.train(x, y, resume=resume)

    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    a, b = straight.network.state_dict(), resumed.network.state_dict()
    for k in a:  # parameters and buffers (running statistics, batch counts)
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"
    for p, q in zip(straight.network.parameters(), resumed.network.parameters()):
        assert torch.equal(straight.optimizer.state[p]["momentum_buffer"],
                           resumed.optimizer.state[q]["momentum_buffer"])
    assert_same_training_state(load(tmp_path / "straight" / "model-4.ckpt"),
                               load(tmp_path / "split" / "model-4.ckpt"))


def test_resume_latest_skips_a_damaged_newest_checkpoint(tmp_path):
    x, y = data(16)
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=2).train(x, y)
    newest = modeldir / "model-2.ckpt"
    newest.write_bytes(file_bytes(newest)[:200])  # truncated
    lines = []
    model = MyModel(tiny_config(modeldir, max_epoch=2), log=lines.append)
    model.train(x, y, resume="latest")
    assert any("skipping" in line and "model-2.ckpt" in line for line in lines)
    assert any("resuming from" in line and "model-1.ckpt" in line for line in lines)
    assert load(newest)["epoch"] == 2  # epoch 2 trained again and written whole


def test_resume_refuses_when_every_checkpoint_is_damaged(tmp_path):
    x, y = data(16)
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=2).train(x, y)
    for name in ("model-1.ckpt", "model-2.ckpt"):
        (modeldir / name).write_bytes(b"not a checkpoint")
    before = snapshot(modeldir)
    with pytest.raises(Model.CheckpointError, match="nothing to resume from"):
        tiny_model(modeldir, max_epoch=2).train(x, y, resume="latest")
    assert snapshot(modeldir) == before  # nothing overwritten


def test_resume_latest_in_an_empty_modeldir_starts_anew(tmp_path):
    x, y = data(16)
    lines = []
    MyModel(tiny_config(tmp_path / "m", max_epoch=1), log=lines.append).train(x, y, resume="latest")
    assert any("starting anew" in line for line in lines)
    assert load(tmp_path / "m" / "model-1.ckpt")["epoch"] == 1


def test_signal_during_validation_stops_after_the_epoch_with_a_checkpoint(tmp_path, monkeypatch):
    x, y = data(24)
    model = tiny_model(tmp_path / "m", max_epoch=3, save_interval=10)
    real_accuracy = model.accuracy

    def accuracy_then_sigint(xv, yv):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while validating epoch 1
        return real_accuracy(xv, yv)

    monkeypatch.setattr(model, "accuracy", accuracy_then_sigint)
    with pytest.raises(Model.TrainingStopped) as stopped:
        model.train(x[:16], y[:16], x[16:], y[16:])
    assert stopped.value.signum == signal.SIGINT
    ckpt = load(tmp_path / "m" / Model.INTERRUPTED)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert len(ckpt["metrics"]) == 1 and "valid_acc" in ckpt["metrics"][0]


# --------------------------------------------------------------------------------------------
# Non-finite loss

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    x, y = data()
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=2).train(x, y)
    before = snapshot(str(modeldir))
    real = Model.F.cross_entropy
    monkeypatch.setattr(Model.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(Model.TrainingError) as info:
        tiny_model(modeldir, max_epoch=4).train(x, y, resume="latest")
    assert "NaN or infinite" in str(info.value) and "epoch 3" in str(info.value)
    assert "model-2.ckpt" in str(info.value)
    assert snapshot(str(modeldir)) == before


# --------------------------------------------------------------------------------------------
# The command line, in process (cheap): refusals and errors give an exit code and one message

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A finished 2-epoch run by main.main: (data_dir, modeldir, common flags)."""
    root = tmp_path_factory.mktemp("cli_run")
    data_dir = str(root / "data")
    write_cifar(data_dir, n_per_batch=8, n_test=8, seed=0)
    modeldir = str(root / "model")
    flags = TINY + ["--data_dir", data_dir, "--split_index", "32", "--save_interval", "1",
                    "--lr_decay_epochs"]
    assert main.main(flags + ["--modeldir", modeldir, "--max_epoch", "2"]) == 0
    return data_dir, modeldir, flags


@pytest.fixture
def copy_of_run(cli_run, tmp_path):
    data_dir, modeldir, flags = cli_run
    copy = str(tmp_path / "model")
    shutil.copytree(modeldir, copy)
    return data_dir, copy, flags


@pytest.mark.parametrize("change, named", [
    (["--resnet_size", "2"], "resnet_size"),
    (["--first_num_filters", "8"], "first_num_filters"),
    (["--seed", "1"], "seed was 0, now 1"),
    (["--batch_size", "4"], "batch_size was 8, now 4"),
    ("other data", "data was"),
])
def test_resume_of_a_different_run_is_refused(copy_of_run, tmp_path, capsys, change, named):
    data_dir, modeldir, flags = copy_of_run
    if change == "other data":
        data_dir = str(tmp_path / "other_data")
        write_cifar(data_dir, n_per_batch=8, n_test=8, seed=1)
        change = ["--data_dir", data_dir]
    before = snapshot(modeldir)
    capsys.readouterr()
    rc = main.main(flags + ["--modeldir", modeldir, "--max_epoch", "4", "--resume"] + change)
    err = capsys.readouterr().err
    assert rc != 0
    assert err.startswith("error: ") and named in err, err
    assert snapshot(modeldir) == before


def test_resume_of_a_missing_number_lists_the_existing_ones(copy_of_run, capsys):
    data_dir, modeldir, flags = copy_of_run
    before = snapshot(modeldir)
    capsys.readouterr()
    rc = main.main(flags + ["--modeldir", modeldir, "--max_epoch", "4", "--resume", "7"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no checkpoint 7" in err and "checkpoints there: 1, 2" in err, err
    assert snapshot(modeldir) == before


def test_diverging_training_exits_non_zero_with_a_message(copy_of_run, capsys):
    data_dir, modeldir, flags = copy_of_run
    capsys.readouterr()
    modeldir = modeldir + "_new"
    rc = main.main(flags + ["--modeldir", modeldir, "--max_epoch", "3", "--learning_rate", "1e30"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and "NaN or infinite" in err and "--learning_rate" in err
    assert Model.list_checkpoints(modeldir) == []


# --------------------------------------------------------------------------------------------
# Killed and interrupted subprocesses resume exactly

@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    """Data for runs whose epochs take about half a second, and an uninterrupted run on it."""
    root = tmp_path_factory.mktemp("killable")
    data_dir = str(root / "data")
    write_cifar(data_dir, n_per_batch=120, n_test=8, seed=3)
    flags = TINY + ["--data_dir", data_dir, "--split_index", "500", "--max_epoch", "4",
                    "--save_interval", "1", "--lr_decay_epochs", "3"]
    reference = str(root / "reference")
    done = run_main(flags + ["--modeldir", reference])
    assert done.returncode == 0, done.stderr
    return flags, load(os.path.join(reference, "model-4.ckpt"))


def saved_path(stderr: str) -> str:
    """The checkpoint a stopped run names: '... progress saved to PATH'."""
    found = re.search(r"progress saved to (\S+)", stderr)
    assert found, stderr
    return found.group(1)


def _interrupt_after_first_checkpoint(flags, modeldir, signum):
    proc = start_main(flags + ["--modeldir", modeldir])
    wait_for_file(proc, os.path.join(modeldir, "model-1.ckpt"))
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(killable, tmp_path):
    flags, reference = killable
    modeldir = str(tmp_path / "m")
    rc, out, err = _interrupt_after_first_checkpoint(flags, modeldir, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not os.path.exists(os.path.join(modeldir, "model-4.ckpt"))  # it really was cut short
    resumed = run_main(flags + ["--modeldir", modeldir, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert leftovers(modeldir) == []
    assert_same_training_state(reference, load(os.path.join(modeldir, "model-4.ckpt")))


def test_sigint_saves_interrupted_ckpt_and_resume_is_exact(killable, tmp_path):
    flags, reference = killable
    modeldir = str(tmp_path / "m")
    rc, out, err = _interrupt_after_first_checkpoint(flags, modeldir, signal.SIGINT)
    assert rc == 130, err
    assert "Traceback" not in out + err
    # Mid-epoch the state goes to interrupted.ckpt; a signal that lands while an epoch's
    # checkpoint is written stops at that checkpoint instead. Either way stderr names it.
    interrupted = saved_path(err)
    saved = load(interrupted)
    assert TRAINING_KEYS <= set(saved) and saved["epoch"] >= 1
    assert not os.path.exists(os.path.join(modeldir, "model-4.ckpt"))

    resumed = run_main(flags + ["--modeldir", modeldir, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {interrupted}" in resumed.stdout
    assert not os.path.exists(os.path.join(modeldir, Model.INTERRUPTED))  # superseded
    assert_same_training_state(reference, load(os.path.join(modeldir, "model-4.ckpt")))


def test_sigterm_saves_and_exits_143(killable, tmp_path):
    flags, _ = killable
    modeldir = str(tmp_path / "m")
    rc, out, err = _interrupt_after_first_checkpoint(flags, modeldir, signal.SIGTERM)
    assert rc == 143, err
    assert "Traceback" not in out + err
    assert "SIGTERM" in err
    assert load(saved_path(err))["epoch"] >= 1
