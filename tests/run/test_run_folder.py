"""The model folder is the user's: what a training run may write, replace or delete there, and when
it must refuse instead (resume, overwrite, records, budgets)."""
import json
import os
import shutil

import numpy as np
import pytest

from trainer.training import budget_plan
from trainer.run import checkpoints
from cifar_files import make_batch, write_cifar
from cli_tools import TINY, load, run_main, snapshot
from configure import Config
from Model import MyModel

SPLIT = 80  # of the 100 training images write_cifar makes: 20 are left to validate on


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), n_per_batch=20, n_test=20)
    return str(root)


def flags(data_dir, modeldir, *extra):
    return TINY + ["--lr_decay_epochs", "--data_dir", data_dir, "--modeldir", str(modeldir),
                   "--split_index", str(SPLIT), "--save_interval", "1", "--quiet", *map(str, extra)]


def train(data_dir, modeldir, *extra):
    result = run_main(["--mode", "train"] + flags(data_dir, modeldir, *extra))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def three_epochs(data_dir, tmp_path_factory):
    """A finished three-epoch run with validation (model-1..3, model-best, records)."""
    modeldir = tmp_path_factory.mktemp("runs") / "three"
    train(data_dir, modeldir, "--max_epoch", 3)
    return modeldir


def copy_of(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def refused(result, *words):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# A resume that finds nothing to resume refuses (issue 16, item 1)

def test_a_resume_with_only_model_best_left_refuses_and_keeps_it(data_dir, three_epochs, tmp_path):
    folder = copy_of(three_epochs, tmp_path)
    for epoch in (1, 2, 3):  # the numbered checkpoints, deleted to save space
        os.remove(folder / f"model-{epoch}.ckpt")
    before = snapshot(str(folder))
    result = run_main(["--mode", "train", "--resume"] + flags(data_dir, folder, "--max_epoch", 3))
    refused(result, "nothing to resume", str(folder))
    assert snapshot(str(folder)) == before


def test_a_resume_in_an_empty_folder_refuses(data_dir, tmp_path):
    result = run_main(["--mode", "train", "--resume"] + flags(data_dir, tmp_path / "new",
                                                              "--max_epoch", 1))
    refused(result, "nothing to resume")
    assert not os.path.exists(tmp_path / "new" / "model-1.ckpt")


# --------------------------------------------------------------------------------------------
# Nothing is changed when nothing is trained; going back needs --overwrite (item 2, item 19)

@pytest.mark.parametrize("extra", [["--resume", "1", "--max_epoch", "1"],
                                   ["--resume", "--max_epoch", "2"],
                                   ["--resume", "2", "--max_epoch", "2"]])
def test_a_resume_with_nothing_to_train_changes_nothing(data_dir, three_epochs, tmp_path, extra):
    folder = copy_of(three_epochs, tmp_path)
    before = snapshot(str(folder))
    result = run_main(["--mode", "train"] + flags(data_dir, folder, *extra))
    assert "nothing to train" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(str(folder)) == before


def test_a_resume_to_an_earlier_epoch_is_refused_unless_overwrite_is_given(data_dir, three_epochs,
                                                                           tmp_path):
    folder = copy_of(three_epochs, tmp_path)
    before = snapshot(str(folder))
    result = run_main(["--mode", "train", "--resume", "1"] + flags(data_dir, folder,
                                                                   "--max_epoch", 3))
    refused(result, "model-2.ckpt", "model-3.ckpt", "--overwrite")
    assert snapshot(str(folder)) == before
    # Asked for, the run is retraced from epoch 1: the same run, so the same files again.
    retraced = run_main(["--mode", "train", "--resume", "1", "--overwrite"]
                        + flags(data_dir, folder, "--max_epoch", 3))
    assert retraced.returncode == 0, retraced.stderr
    for epoch in (2, 3):
        old, new = load(three_epochs / f"model-{epoch}.ckpt"), load(folder / f"model-{epoch}.ckpt")
        assert all(old["model"][k].equal(new["model"][k]) for k in old["model"])
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_overwrite_with_a_plain_resume_is_refused(data_dir, three_epochs, tmp_path):
    folder = copy_of(three_epochs, tmp_path)
    before = snapshot(str(folder))
    result = run_main(["--mode", "train", "--resume", "--overwrite"]
                      + flags(data_dir, folder, "--max_epoch", 4))
    refused(result, "--overwrite", "--resume")
    assert snapshot(str(folder)) == before


def test_a_resume_keeps_a_later_model_best_that_it_does_not_beat(data_dir, three_epochs, tmp_path):
    """kill -9 between a best checkpoint and the next numbered one: the plain resume retraces the
    lost epochs and must not delete (or replace) the best it only equals."""
    folder = copy_of(three_epochs, tmp_path)
    shutil.copy(folder / "model-3.ckpt", folder / checkpoints.BEST)  # as if epoch 3 were the best
    os.remove(folder / "model-3.ckpt")
    kept = (folder / checkpoints.BEST).read_bytes()
    train(data_dir, folder, "--resume", "--max_epoch", 3)
    assert (folder / checkpoints.BEST).read_bytes() == kept


# --------------------------------------------------------------------------------------------
# Any file a run would write makes a used folder (item 3)

@pytest.mark.parametrize("name", ["config.json", "metrics.csv", "curves.png", "predictions.npy"])
def test_a_new_run_refuses_a_folder_holding_a_file_it_would_write(data_dir, tmp_path, name):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / name).write_text("the user's own\n")
    before = snapshot(str(folder))
    result = run_main(["--mode", "train"] + flags(data_dir, folder, "--max_epoch", 1))
    refused(result, name, "--overwrite")
    assert snapshot(str(folder)) == before
    train(data_dir, folder, "--max_epoch", 1, "--overwrite")
    # Asked to, the run replaces (or, for the old model's predictions, removes) the file.
    assert not (folder / name).exists() or (folder / name).read_bytes() != b"the user's own\n"


# --------------------------------------------------------------------------------------------
# Records hold what ran (item 8)

def test_config_json_of_a_budget_run_records_the_plan(tmp_path, monkeypatch):
    plans = iter([3, 2, 1])  # 3 epochs; after each, those left (the speed is not the point)
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: next(plans))
    x, y = make_batch(32, np.random.default_rng(0))
    config = Config(resnet_size=1, first_num_filters=4, batch_size=8, device="cpu",
                    modeldir=str(tmp_path / "budget"), eval_batch_size=64, budget_minutes=1.0,
                    lr_decay_epochs=(100, 150), amp="off")
    MyModel(config, log=lambda *a: None).train(x[:24], y[:24], x[24:], y[24:])
    recorded = json.loads((tmp_path / "budget" / "config.json").read_text())["config"]
    newest = load(tmp_path / "budget" / "model-3.ckpt")
    assert recorded["max_epoch"] == 3 == newest["config"]["max_epoch"]
    assert recorded["lr_decay_epochs"] == [2] == newest["config"]["lr_decay_epochs"]  # 1.5, 2.25


def test_a_budget_too_small_for_one_epoch_is_refused(data_dir, tmp_path):
    folder = tmp_path / "small"
    result = run_main(["--mode", "train"] + flags(data_dir, folder, "--budget_minutes", 0.001))
    refused(result, "--budget_minutes")
    assert checkpoints.list_checkpoints(str(folder)) == []


# --------------------------------------------------------------------------------------------
# Checked before training, not after (item 19)

def test_a_tensorboard_path_that_is_a_file_is_refused_before_training(data_dir, tmp_path):
    pytest.importorskip("tensorboard")  # without it, --tensorboard says so first (tested elsewhere)
    (tmp_path / "tb").write_text("a file\n")
    result = run_main(["--mode", "train"] + flags(data_dir, tmp_path / "m", "--max_epoch", 1,
                                                  "--tensorboard", tmp_path / "tb"))
    refused(result, "--tensorboard", str(tmp_path / "tb"))
    assert "epoch   1" not in result.stdout and not os.path.exists(tmp_path / "m" / "metrics.csv")
    assert (tmp_path / "tb").read_text() == "a file\n"
