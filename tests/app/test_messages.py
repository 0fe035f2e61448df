"""Refusals name what the user did: the recipe rather than a flag it set, a boolean flag as it is
written (--no_batch_norm), the budget a run was planned with, and flags that do not apply."""
import re

import numpy as np
import pytest

from trainer.training import budget_plan
import main
from cifar_files import make_batch, write_cifar
from configure import Config
from Model import MyModel

BASE = ["--device", "cpu", "--no_download", "--batch_size", "8", "--eval_batch_size", "64",
        "--split_index", "80", "--lr_decay_epochs", "--save_interval", "1", "--quiet"]
SMALL_RESNET = ["--resnet_size", "1", "--first_num_filters", "4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), n_per_batch=20, n_test=20)
    return str(root)


def run(capsys, *args):
    """main.main(args) in this process: (exit code, standard error)."""
    capsys.readouterr()
    try:
        rc = main.main([str(a) for a in args])
    except SystemExit as e:  # argparse's way out, taken for a refused flag
        rc = e.code
    return rc, capsys.readouterr().err


def flags(data_dir, modeldir, *extra):
    return BASE + ["--data_dir", data_dir, "--modeldir", str(modeldir), *map(str, extra)]


def no_boolean_values(err: str) -> None:
    """A message names boolean flags as the parser takes them, never as --flag True/False."""
    assert not re.search(r"--\w+ (True|False)\b", err), err


# --------------------------------------------------------------------------------------------
# The recipe, not the flags it set (items 12 and 16)

def test_a_recipe_warm_up_longer_than_the_run_names_the_recipe(data_dir, tmp_path, capsys):
    rc, err = run(capsys, *flags(data_dir, tmp_path / "m", "--recipe", "fast", "--max_epoch", 1))
    assert rc == 2 and "--recipe fast" in err and "--max_epoch" in err, err
    assert "--warmup_epochs must" not in err


def test_a_recipe_with_no_momentum_names_no_nesterov(data_dir, tmp_path, capsys):
    rc, err = run(capsys, *flags(data_dir, tmp_path / "m", "--recipe", "fast", "--momentum", 0))
    assert rc == 2 and "--recipe fast" in err and "--no_nesterov" in err, err
    assert "drop --nesterov" not in err


def test_resuming_a_fast_run_without_the_recipe_names_the_recipe(data_dir, tmp_path, capsys):
    modeldir = tmp_path / "fast"
    common = SMALL_RESNET + ["--max_epoch", 2, "--warmup_epochs", 0.5]
    assert run(capsys, *flags(data_dir, modeldir, "--recipe", "fast", *common))[0] == 0
    rc, err = run(capsys, *flags(data_dir, modeldir, "--resume", *common))
    assert rc == 1 and "pass --recipe fast" in err, err
    assert "--normalize dataset" not in err


def test_a_diverging_l1_run_names_l1(data_dir, tmp_path, capsys):
    rc, err = run(capsys, *flags(data_dir, tmp_path / "m", *SMALL_RESNET, "--max_epoch", 2,
                                 "--l1", 1e10))
    assert rc == 1 and "NaN or infinite" in err and "--l1" in err, err


def test_resuming_a_budget_run_without_its_budget_names_it(data_dir, tmp_path, capsys,
                                                             monkeypatch):
    plans = iter([2, 1])  # 2 epochs; after the first, the one left (the speed is not the point)
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: next(plans))
    modeldir = tmp_path / "budget"
    assert run(capsys, *flags(data_dir, modeldir, *SMALL_RESNET, "--budget_minutes", 5))[0] == 0
    rc, err = run(capsys, *flags(data_dir, modeldir, *SMALL_RESNET, "--resume", "--max_epoch", 4))
    assert rc == 1 and "--budget_minutes 5" in err, err
    rc, err = run(capsys, *flags(data_dir, modeldir, *SMALL_RESNET, "--resume",
                                 "--budget_minutes", 9))
    assert rc == 1 and "--budget_minutes 5" in err, err


# --------------------------------------------------------------------------------------------
# Boolean flags as the parser takes them (item 13)

def test_messages_name_boolean_flags_as_they_are_written(data_dir, tmp_path, capsys):
    modeldir = tmp_path / "bn"
    network = ["--network", "simple_nn", "--max_epoch", 1]
    assert run(capsys, *flags(data_dir, modeldir, *network, "--batch_norm"))[0] == 0
    rc, err = run(capsys, *flags(data_dir, modeldir, *network, "--resume", "--max_epoch", 2))
    assert rc == 1 and "pass --batch_norm to use it" in err, err
    no_boolean_values(err)
    rc, err = run(capsys, "--mode", "test", *flags(data_dir, modeldir, "--no_batch_norm"))
    assert rc == 1 and "drop --no_batch_norm or pass --batch_norm" in err, err
    no_boolean_values(err)


# --------------------------------------------------------------------------------------------
# Flags that do not shape the network (item 15)

@pytest.mark.parametrize("network, extra", [
    ("simple_nn", ["--downsample", "a"]),
    ("simple_cnn", ["--shortcut", "pad"]),
    ("resnet", ["--batch_norm"]),
    ("resnet18", ["--resnet_size", "5"]),
])
def test_a_flag_that_does_not_shape_the_network_is_refused(data_dir, tmp_path, capsys, network,
                                                           extra):
    rc, err = run(capsys, *flags(data_dir, tmp_path / "m", "--network", network, "--max_epoch", 1,
                                 *extra))
    assert rc == 2 and f"{extra[0]} does not apply to --network {network}" in err, err
    assert not (tmp_path / "m").exists()


def test_a_checkpoint_is_not_refused_over_a_key_its_network_ignores(data_dir, tmp_path, capsys):
    """Checkpoints written before the refusal may carry such a key with any value."""
    x, y = make_batch(24, np.random.default_rng(0))
    config = Config(network="simple_nn", downsample="a", shortcut="pad", resnet_size=7,
                    max_epoch=1, batch_size=8, device="cpu", modeldir=str(tmp_path / "old"),
                    lr_decay_epochs=(), amp="off")
    MyModel(config, log=lambda *a: None).train(x, y)
    rc, err = run(capsys, "--mode", "test", *flags(data_dir, tmp_path / "old"))
    assert rc == 0, err
    rc, err = run(capsys, "--mode", "test", *flags(data_dir, tmp_path / "old", "--downsample", "b"))
    assert rc == 1 and "--downsample does not apply to the simple_nn network" in err, err
