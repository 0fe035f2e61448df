"""--mode sweep: one training run per value, each resolved as its own command line would be, with
values checked up front, folder names and sweep.csv written exactly, and --resume that neither
mixes runs nor skips an unfinished one."""
import csv
import os

import pytest
import torch

import main
from trainer.app import sweep
from cifar_files import write_cifar, write_cifar100
from cli_tools import TINY, snapshot
from configure import ConfigError
from trainer.reports import plots

COMPARE_PNG = ["compare.png"] if plots.matplotlib_available() else []  # a sweep draws it


@pytest.fixture
def cifar(tmp_path):
    data_dir = str(tmp_path / "data")
    write_cifar(data_dir, n_per_batch=8, n_test=4, seed=0)  # 40 training images
    return data_dir


def sweep_flags(data_dir: str, modeldir: str, *more, max_epoch: str = "1") -> list:
    """A sweep of tiny networks on 32 training images (--max_epoch left out when None)."""
    epochs = [] if max_epoch is None else ["--max_epoch", max_epoch]
    return TINY + ["--data_dir", data_dir, "--modeldir", modeldir, "--split_index", "32",
                   *epochs, "--lr_decay_epochs", "--quiet", "--mode", "sweep", *more]


def run(args, capsys):
    """main.main(args) in this process: (exit code, stdout, stderr)."""
    try:
        code = main.main(list(map(str, args)))
    except SystemExit as e:  # argparse, and main's ConfigError exit
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(modeldir: str) -> list:
    with open(os.path.join(modeldir, sweep.SWEEP_CSV), newline="") as f:
        return list(csv.DictReader(f))


def stored_config(modeldir: str, folder: str) -> dict:
    epochs = sorted(int(n[6:-5]) for n in os.listdir(os.path.join(modeldir, folder))
                    if n.startswith("model-") and n[6:-5].isdigit())
    path = os.path.join(modeldir, folder, f"model-{epochs[-1]}.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def assert_refused_up_front(result, tmp_path, before: dict, words, code: int = 2) -> None:
    """One line naming ``words``, the exit code, and nothing written."""
    rc, out, err = result
    assert rc == code, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(str(tmp_path)) == before


# --------------------------------------------------------------------------------------------
# Training and resuming

def test_a_sweep_trains_each_value_records_a_failure_and_resumes(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    flags = sweep_flags(cifar, modeldir, "--sweep", "learning_rate", "0.1", "1e30",
                        max_epoch="2")
    rc, out, _ = run(flags, capsys)
    assert rc == 0
    assert sorted(os.listdir(modeldir)) == sorted(["learning_rate=0.1", "learning_rate=1e+30",
                                                   "sweep.csv"] + COMPARE_PNG)
    if COMPARE_PNG:  # the values' validation curves in one picture
        assert f"wrote {os.path.join(modeldir, 'compare.png')}" in out
        with open(os.path.join(modeldir, "compare.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert "compare.png not drawn: matplotlib is not installed" in out
    rows = read_csv(modeldir)
    assert [r["learning_rate"] for r in rows] == ["0.1", "1e+30"]
    assert rows[0]["status"] == "done" and rows[0]["best_epoch"] in ("1", "2")
    assert 0 <= float(rows[0]["best_valid_acc"]) <= 1 and float(rows[0]["final_train_loss"]) > 0
    assert rows[1]["status"].startswith("failed: ") and "NaN or infinite" in rows[1]["status"]
    finished = os.path.join(modeldir, "learning_rate=0.1", "model-2.ckpt")
    before = os.path.getmtime(finished)
    rc, out, _ = run(flags + ["--resume"], capsys)
    assert rc == 0
    assert "learning_rate=0.1 already finished; skipped" in out
    assert os.path.getmtime(finished) == before  # not trained again
    assert run(flags, capsys)[0] == 1  # without --resume, the used folders are refused


def test_resume_continues_a_value_that_is_one_epoch_short(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    first = sweep_flags(cifar, modeldir, "--sweep", "seed", "1", "2")  # 1 epoch each
    assert run(first, capsys)[0] == 0
    again = sweep_flags(cifar, modeldir, "--sweep", "seed", "1", "2", "--resume", max_epoch="2")
    rc, out, err = run(again, capsys)
    assert rc == 0, err
    for seed in ("1", "2"):
        assert f"resuming from {os.path.join(modeldir, f'seed={seed}', 'model-1.ckpt')}" in out
        assert os.path.isfile(os.path.join(modeldir, f"seed={seed}", "model-2.ckpt"))
    assert "already finished" not in out
    rows = read_csv(modeldir)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert {r["best_epoch"] for r in rows} <= {"1", "2"}
    for seed in ("1", "2"):
        history = torch.load(os.path.join(modeldir, f"seed={seed}", "model-2.ckpt"),
                             weights_only=True)["metrics"]
        assert [m["epoch"] for m in history] == [1, 2]


def test_resume_refuses_a_value_trained_with_other_flags(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    flags = sweep_flags(cifar, modeldir, "--sweep", "learning_rate", "0.1", "0.05")
    assert run(flags, capsys)[0] == 0
    before = snapshot(str(tmp_path))
    result = run(flags + ["--resume", "--momentum", "0.5"], capsys)
    assert_refused_up_front(result, tmp_path, before, code=1,
                            words=["learning_rate=0.1", "momentum was 0.9, now 0.5"])


def test_resume_refuses_a_value_trained_further_than_max_epoch(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    flags = sweep_flags(cifar, modeldir, "--sweep", "learning_rate", "0.1")
    assert run(sweep_flags(cifar, modeldir, "--sweep", "learning_rate", "0.1", max_epoch="2"),
               capsys)[0] == 0
    before = snapshot(str(tmp_path))
    result = run(flags + ["--resume"], capsys)  # --max_epoch 1: the sweep.csv would mix runs
    assert_refused_up_front(result, tmp_path, before, code=1,
                            words=["learning_rate=0.1", "2 epochs", "--max_epoch 2"])


@pytest.mark.parametrize("flags,words", [
    (["--resume", "5"], ["--resume 5", "without a number"]),
    (["--resume", "--overwrite"], ["--overwrite", "--resume"])])
def test_resume_n_and_resume_with_overwrite_are_refused_in_a_sweep(tmp_path, cifar, capsys,
                                                                   flags, words):
    before = snapshot(str(tmp_path))
    result = run(sweep_flags(cifar, str(tmp_path / "sweep"), "--sweep", "seed", "1", *flags),
                 capsys)
    assert_refused_up_front(result, tmp_path, before, words=words)


def test_a_new_sweep_refuses_a_folder_that_holds_another_sweeps_table(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    assert run(sweep_flags(cifar, modeldir, "--sweep", "seed", "1"), capsys)[0] == 0
    before = snapshot(str(tmp_path))
    result = run(sweep_flags(cifar, modeldir, "--sweep", "seed", "2"), capsys)
    assert_refused_up_front(result, tmp_path, before, code=1, words=["sweep.csv", "--overwrite"])


def test_a_value_that_fails_on_its_data_is_recorded_and_the_sweep_goes_on(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    rc, out, err = run(sweep_flags(cifar, modeldir, "--sweep", "batch_size", "100", "8"), capsys)
    assert rc == 0, err
    rows = read_csv(modeldir)
    assert rows[0]["status"].startswith("failed: --batch_size 100 is larger than the 32")
    assert rows[1]["status"] == "done"


def test_each_value_logs_to_its_own_tensorboard_folder(tmp_path, cifar, capsys):
    pytest.importorskip("tensorboard")
    logdir = str(tmp_path / "tb")
    rc, _, err = run(sweep_flags(cifar, str(tmp_path / "sweep"), "--tensorboard", logdir,
                                 "--sweep", "seed", "1", "2"), capsys)
    assert rc == 0, err
    assert sorted(os.listdir(logdir)) == ["seed=1", "seed=2"]


# --------------------------------------------------------------------------------------------
# Each value resolved as its own command line would be

def test_a_swept_recipe_is_applied_per_value_and_explicit_flags_still_win(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    rc, _, err = run(sweep_flags(cifar, modeldir, "--amp", "off", "--sweep", "recipe", "course",
                                 "fast", max_epoch="3"), capsys)
    assert rc == 0, err
    course, fast = stored_config(modeldir, "recipe=course"), stored_config(modeldir, "recipe=fast")
    shown = ("learning_rate", "lr_schedule", "nesterov")
    assert [course[k] for k in shown] == [0.1, "step", False]
    assert [fast[k] for k in shown] == [0.2, "onecycle", True]  # the recipe's
    assert fast["normalize"] == "dataset" and fast["label_smoothing"] == 0.1
    assert fast["max_epoch"] == course["max_epoch"] == 3 and fast["amp"] == "off"  # explicit


def test_a_swept_label_mode_gives_each_value_its_number_of_classes(tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    write_cifar100(data_dir, n_train=40, n_test=8)
    modeldir = str(tmp_path / "sweep")
    rc, _, err = run(sweep_flags(data_dir, modeldir, "--dataset", "cifar100",
                                 "--sweep", "label_mode", "fine", "coarse"), capsys)
    assert rc == 0, err
    assert stored_config(modeldir, "label_mode=fine")["num_classes"] == 100
    assert stored_config(modeldir, "label_mode=coarse")["num_classes"] == 20


def test_flags_are_checked_with_each_value_not_alone(tmp_path, capsys):
    # --label_mode coarse alone applies to cifar100 only: valid for the one value swept
    data_dir = str(tmp_path / "data")
    write_cifar100(data_dir, n_train=40, n_test=8)
    modeldir = str(tmp_path / "sweep")
    rc, _, err = run(sweep_flags(data_dir, modeldir, "--label_mode", "coarse",
                                 "--sweep", "dataset", "cifar100"), capsys)
    assert rc == 0, err
    assert stored_config(modeldir, "dataset=cifar100")["num_classes"] == 20


def test_plan_resolves_derived_values_per_value(tmp_path):
    cli = vars(main.build_parser().parse_args(["--modeldir", str(tmp_path)]))
    runs = sweep.plan(cli, {"modeldir"}, sweep.parse([["dataset", "cifar10", "cifar100"]]))
    assert [(c.dataset, c.num_classes) for _, c in runs] == [("cifar10", 10), ("cifar100", 100)]
    assert [c.download_url.rsplit("/", 1)[1] for _, c in runs] == ["cifar-10-python.tar.gz",
                                                                  "cifar-100-python.tar.gz"]
    assert [c.modeldir for _, c in runs] == [os.path.join(str(tmp_path), "dataset=cifar10"),
                                             os.path.join(str(tmp_path), "dataset=cifar100")]
    fast = sweep.plan(cli, {"modeldir", "learning_rate"},
                      sweep.parse([["recipe", "fast"], ["weight_decay", "0.001"]]))[0][1]
    assert fast.lr_schedule == "onecycle" and fast.max_epoch == 15
    assert fast.learning_rate == 0.1  # given on the command line (here: its default, explicitly)
    assert fast.weight_decay == 0.001  # swept: the recipe's 5e-4 does not replace it


# --------------------------------------------------------------------------------------------
# Values checked before anything runs

def test_sweep_values_are_typed_and_combined():
    with pytest.raises(ConfigError, match="--sweep no_such_key"):
        sweep.parse([["no_such_key", "1"]])
    with pytest.raises(ConfigError, match="'fast' is not a value of learning_rate"):
        sweep.parse([["learning_rate", "0.1", "fast"]])
    grid = sweep.parse([["learning_rate", "0.1", "0.01"], ["batch_norm", "true", "false"]])
    assert len(sweep.combinations(grid)) == 4
    assert sweep.folder_name(sweep.combinations(grid)[0]) == "learning_rate=0.1,batch_norm=True"


@pytest.mark.parametrize("key,bad", [
    ("network", "foo"), ("downsample", "foo"), ("activation", "foo"), ("pad_mode", "foo"),
    ("amp", "foo"), ("normalize", "foo"), ("channels_last", "foo"), ("shortcut", "foo"),
    ("lr_schedule", "foo"), ("recipe", "foo"), ("dataset", "foo"), ("label_mode", "foo"),
    ("resnet_version", "3"), ("network", "resnet/../x")])
def test_a_choice_valued_key_takes_only_its_choices(key, bad):
    with pytest.raises(ConfigError, match=f"--sweep {key}: '{bad}' is not one of"):
        sweep.parse([[key, bad]])


@pytest.mark.parametrize("key", ["tta", "save_interval", "sync_bn", "dist_timeout", "download",
                                 "download_url", "modeldir", "data_dir", "device", "quiet",
                                 "tensorboard"])
def test_keys_that_cannot_be_swept_are_refused_with_the_reason(key):
    with pytest.raises(ConfigError, match=f"^--sweep {key} cannot be swept: "):
        sweep.parse([[key, "1"]])


@pytest.mark.parametrize("values,named", [(["0.1", "0.10"], "'0.10'"),
                                          (["0.0", "-0.0"], "'-0.0'")])
def test_the_same_value_twice_is_refused(values, named):
    with pytest.raises(ConfigError, match=f"--sweep weight_decay: {named} is the same value as"):
        sweep.parse([["weight_decay", *values]])


@pytest.mark.parametrize("sweep_args,words", [
    (["amp", "off", "foo"], ["--sweep amp", "'foo'"]),
    (["network", "resnet", "foo"], ["--sweep network", "'foo'"]),
    (["normalize", "foo"], ["--sweep normalize", "'foo'"]),
    (["tta", "flip"], ["--sweep tta", "test"]),
    (["learning_rate", "0.1", "0.10"], ["--sweep learning_rate", "'0.10'"]),
    (["momentum", "0.5", "1.5"], ["--momentum", "1.5"]),
    (["max_epoch", "1", "2", "--budget_minutes", "1"], ["--budget_minutes", "--max_epoch"]),
    (["lr_decay_epochs", ",".join(map(str, range(1, 120)))], ["lr_decay_epochs", "too long"]),
])
def test_bad_sweep_values_are_refused_before_anything_is_written(tmp_path, cifar, capsys,
                                                                 sweep_args, words):
    before = snapshot(str(tmp_path))
    flags = sweep_flags(cifar, str(tmp_path / "sweep"), "--sweep", *sweep_args,
                        max_epoch=None if "max_epoch" in sweep_args else "1")
    assert_refused_up_front(run(flags, capsys), tmp_path, before, words=words)


def test_sweep_csv_holds_each_value_exactly_as_its_folder_name(tmp_path, cifar, capsys):
    modeldir = str(tmp_path / "sweep")
    values = ["0.1234567", "0.1234568", "1e6"]
    rc, _, err = run(sweep_flags(cifar, modeldir, "--sweep", "learning_rate", *values), capsys)
    assert rc == 0, err
    written = [r["learning_rate"] for r in read_csv(modeldir)]
    assert written == ["0.1234567", "0.1234568", "1000000.0"]
    assert [float(w) for w in written] == [float(v) for v in values]
    assert sorted(os.listdir(modeldir)) == sorted([f"learning_rate={w}" for w in written]
                                                  + ["sweep.csv"] + COMPARE_PNG)
