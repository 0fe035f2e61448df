"""--mode train --test: one process trains, then tests its newest checkpoint as --mode test would,
and leaves the report in the model folder as test_report.json, a file of the run."""
import json
import os
import re
import shutil

import pytest

import main
from cifar_files import write_cifar
from cli_tools import TINY, load, run_main
from trainer.reports import compare
from trainer.run import checkpoints

N_TEST = 40
# The fast recipe, whose checkpoints store --tta six: the test must use it as --mode test does.
FAST = ["--recipe", "fast", "--warmup_epochs", "0", "--max_epoch", "1"]


def flags(root: str, *extra) -> list:
    return [*TINY, "--data_dir", os.path.join(root, "data"), "--modeldir",
            os.path.join(root, "model"), "--split_index", "64", "--quiet", *extra]


def report_block(stdout: str) -> list:
    """The lines of the test report: from its table's header to the line before any "wrote"."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("checkpoint ")]
    assert len(starts) == 1, stdout
    block = lines[starts[0]:]
    ends = [i for i, line in enumerate(block) if line.startswith(("wrote ", "tested "))]
    return block[:ends[0]] if ends else block


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run(args) -> int:
    """main.main(args) in this process, its exit code whether it returns or exits."""
    try:
        return main.main(args)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny data set and one epoch of the fast recipe, trained and tested in one process."""
    root = str(tmp_path_factory.mktemp("train_then_test"))
    write_cifar(os.path.join(root, "data"), n_per_batch=16, n_test=N_TEST, seed=0)
    done = run_main(["--mode", "train", *flags(root, *FAST), "--test"])
    assert done.returncode == 0, done.stdout + done.stderr
    return root, done


def copy_of(trained, tmp_path) -> str:
    root = str(tmp_path / "copy")
    shutil.copytree(trained[0], root)
    return root


def test_the_report_is_the_one_mode_test_prints_and_writes(trained):
    root, done = trained
    modeldir = os.path.join(root, "model")
    alone = run_main(["--mode", "test", "--data_dir", os.path.join(root, "data"), "--modeldir",
                      modeldir, "--device", "cpu", "--quiet", "--json",
                      os.path.join(root, "alone.json")])
    assert alone.returncode == 0, alone.stderr
    assert "--tta six: the default for" in alone.stdout  # the checkpoint's, in both
    assert report_block(done.stdout) == report_block(alone.stdout)
    assert read_json(os.path.join(modeldir, checkpoints.TEST_REPORT)) == \
        read_json(os.path.join(root, "alone.json"))


def test_the_accuracy_and_the_time_of_the_test_are_printed(trained):
    root, done = trained
    row = re.search(r"^model-1\.ckpt\s+1\s+(\d+\.\d\d)%", done.stdout, re.M)
    assert row, done.stdout
    report = os.path.join(root, "model", checkpoints.TEST_REPORT)
    assert f"wrote {report}\ntested model-1.ckpt: {row.group(1)}% of {N_TEST} test images in " \
        in done.stdout, done.stdout
    assert re.search(r"^tested model-1\.ckpt: .* in \d+\.\d s$", done.stdout, re.M)


def test_plot_takes_the_test_accuracy_from_the_report(trained):
    root, _ = trained
    modeldir = os.path.join(root, "model")
    accuracy = read_json(os.path.join(modeldir, checkpoints.TEST_REPORT))["checkpoints"][0]
    assert compare.find_test_accuracy(modeldir) == (accuracy["accuracy"], "model-1.ckpt",
                                                    checkpoints.TEST_REPORT)


def test_nothing_left_to_train_still_tests_the_newest_checkpoint(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    report = os.path.join(root, "model", checkpoints.TEST_REPORT)
    before = read_json(report)
    os.remove(report)
    done = run_main(["--mode", "train", *flags(root, *FAST), "--resume", "--test"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to train" in done.stdout
    assert read_json(report) == before


def test_tta_given_with_test_is_the_tests_and_the_checkpoints_keep_the_recipes(tmp_path):
    root = str(tmp_path)
    write_cifar(os.path.join(root, "data"), n_per_batch=16, n_test=N_TEST, seed=0)
    done = run_main(["--mode", "train", *flags(root, *FAST), "--test", "--tta", "off"])
    assert done.returncode == 0, done.stdout + done.stderr
    modeldir = os.path.join(root, "model")
    assert load(os.path.join(modeldir, "model-1.ckpt"))["config"]["tta"] == "six"
    assert read_json(os.path.join(modeldir, "config.json"))["config"]["tta"] == "six"
    alone = run_main(["--mode", "test", "--data_dir", os.path.join(root, "data"), "--modeldir",
                      modeldir, "--device", "cpu", "--quiet", "--tta", "off"])
    assert alone.returncode == 0, alone.stderr
    assert report_block(done.stdout) == report_block(alone.stdout)


def test_tta_in_training_without_test_is_refused(tmp_path, capsys):
    assert run(["--mode", "train", *flags(str(tmp_path)), "--tta", "flip"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --tta applies to --mode test or predict, or to the test of --mode "
                   "train --test; drop it or pass --test."), err
    assert os.listdir(tmp_path) == []


def test_overwrite_removes_the_report_and_a_fresh_run_refuses_one(trained, tmp_path, capsys):
    root = copy_of(trained, tmp_path)
    report = os.path.join(root, "model", checkpoints.TEST_REPORT)
    done = run_main(["--mode", "train", *flags(root, *FAST), "--overwrite"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert not os.path.exists(report)

    with open(report, "w") as f:  # alone in the folder now, as if the user had put it there
        f.write("{}")
    for name in os.listdir(os.path.dirname(report)):
        if name != checkpoints.TEST_REPORT:
            os.remove(os.path.join(root, "model", name))
    assert run(["--mode", "train", *flags(root, *FAST), "--test"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "files a run writes (test_report.json)" in err, err
    with open(report) as f:
        assert f.read() == "{}"


def test_an_empty_test_set_is_refused_before_training(tmp_path, capsys):
    root = str(tmp_path)
    write_cifar(os.path.join(root, "data"), n_per_batch=16, n_test=0, seed=0)
    assert run(["--mode", "train", *flags(root, "--max_epoch", "1"), "--test"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the test set in") and err.endswith("or drop --test."), err
    assert checkpoints.list_checkpoints(os.path.join(root, "model")) == []


def test_a_budget_leaves_time_for_the_test(tmp_path):
    """--budget_minutes with --test: the plan sets the test after the training aside."""
    root = str(tmp_path)
    write_cifar(os.path.join(root, "data"), n_per_batch=16, n_test=N_TEST, seed=0)
    done = run_main(["--mode", "train", *flags(root, "--recipe", "fast", "--warmup_epochs", "0"),
                     "--budget_minutes", "0.25", "--test"])
    assert done.returncode == 0, done.stdout + done.stderr
    plan = [line for line in done.stdout.splitlines() if line.startswith("budget 0.25 min:")]
    assert plan and re.search(r", the test after \d+\.\d s -> ", plan[0]), done.stdout
    assert os.path.isfile(os.path.join(root, "model", "test_report.json"))


def test_the_test_runs_in_the_precision_the_training_settled_on(tmp_path, capsys, monkeypatch):
    """--amp auto: the test after the training runs in what the training chose (bf16 here),
    where --mode test would take auto on a CPU as fp32."""
    import torch
    import Model
    from trainer.training import precision
    monkeypatch.setattr(precision, "settle",
                        lambda model, images, labels, cache=None: precision.set_amp(model, "bf16"))
    tested_in = []
    original = Model.MyModel.evaluate_checkpoints

    def spy(self, *args, **kwargs):
        tested_in.append(self.runtime.amp_dtype)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Model.MyModel, "evaluate_checkpoints", spy)
    root = str(tmp_path)
    write_cifar(os.path.join(root, "data"), n_per_batch=16, n_test=N_TEST, seed=0)
    code = run(["--mode", "train", *flags(root, *FAST), "--amp", "auto", "--test"])
    assert code in (0, None), capsys.readouterr().err
    assert tested_in == [torch.bfloat16]


@pytest.mark.parametrize("tta, passes", [("six", 6 * N_TEST), ("flip", 2 * N_TEST),
                                         ("off", N_TEST)])
def test_the_width_is_chosen_for_the_test_with_its_views(monkeypatch, tta, passes):
    """--recipe speed --test: the width chooser leaves room for the test's image views."""
    import numpy as np
    from configure import Config
    from trainer.app import train
    from trainer.parallel import distributed
    from trainer.training import budget, sizing
    seen = []
    monkeypatch.setattr(sizing, "resolve", lambda *a, test_passes=0, **k: seen.append(test_passes))
    x = np.zeros((8, 32, 32, 3), np.uint8)
    after = budget.TestAfter(np.zeros((N_TEST, 32, 32, 3), np.uint8), tta)
    train.choose_width(Config(device="cpu"), x, np.zeros(8, np.int64), None, 0.0,
                       distributed.SINGLE, after)
    train.choose_width(Config(device="cpu"), x, np.zeros(8, np.int64), None, 0.0,
                       distributed.SINGLE)
    assert seen == [passes, 0]
