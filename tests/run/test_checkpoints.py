"""Checkpoints: contents, atomic writes, exact resume (in process and after kills), refusals."""
import errno
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import DataReader
import main
import Model
from trainer.run import checkpoints
from trainer.storage import atomic
from cifar_files import make_batch, write_cifar
from cli_tools import (ENV, ROOT, TIMEOUT, TINY, assert_same_training_state, load, main_cmd,
                       run_main, snapshot, start_main, wait_for_file)
from configure import RUN_DEFINING_KEYS, Config
from Model import MyModel
from trainer.training import loop, steps

TRAINING_KEYS = {"epoch", "model", "optimizer", "config", "rng", "metrics"}


def tiny_config(modeldir, **overrides) -> Config:
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=2, save_interval=1,
                  lr_decay_epochs=(), device="cpu", modeldir=str(modeldir), eval_batch_size=64,
                  amp="off")  # fp32: --amp auto would time bf16
    values.update(overrides)
    return Config(**values)


def tiny_model(modeldir, **overrides) -> MyModel:
    return MyModel(tiny_config(modeldir, **overrides), log=lambda *a: None)


def data(n: int = 24, seed: int = 0):
    return make_batch(n, np.random.default_rng(seed))


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def checkpoint_files(folder) -> dict:
    """The snapshot of folder's checkpoints and temporaries (the run's records left out)."""
    return {k: v for k, v in snapshot(str(folder)).items() if k.endswith((".ckpt", ".part"))}


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


def test_an_atomic_write_that_fails_mid_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "model-1.ckpt")
    checkpoints.save({"epoch": 1, "w": torch.arange(5.0)}, path)
    before = file_bytes(path)
    with pytest.raises(Model.CheckpointError) as info:
        atomic.write(path, {"epoch": 2, "w": torch.zeros(5)}, _failing_writer,
                     checkpoints.CheckpointError)
    message = str(info.value)
    assert path in message and "No space left on device" in message and "intact" in message
    assert file_bytes(path) == before
    assert load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["model-1.ckpt"]  # no temporary file left


def test_an_atomic_write_interrupted_mid_write_leaves_no_temporary(tmp_path):
    def interrupted(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    path = str(tmp_path / "model-1.ckpt")
    with pytest.raises(KeyboardInterrupt):
        atomic.write(path, {"epoch": 1}, interrupted, checkpoints.CheckpointError)
    assert os.listdir(tmp_path) == []


def test_disk_full_during_training_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    x, y = data()
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=1).train(x, y)
    before = file_bytes(modeldir / "model-1.ckpt")
    monkeypatch.setattr(checkpoints, "save", lambda state, path: atomic.write(
        path, state, _failing_writer, checkpoints.CheckpointError))
    with pytest.raises(Model.CheckpointError, match="No space left on device"):
        tiny_model(modeldir, max_epoch=2).train(x, y, resume="latest")
    assert sorted(os.listdir(modeldir)) == ["config.json", "metrics.csv", "model-1.ckpt"]
    assert file_bytes(modeldir / "model-1.ckpt") == before


def test_a_failure_inside_torchs_own_writer_is_a_checkpoint_error(tmp_path):
    def torch_style_failure(obj, f):
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    path = str(tmp_path / "model-1.ckpt")
    with pytest.raises(checkpoints.CheckpointError, match="model-1.ckpt"):
        atomic.write(path, {"epoch": 1}, torch_style_failure, checkpoints.CheckpointError)
    assert os.listdir(tmp_path) == []


def _file_size_limit(limit: int):
    """For a child process: files may not grow past limit bytes, and writing past it fails with
    EFBIG instead of killing the process, as a full disk fails a write."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


@pytest.fixture
def file_size_limit():
    """Within the test, files may not grow past the given size (the soft limit only, so it can be
    lifted again); writing past it fails with EFBIG, as writing to a full disk fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda limit: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_a_write_failure_names_its_real_cause(tmp_path, file_size_limit):
    # Writing straight into the file, torch reports this failure as "unexpected pos ..." (a
    # RuntimeError); the checkpoint writer must report what the system said.
    state = {"weights": torch.zeros(20_000), "rng": list(range(700))}
    path = str(tmp_path / "model-1.ckpt")
    file_size_limit(5_000)
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.save(state, path)
    file_size_limit(resource.RLIM_INFINITY)
    assert "File too large" in str(info.value) and "free some space" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_real_write_failure_in_training_is_one_clear_line(cli_run, tmp_path):
    data_dir, modeldir, flags = cli_run
    copy = str(tmp_path / "model")
    shutil.copytree(modeldir, copy)
    before = snapshot(copy)
    assert os.path.getsize(os.path.join(copy, "model-2.ckpt")) > 20_000
    # The same write failure a full disk gives, through the real writer, in a real run.
    done = subprocess.run(main_cmd(flags + ["--modeldir", copy, "--max_epoch", "3", "--resume"]),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT,
                          preexec_fn=_file_size_limit(20_000))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: could not write") and "model-3.ckpt" in lines[0]
    assert "File too large" in lines[0] and "free some space" in lines[0]
    assert checkpoint_files(copy) == {k: v for k, v in before.items() if k.endswith(".ckpt")}


def test_stale_temporaries_are_removed_when_training_starts(tmp_path):
    modeldir = tmp_path / "m"
    modeldir.mkdir()
    stale = modeldir / f".model-3.ckpt{atomic.TMP_MARK}4242.part"
    stale.write_bytes(b"left by a killed process")
    (modeldir / "notes.txt").write_text("mine")
    records = [modeldir / f".{name}{atomic.TMP_MARK}123.part"
               for name in ("metrics.csv", "config.json", "curves.png")]
    for record in records:
        record.write_bytes(b"left by a killed process")
    prediction = modeldir / f".predictions.npy{atomic.TMP_MARK}77.part"
    prediction.write_bytes(b"a prediction being written: not the run's")
    x, y = data(16)
    tiny_model(modeldir, max_epoch=1).train(x, y)
    assert not stale.exists() and not any(record.exists() for record in records)
    assert (modeldir / "notes.txt").read_text() == "mine" and prediction.exists()
    assert (modeldir / "model-1.ckpt").exists()


# --------------------------------------------------------------------------------------------
# One run per model folder

def test_a_new_run_refuses_a_folder_holding_another_run(tmp_path):
    x, y = data(16)
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=2).train(x, y)
    (modeldir / checkpoints.INTERRUPTED).write_bytes(file_bytes(modeldir / "model-1.ckpt"))
    before = snapshot(str(modeldir))
    with pytest.raises(checkpoints.CheckpointError) as info:
        tiny_model(modeldir, max_epoch=1, seed=5).train(x, y)
    message = str(info.value)
    assert str(modeldir) in message and "model-1.ckpt" in message
    assert "--resume" in message and "--modeldir" in message and "--overwrite" in message
    assert snapshot(str(modeldir)) == before


def test_overwrite_removes_the_earlier_run_and_nothing_else(tmp_path):
    x, y = data(16)
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=2).train(x, y)
    old_first = load(modeldir / "model-1.ckpt")
    (modeldir / checkpoints.INTERRUPTED).write_bytes(file_bytes(modeldir / "model-1.ckpt"))
    (modeldir / "notes.txt").write_text("mine")
    lines = []
    MyModel(tiny_config(modeldir, max_epoch=1, seed=5), log=lines.append).train(x, y, overwrite=True)
    assert sorted(os.listdir(modeldir)) == ["config.json", "metrics.csv", "model-1.ckpt",
                                            "notes.txt"]
    assert (modeldir / "notes.txt").read_text() == "mine"
    new_first = load(modeldir / "model-1.ckpt")
    assert new_first["config"]["seed"] == 5
    assert not torch.equal(new_first["model"]["output_layer.fc.weight"],
                           old_first["model"]["output_layer.fc.weight"])
    assert any("removed 5 files" in line for line in lines), lines  # 3 checkpoints, 2 records


def test_the_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    modeldir = str(tmp_path)
    with checkpoints.RunLock(modeldir):
        with pytest.raises(checkpoints.CheckpointError) as info:
            with checkpoints.RunLock(modeldir):
                pass
        assert f"process {os.getpid()}" in str(info.value) and modeldir in str(info.value)
    with checkpoints.RunLock(modeldir):  # released on leaving
        pass


def test_the_run_lock_of_a_killed_process_does_not_linger(tmp_path):
    modeldir = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom trainer.run import checkpoints\n"
         "with checkpoints.RunLock(sys.argv[1]):\n    print('locked', flush=True)\n"
         "    time.sleep(600)\n", modeldir],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(checkpoints.CheckpointError, match=f"process {holder.pid}"):
            with checkpoints.RunLock(modeldir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with checkpoints.RunLock(modeldir):  # kill -9 took the lock with it
        pass


def test_a_lock_file_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / checkpoints.LOCK).mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="lock file .*--modeldir"):
        with checkpoints.RunLock(str(tmp_path)):
            pass


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


def test_resume_latest_in_an_empty_modeldir_is_refused(tmp_path):
    x, y = data(16)
    with pytest.raises(Model.CheckpointError, match="nothing to resume"):
        tiny_model(tmp_path / "m", max_epoch=1).train(x, y, resume="latest")
    assert not (tmp_path / "m" / "model-1.ckpt").exists()


def test_signal_during_validation_stops_after_the_epoch_with_a_checkpoint(tmp_path, monkeypatch):
    x, y = data(24)
    model = tiny_model(tmp_path / "m", max_epoch=3, save_interval=10)
    real_validate = model.validate

    def validate_then_sigint(xv, yv):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while validating epoch 1
        return real_validate(xv, yv)

    monkeypatch.setattr(model, "validate", validate_then_sigint)
    with pytest.raises(Model.TrainingStopped) as stopped:
        model.train(x[:16], y[:16], x[16:], y[16:])
    assert stopped.value.signum == signal.SIGINT
    ckpt = load(tmp_path / "m" / Model.INTERRUPTED)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert len(ckpt["metrics"]) == 1 and "valid_acc" in ckpt["metrics"][0]


# --------------------------------------------------------------------------------------------
# Checkpoints that load safely but are malformed: refused by name, in one place

FIRST_CONV = "start_layer.0.weight"


def _set(key, value):
    def mutate(ckpt):
        ckpt[key] = value
    return mutate


def _drop(key):
    return lambda ckpt: ckpt.pop(key)


def _in(part, change):
    return lambda ckpt: change(ckpt[part])


# name -> (mutation, phrase the message must hold, does test/predict refuse it too?)
MALFORMED = {
    "no optimizer": (_drop("optimizer"), "'optimizer' is missing", False),
    "no scaler": (_drop("scaler"), "'scaler' is missing", False),
    "no rng": (_drop("rng"), "'rng' is missing", False),
    "no metrics": (_drop("metrics"), "'metrics' is missing", False),
    "no step": (_drop("step"), "'step' is missing", False),
    "no model": (_drop("model"), "'model' is missing", True),
    "no config": (_drop("config"), "'config' is missing", True),
    "epoch not an integer": (_set("epoch", 1.5), "'epoch' must be a whole number", True),
    "epoch a string": (_set("epoch", "2"), "'epoch' must be a whole number", True),
    "config not a dict": (_set("config", ["resnet_size", 1]), "'config' must be a dict", True),
    "rng not a dict": (_set("rng", [1, 2, 3]), "'rng'", False),
    "rng without torch": (_in("rng", lambda r: r.pop("torch")), "'rng'", False),
    "python rng cut short": (_in("rng", lambda r: r["python"]["state"].pop()),
                             "Python random state", False),
    "torch rng of the wrong size": (_in("rng", lambda r: r.update(torch=torch.zeros(7, dtype=torch.uint8))),
                                    "torch random state", False),
    "empty param_groups": (_in("optimizer", lambda o: o.update(param_groups=[])),
                           "no parameter groups", False),
    "optimizer lr not finite": (_in("optimizer", lambda o: o["param_groups"][0].update(lr=float("nan"))),
                                "lr", False),
    "momentum buffer of the wrong shape": (
        _in("optimizer", lambda o: o["state"][0].update(momentum_buffer=torch.zeros(3))),
        "momentum_buffer of parameter 0 has shape (3,)", False),
    "metrics of another length": (_in("metrics", lambda m: m.pop()), "'metrics' holds 1 epochs", False),
    "scaler not a dict": (_set("scaler", 3), "'scaler'", False),
    "tensor of the wrong shape": (_in("model", lambda m: m.update({FIRST_CONV: torch.zeros(4, 3, 5, 5)})),
                                  f"{FIRST_CONV} has shape (4, 3, 5, 5)", True),
    "extra state-dict key": (_in("model", lambda m: m.update({"extra.weight": torch.zeros(2)})),
                             "extra.weight", True),
    "missing state-dict key": (_in("model", lambda m: m.pop("output_layer.fc.bias")),
                               "lacks output_layer.fc.bias", True),
    "integer weights": (_in("model", lambda m: m.update({FIRST_CONV: m[FIRST_CONV].long()})),
                        f"{FIRST_CONV} is torch.int64", True),
    "NaN weights": (_in("model", lambda m: m[FIRST_CONV].fill_(float("nan"))),
                    f"{FIRST_CONV} holds NaN", True),
    "model entry not a tensor": (_in("model", lambda m: m.update({FIRST_CONV: [1.0, 2.0]})),
                                 FIRST_CONV, True),
    "not a dict at all": (None, "not a dict", True),
}


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished 2-epoch run (a checkpoint per epoch) and its data."""
    modeldir = tmp_path_factory.mktemp("two_epochs") / "m"
    x, y = data(16)
    tiny_model(modeldir, max_epoch=2).train(x, y)
    return str(modeldir), x, y


def test_a_best_checkpoint_past_the_resumed_epoch_is_dropped_and_no_other(two_epochs, tmp_path):
    modeldir, _, _ = two_epochs
    folder = tmp_path / "m"
    folder.mkdir()
    best = folder / checkpoints.BEST
    for resumed_at, kept in ((1, False), (2, True), (3, True)):  # the best is of epoch 2
        shutil.copyfile(os.path.join(modeldir, "model-2.ckpt"), best)
        checkpoints.drop_best_past(str(folder), resumed_at, log=lambda *a: None)
        assert best.exists() == kept, f"resumed at epoch {resumed_at}"


def _malformed_copy(two_epochs, tmp_path, name) -> str:
    modeldir, _, _ = two_epochs
    copy = str(tmp_path / "m")
    shutil.copytree(modeldir, copy)
    mutate = MALFORMED[name][0]
    ckpt = load(os.path.join(copy, "model-2.ckpt"))
    if mutate is None:
        ckpt = [ckpt["epoch"], ckpt["model"]]
    else:
        mutate(ckpt)
    torch.save(ckpt, os.path.join(copy, "model-2.ckpt"))
    return copy


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_checkpoint_is_refused_by_name_on_resume(two_epochs, tmp_path, name):
    _, x, y = two_epochs
    copy = _malformed_copy(two_epochs, tmp_path, name)
    before = snapshot(copy)
    with pytest.raises(checkpoints.CheckpointError) as info:
        tiny_model(copy, max_epoch=3).train(x, y, resume=2)
    message = str(info.value)
    assert "model-2.ckpt" in message and MALFORMED[name][1] in message, message
    assert snapshot(copy) == before


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_checkpoint_in_test_and_predict(two_epochs, tmp_path, name):
    copy = _malformed_copy(two_epochs, tmp_path, name)
    model = tiny_model(copy)
    if MALFORMED[name][2]:
        with pytest.raises(checkpoints.CheckpointError) as info:
            model.load(2)
        assert "model-2.ckpt" in str(info.value) and MALFORMED[name][1] in str(info.value)
    else:  # only training state is damaged: the weights still serve test and predict
        model.load(2)
        reference = load(os.path.join(two_epochs[0], "model-2.ckpt"))["model"]
        assert all(torch.equal(v, reference[k]) for k, v in model.network.state_dict().items())


def test_a_malformed_interrupted_checkpoint_is_skipped_by_a_plain_resume(two_epochs, tmp_path):
    modeldir, x, y = two_epochs
    copy = str(tmp_path / "m")
    shutil.copytree(modeldir, copy)
    bad = load(os.path.join(copy, "model-2.ckpt"))
    bad["epoch"], bad["step"] = "2", 3  # as a hand edit or another program might leave it
    torch.save(bad, os.path.join(copy, checkpoints.INTERRUPTED))
    lines = []
    MyModel(tiny_config(copy, max_epoch=3), log=lines.append).train(x, y, resume="latest")
    assert any("skipping" in line and checkpoints.INTERRUPTED in line and "'epoch'" in line
               for line in lines), lines
    assert any("resuming from" in line and "model-2.ckpt" in line for line in lines), lines
    assert load(os.path.join(copy, "model-3.ckpt"))["epoch"] == 3


# --------------------------------------------------------------------------------------------
# Resuming under another --amp: every pair

@pytest.mark.parametrize("saved", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("now", ["off", "bf16", "fp16"])
def test_resume_under_another_amp_setting(tmp_path, saved, now):
    x, y = data(16)
    first = tiny_model(tmp_path / "m", max_epoch=1, amp=saved)
    first.train(x, y)
    saved_scale = first.scaler.get_scale() if saved == "fp16" else None
    lines = []
    resumed = MyModel(tiny_config(tmp_path / "m", max_epoch=2, amp=now), log=lines.append)
    if now == "fp16" and saved == "fp16":  # the loss scale carries over
        loop.resume(resumed, "latest", DataReader.fingerprint(x, y))  # look at the scaler itself
        assert resumed.scaler.get_scale() == saved_scale
        return
    history = resumed.train(x, y, resume="latest")
    assert [m["epoch"] for m in history] == [1, 2]
    assert np.isfinite(history[-1]["train_loss"])
    assert any("loss scale starts afresh" in line for line in lines) == (now == "fp16")


# --------------------------------------------------------------------------------------------
# Non-finite loss

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    x, y = data()
    modeldir = tmp_path / "m"
    tiny_model(modeldir, max_epoch=2).train(x, y)
    before = checkpoint_files(modeldir)
    real = steps.F.cross_entropy
    monkeypatch.setattr(steps.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(Model.TrainingError) as info:
        tiny_model(modeldir, max_epoch=4).train(x, y, resume="latest")
    assert "NaN or infinite" in str(info.value) and "epoch 3" in str(info.value)
    assert "model-2.ckpt" in str(info.value)
    assert checkpoint_files(modeldir) == before


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


# Every key that defines a run, with a command-line change of it (the run was made with TINY,
# --split_index 32 and no decay epochs).
RUN_CHANGES = {
    "network": ["--network", "simple_nn"],
    "batch_norm": ["--batch_norm"],
    "downsample": ["--downsample", "d"],
    "shortcut": ["--shortcut", "pad"],
    "activation": ["--activation", "swish"],
    "normalize": ["--normalize", "dataset"],
    "l1": ["--l1", "1e-5"],
    "resnet_version": ["--resnet_version", "2"],
    "resnet_size": ["--resnet_size", "2"],
    "first_num_filters": ["--first_num_filters", "8"],
    "num_classes": ["--num_classes", "20"],
    "batch_size": ["--batch_size", "4"],
    "learning_rate": ["--learning_rate", "0.05"],
    "momentum": ["--momentum", "0.8"],
    "weight_decay": ["--weight_decay", "1e-4"],
    "lr_decay_epochs": ["--lr_decay_epochs", "3"],
    "lr_decay_factor": ["--lr_decay_factor", "0.5"],
    "seed": ["--seed", "1"],
    "split_index": ["--split_index", "30"],
    "train_all": ["--train_all"],
    "pad_mode": ["--pad_mode", "reflect"],
    "dataset": ["--dataset", "cifar100"],
    "label_mode": ["--dataset", "cifar100", "--label_mode", "coarse"],
    "lr_schedule": ["--lr_schedule", "cosine"],
    "warmup_epochs": ["--warmup_epochs", "1"],
    "final_epoch_share": ["--final_epoch_share", "0.5"],
    "nesterov": ["--nesterov"],
    "no_decay_bn_bias": ["--no_decay_bn_bias"],
    "label_smoothing": ["--label_smoothing", "0.1"],
    "ema": ["--ema", "0.9"],
    "sync_bn": ["--sync_bn"],
    "width_scale": ["--width_scale", "0.5"],
    "whiten": ["--whiten"],
    "whiten_bias_share": ["--whiten_bias_share", "0.5"],
    "bias_lr_scale": ["--bias_lr_scale", "64"],
    "decoupled": ["--decoupled"],
    "lookahead": ["--lookahead"],
    "lookahead_decay": ["--lookahead_decay", "0.5"],
    "lookahead_every": ["--lookahead_every", "3"],
    "translate": ["--translate", "2"],
    "flip": ["--flip", "alternating"],
    "pretrained": ["--pretrained", "imagenet"],
    "freeze_epochs": ["--freeze_epochs", "1"],
    "input_size": ["--input_size", "64"],
    "muon_lr": ["--muon_lr", "0.1"],
    "muon_momentum": ["--muon_momentum", "0.5"],
}
# Flags of TINY that shape a ResNet only: a run of another network is given without them.
RESNET_ONLY = ("--resnet_size", "--first_num_filters")


def without(flags: list, names) -> list:
    """flags less each named flag and its value."""
    out = list(flags)
    for name in names:
        i = out.index(name)
        del out[i:i + 2]
    return out


def test_every_run_defining_key_has_a_refusal_test():
    assert set(RUN_CHANGES) == set(RUN_DEFINING_KEYS)


@pytest.mark.parametrize("key", list(RUN_CHANGES) + ["other data"])
def test_resume_of_a_different_run_is_refused(copy_of_run, tmp_path, capsys, key):
    data_dir, modeldir, flags = copy_of_run
    if key == "other data":
        data_dir = str(tmp_path / "other_data")
        write_cifar(data_dir, n_per_batch=8, n_test=8, seed=1)
        change, named = ["--data_dir", data_dir], "data was"
    else:
        change, named = RUN_CHANGES[key], key
    if key == "network":
        flags = without(flags, RESNET_ONLY)
    before = snapshot(modeldir)
    capsys.readouterr()
    try:
        rc = main.main(flags + ["--modeldir", modeldir, "--max_epoch", "4", "--resume"] + change)
    except SystemExit as e:  # argparse's way out, taken for a refused flag
        rc = e.code
    err = capsys.readouterr().err
    if key in ("batch_norm", "width_scale", "whiten", "whiten_bias_share", "pretrained",
               "freeze_epochs", "input_size"):  # flags of other networks: refused as flags
        assert rc == 2 and f"--{key} does not apply to --network resnet" in err, err
    else:
        assert rc == 1
        assert err.startswith("error: ") and named in err and "model-2.ckpt" in err, err
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


def _stop_inside_an_epoch(flags, modeldir, signum, epoch: int, step: int):
    """Run until it waits before (epoch, step), signal it there; (returncode, stdout, stderr)."""
    proc = start_main(flags + ["--modeldir", modeldir], env={Model.PAUSE_ENV: f"{epoch}:{step}"})
    waited = []
    for line in proc.stderr:  # the run says when it waits; nothing else goes to stderr before
        waited.append(line)
        if line.startswith("paused before"):
            break
    assert waited and waited[-1].startswith(f"paused before step {step} of epoch {epoch}"), waited
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, "".join(waited) + err


def test_sigint_inside_an_epoch_saves_its_partial_sums_and_resume_is_exact(killable, tmp_path):
    flags, reference = killable
    modeldir = str(tmp_path / "m")
    rc, out, err = _stop_inside_an_epoch(flags, modeldir, signal.SIGINT, epoch=2, step=5)
    assert rc == 130, err
    assert "Traceback" not in out + err
    interrupted = os.path.join(modeldir, Model.INTERRUPTED)
    assert saved_path(err) == interrupted
    saved = load(interrupted)
    # The signal came before step 5 of epoch 2: that step finishes, then the state is saved.
    assert (saved["epoch"], saved["step"]) == (1, 6)
    partial = saved["partial"]
    assert partial["seen"] == 6 * 8
    assert 0 <= partial["correct"] <= partial["seen"]
    assert 0 < partial["loss_sum"] / partial["seen"] < 10
    assert len(saved["metrics"]) == 1
    assert not os.path.exists(os.path.join(modeldir, "model-2.ckpt"))

    resumed = run_main(flags + ["--modeldir", modeldir, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {interrupted}: 1 epoch done, 6 steps into epoch 2" in resumed.stdout
    assert not os.path.exists(interrupted)  # superseded by model-2.ckpt
    final = load(os.path.join(modeldir, "model-4.ckpt"))
    # The resumed epoch's loss and accuracy include the steps done before the signal.
    assert final["metrics"][1]["train_loss"] == reference["metrics"][1]["train_loss"]
    assert final["metrics"][1]["train_acc"] == reference["metrics"][1]["train_acc"]
    assert_same_training_state(reference, final)


def test_sigterm_saves_and_exits_143(killable, tmp_path):
    flags, _ = killable
    modeldir = str(tmp_path / "m")
    rc, out, err = _interrupt_after_first_checkpoint(flags, modeldir, signal.SIGTERM)
    assert rc == 143, err
    assert "Traceback" not in out + err
    assert "SIGTERM" in err
    assert load(saved_path(err))["epoch"] >= 1
