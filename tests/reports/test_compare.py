"""Comparing runs: ``--mode plot --modeldir A B ...`` draws compare.png and writes compare.csv
beside the first folder (trainer/reports/compare.py reads and labels, plots.py draws). The runs
are written by hand, in the formats training writes (metrics.csv, config.json, --json reports)."""
import csv
import hashlib
import json
import os
import sys

import pytest

import main
from cifar_files import write_cifar
from cli_tools import TINY, run_main
from configure import Config
from trainer.reports import compare, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder, valid_accs, valid=True, planned=None, **flags):
    """A model folder as training leaves it: a metrics.csv row per accuracy in valid_accs (the
    training loss 1/epoch, 10 seconds an epoch) and config.json of Config(**flags), its --recipe
    applied (the flags given win) and then the values a run plans itself (``planned``: a
    budget's epochs, the speed recipe's width)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(plots.COLUMNS)
        for epoch, acc in enumerate(valid_accs, 1):
            writer.writerow([epoch, 0.1, f"{1 / epoch:.10g}", 0.5, f"{2 / epoch:.10g}" if valid
                             else "", acc if valid else "", 10, 300])
    config = Config(modeldir=str(folder), data_dir=f"/data/{os.path.basename(folder)}",
                    device="cpu" if valid else "cuda", **flags).apply_recipe(explicit=set(flags))
    for key, value in (planned or {}).items():
        setattr(config, key, value)
    config = config.to_dict()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"config": config, "device": "cpu", "data": {"dataset": "cifar10"}}, f)
    return str(folder)


def write_checkpoint(folder, name, content=b"weights"):
    """A checkpoint file (its bytes stand for the weights: a report is tied to them)."""
    with open(os.path.join(folder, name), "wb") as f:
        f.write(content)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_report(path, entries, mtime, set_name="test"):
    """A --mode test --json report holding [(checkpoint, epoch, accuracy)], dated mtime, of the
    checkpoints in the report's folder as they are now (a checkpoint not there gets a digest of
    nothing)."""
    folder = os.path.dirname(path)
    digests = {c: sha256(os.path.join(folder, c)) if os.path.exists(os.path.join(folder, c))
               else hashlib.sha256(b"").hexdigest() for c, _, _ in entries}
    report = {"set": set_name, "best": entries[0][0], "classes": ["0"], "per_class": [],
              "confusion_matrix": [[1]], "weights": None,
              "checkpoints": [{"checkpoint": c, "epoch": e, "accuracy": a, "loss": 1.0,
                               "images": 100, "sha256": digests[c]} for c, e, a in entries]}
    with open(path, "w") as f:
        json.dump(report, f)
    os.utime(path, (mtime, mtime))


def run(args, capsys):
    """main.main(args) in this process: (exit code, stdout, stderr)."""
    try:
        code = main.main(list(map(str, args)))
    except SystemExit as e:  # argparse, and main's ConfigError exit
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_one_error_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Labels (no matplotlib needed)

def test_labels_name_the_keys_that_differ_and_not_the_equal_ones(tmp_path):
    a = write_run(tmp_path / "a", [0.5], activation="relu", learning_rate=0.05)
    b = write_run(tmp_path / "b", [0.5], activation="swish", l1=1e-5, learning_rate=0.05,
                  valid=False, save_interval=3, quiet=True)
    runs, _ = compare.load_runs([a, b])
    # modeldir, data_dir, device, save_interval and quiet differ too, but define no run
    assert compare.labels(runs) == ["activation=relu, l1=0.0", "activation=swish, l1=1e-05"]


def test_labels_fall_back_to_the_folder_name_when_nothing_differs(tmp_path):
    runs, _ = compare.load_runs([write_run(tmp_path / "first", [0.5]),
                                 write_run(tmp_path / "second", [0.6])])
    assert compare.labels(runs) == ["first", "second"]


def test_runs_of_other_recipes_and_budgets_are_labelled_by_them_not_by_what_those_set(tmp_path):
    # The speed recipe sets some twenty keys and chooses its width; a budget plans the epochs,
    # the last epoch's share and the warm-up. None of that is the user's choice.
    course = write_run(tmp_path / "course", [0.5])
    speed = write_run(tmp_path / "speed", [0.5], recipe="speed", planned={"width_scale": 1.0})
    budget = write_run(tmp_path / "speed5", [0.5], recipe="speed", budget_minutes=5.0,
                       planned={"width_scale": 0.75, "max_epoch": 7, "final_epoch_share": 0.4})
    runs, _ = compare.load_runs([course, speed, budget])
    assert compare.labels(runs) == ["recipe=course, budget_minutes=0.0",
                                    "recipe=speed, budget_minutes=0.0",
                                    "recipe=speed, budget_minutes=5.0"]


def test_budgets_are_labelled_by_their_minutes_not_by_the_epochs_they_planned(tmp_path):
    a = write_run(tmp_path / "a", [0.5], budget_minutes=5.0,
                  planned={"max_epoch": 40, "final_epoch_share": 0.25, "lr_decay_epochs": (20, 30)})
    b = write_run(tmp_path / "b", [0.5], budget_minutes=10.0,
                  planned={"max_epoch": 81, "final_epoch_share": 0.5, "lr_decay_epochs": (40, 61)})
    fast = write_run(tmp_path / "fast", [0.5], recipe="fast", budget_minutes=10.0,
                     planned={"max_epoch": 12, "final_epoch_share": 0.9, "warmup_epochs": 1.6})
    runs, _ = compare.load_runs([a, b, fast])
    assert compare.labels(runs) == ["recipe=course, budget_minutes=5.0",
                                    "recipe=course, budget_minutes=10.0",
                                    "recipe=fast, budget_minutes=10.0"]


def test_a_value_given_over_a_recipe_is_labelled_and_one_of_another_network_is_not(tmp_path):
    speed = write_run(tmp_path / "speed", [0.5], recipe="speed", planned={"width_scale": 1.0})
    faster = write_run(tmp_path / "lr5", [0.5], recipe="speed", learning_rate=5.0,
                       planned={"width_scale": 1.0})
    small = write_run(tmp_path / "r8", [0.5], resnet_size=1)
    plain = write_run(tmp_path / "r20", [0.5])
    runs, _ = compare.load_runs([speed, faster, small, plain])
    # resnet_size shapes the ResNets only: airbench's default value of it is no difference
    assert compare.labels(runs) == ["recipe=speed, learning_rate=11.5",
                                    "recipe=speed, learning_rate=5.0",
                                    "recipe=course, resnet_size=1, learning_rate=0.1",
                                    "recipe=course, resnet_size=3, learning_rate=0.1"]


def test_test_accuracy_comes_from_the_newest_test_report_best_checkpoint_first(tmp_path):
    folder = write_run(tmp_path / "a", [0.5, 0.6, 0.7])
    for name in ("model-2.ckpt", "model-3.ckpt", "model-best.ckpt"):
        write_checkpoint(folder, name, name.encode())
    write_report(os.path.join(folder, "old.json"), [("model-3.ckpt", 3, 0.9)], 1_000)
    write_report(os.path.join(folder, "new.json"),
                 [("model-3.ckpt", 3, 0.55), ("model-best.ckpt", 2, 0.61)], 2_000)
    write_report(os.path.join(folder, "valid.json"), [("model-3.ckpt", 3, 0.99)], 3_000,
                 set_name="valid")  # not a test accuracy
    assert compare.find_test_accuracy(folder) == (0.61, "model-best.ckpt", "new.json")
    write_report(os.path.join(folder, "newest.json"), [("model-2.ckpt", 2, 0.4),
                                                       ("model-3.ckpt", 3, 0.45)], 4_000)
    assert compare.find_test_accuracy(folder) == (0.45, "model-3.ckpt", "newest.json")


def test_a_test_report_counts_only_while_the_checkpoint_it_tested_is_in_the_folder(tmp_path):
    folder = write_run(tmp_path / "a", [0.5, 0.6])
    write_checkpoint(folder, "model-2.ckpt", b"the first run")
    write_checkpoint(folder, "model-best.ckpt", b"the first run's best")
    write_report(os.path.join(folder, "report.json"),
                 [("model-2.ckpt", 2, 0.55), ("model-best.ckpt", 2, 0.6)], 1_000)
    run = compare.read_run(folder)
    assert run.test == (0.6, "model-best.ckpt", "report.json") and run.notes == []
    # --overwrite trains a new run into the folder: the report tested the old one's weights
    write_checkpoint(folder, "model-2.ckpt", b"the second run")
    write_checkpoint(folder, "model-best.ckpt", b"the second run's best")
    run = compare.read_run(folder)
    assert run.test is None
    assert len(run.notes) == 1 and "report.json" in run.notes[0] and "--mode test" in run.notes[0]
    # trained further (--resume): model-best.ckpt moved on, model-2.ckpt is the one tested
    write_checkpoint(folder, "model-2.ckpt", b"the first run")
    assert compare.read_run(folder).test == (0.55, "model-2.ckpt", "report.json")
    # a report written before reports named what they tested cannot be tied to the run
    with open(os.path.join(folder, "report.json")) as f:
        report = json.load(f)
    for entry in report["checkpoints"]:
        del entry["sha256"]
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump(report, f)
    run = compare.read_run(folder)
    assert run.test is None and len(run.notes) == 1 and "report.json" in run.notes[0]


def test_a_report_naming_a_path_outside_the_folder_is_not_followed(tmp_path):
    folder = write_run(tmp_path / "a", [0.5])
    outside = tmp_path / "model-1.ckpt"
    outside.write_bytes(b"weights")
    write_report(os.path.join(folder, "report.json"), [("model-1.ckpt", 1, 0.5)], 1_000)
    with open(os.path.join(folder, "report.json")) as f:
        report = json.load(f)
    report["checkpoints"][0].update(checkpoint="../model-1.ckpt", sha256=sha256(outside))
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump(report, f)
    assert compare.find_test_accuracy(folder) is None


def test_runs_without_validation_are_drawn_only_when_no_run_has_validation(tmp_path):
    a = write_run(tmp_path / "a", [0.5, 0.6], seed=1)
    b = write_run(tmp_path / "b", [0.7], valid=False, seed=2)
    c = write_run(tmp_path / "c", [0.8], valid=False, seed=3)
    runs, _ = compare.load_runs([a, b, c])
    lines, validation = compare.lines_to_draw(runs, ["A", "B", "C"])
    assert validation is True and [label for label, _ in lines] == ["A"]
    lines, validation = compare.lines_to_draw(runs[1:], ["B", "C"])
    assert validation is False and [label for label, _ in lines] == ["B", "C"]


# --------------------------------------------------------------------------------------------
# --mode plot with several folders

def test_compare_writes_the_table_csv_and_png_beside_the_first_folder(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    a = write_run(runs / "relu", [0.30, 0.52, 0.48], activation="relu")  # 3 epochs
    b = write_run(runs / "swish", [0.20, 0.40, 0.61, 0.61, 0.59], activation="swish")  # 5
    c = write_run(runs / "all", [0.9, 0.9], valid=False, train_all=True)  # no validation
    write_checkpoint(b, "model-5.ckpt")
    write_report(os.path.join(b, "report.json"), [("model-5.ckpt", 5, 0.57)], 1_000)
    rc, out, err = run(["--mode", "plot", "--modeldir", a, b, c], capsys)
    assert rc == 0, err
    assert f"{c} has no validation" in out and "only" in out
    assert "relu" in out and "61.00%" in out  # the table
    rows = read_csv(runs / "compare.csv")
    assert [r["run"] for r in rows] == [a, b, c]
    assert [r["differs"] for r in rows] == ["activation=relu, train_all=False",
                                           "activation=swish, train_all=False",
                                           "activation=relu, train_all=True"]
    assert [(r["best_valid_acc"], r["best_epoch"]) for r in rows] == \
        [("0.52", "2"), ("0.61", "3"), ("", "")]  # the first epoch of equals
    assert [float(r["final_train_loss"]) for r in rows] == [pytest.approx(1 / 3),
                                                           pytest.approx(1 / 5), 0.5]
    # what the column counts is in its name: the epochs' training time, as metrics.csv has it
    assert list(rows[0]) == ["run", "differs", "best_valid_acc", "best_epoch",
                             "final_train_loss", "train_seconds", "test_acc"]
    assert [float(r["train_seconds"]) for r in rows] == [30, 50, 20]
    assert [r["test_acc"] for r in rows] == ["", "0.57", ""]
    with open(runs / "compare.png", "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert sorted(os.listdir(runs)) == ["all", "compare.csv", "compare.png", "relu", "swish"]
    assert sorted(os.listdir(a)) == ["config.json", "metrics.csv"]  # nothing written in a run


def test_a_report_of_the_run_that_overwrite_replaced_is_not_its_test_acc(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data_dir = str(tmp_path / "data")
    write_cifar(data_dir, n_per_batch=8, n_test=8)
    common = [*TINY, "--data_dir", data_dir, "--split_index", "32", "--max_epoch", "1", "--quiet"]
    a, b = str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")
    for folder, seed in ((a, "1"), (b, "2")):
        done = run_main(["--mode", "train", "--modeldir", folder, "--seed", seed, *common])
        assert done.returncode == 0, done.stderr
    report = os.path.join(a, "report.json")
    done = run_main(["--mode", "test", "--modeldir", a, "--json", report, *common])
    assert done.returncode == 0, done.stderr
    with open(report) as f:
        tested = json.load(f)["checkpoints"][0]
    assert tested["checkpoint"] == "model-1.ckpt"
    rc, out, err = run(["--mode", "plot", "--modeldir", a, b], capsys)
    assert rc == 0, err
    rows = read_csv(tmp_path / "runs" / "compare.csv")
    assert float(rows[0]["test_acc"]) == tested["accuracy"] and rows[1]["test_acc"] == ""

    done = run_main(["--mode", "train", "--modeldir", a, "--seed", "3", "--overwrite", *common])
    assert done.returncode == 0, done.stderr
    assert os.path.exists(report)  # the user's file: --overwrite leaves it
    rc, out, err = run(["--mode", "plot", "--modeldir", a, b, "--overwrite"], capsys)
    assert rc == 0, err
    assert [r["test_acc"] for r in read_csv(tmp_path / "runs" / "compare.csv")] == ["", ""]
    assert f"note: {a}: report.json" in out, out


def test_the_picture_has_one_line_per_run_over_its_own_epochs():
    pytest.importorskip("matplotlib")
    rows = [{"epoch": e, "valid_acc": 0.5, "valid_loss": 1.0} for e in (1, 2, 3)]
    figure = plots.comparison_figure([("lr=0.1", rows), ("lr=0.01", rows[:2])])
    acc_axes, loss_axes = figure.axes
    assert "validation accuracy" in acc_axes.get_ylabel()
    assert "validation loss" in loss_axes.get_ylabel()
    for axes in (acc_axes, loss_axes):
        assert [list(line.get_xdata()) for line in axes.get_lines()] == [[1, 2, 3], [1, 2]]
        assert [t.get_text() for t in axes.get_legend().get_texts()] == ["lr=0.1", "lr=0.01"]


def test_a_folder_that_is_no_model_folder_is_named(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path / "a", [0.5], seed=1)
    b = write_run(tmp_path / "b", [0.6], seed=2)
    stray = tmp_path / "notes"
    stray.mkdir()
    rc, out, err = run(["--mode", "plot", "--modeldir", a, str(stray), b], capsys)
    assert rc == 0, err
    assert f"{stray} is not a model folder" in out
    assert len(read_csv(tmp_path / "compare.csv")) == 2
    rc, out, err = run(["--mode", "plot", "--modeldir", a, str(stray), "--overwrite"], capsys)
    assert rc == 1
    assert_one_error_line(err, str(stray), "not a model folder", "at least two runs")


def test_a_folder_given_twice_is_compared_once(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path / "a", [0.5], seed=1)
    b = write_run(tmp_path / "b", [0.6], seed=2)
    rc, out, err = run(["--mode", "plot", "--modeldir", a, b, a + os.sep], capsys)
    assert rc == 0, err
    assert "given twice" in out
    assert [r["differs"] for r in read_csv(tmp_path / "compare.csv")] == ["seed=1", "seed=2"]
    rc, _, err = run(["--mode", "plot", "--modeldir", a, a, "--overwrite"], capsys)
    assert rc == 1
    assert_one_error_line(err, "given twice")


@pytest.mark.parametrize("mode", ["train", "test", "sweep"])
def test_several_folders_are_refused_in_other_modes(tmp_path, capsys, mode):
    a = write_run(tmp_path / "a", [0.5])
    b = write_run(tmp_path / "b", [0.6])
    sweeps = ["--sweep", "seed", "1", "2"] if mode == "sweep" else []
    nowhere = ["--data_dir", str(tmp_path / "no_data"), "--no_download"]  # never a download
    rc, _, err = run(["--mode", mode, "--modeldir", a, b, *sweeps, *nowhere], capsys)
    assert rc == 2
    assert_one_error_line(err, "--modeldir", "--mode plot")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_compare_png_not_made_by_this_command_is_kept_without_overwrite(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path / "a", [0.5], seed=1)
    b = write_run(tmp_path / "b", [0.6], seed=2)
    mine = tmp_path / "compare.png"
    mine.write_bytes(b"my own picture")
    rc, _, err = run(["--mode", "plot", "--modeldir", a, b], capsys)
    assert rc == 1
    assert_one_error_line(err, str(mine), "--overwrite")
    assert mine.read_bytes() == b"my own picture"
    assert not (tmp_path / "compare.csv").exists()
    rc, _, err = run(["--mode", "plot", "--modeldir", a, b, "--overwrite"], capsys)
    assert rc == 0, err
    assert mine.read_bytes()[:8] == PNG_SIGNATURE


def test_overwrite_with_one_folder_is_refused_as_before(tmp_path, capsys):
    a = write_run(tmp_path / "a", [0.5])
    rc, _, err = run(["--mode", "plot", "--modeldir", a, "--overwrite"], capsys)
    assert rc == 2
    assert_one_error_line(err, "--overwrite applies to --mode train or sweep only")


def hide_matplotlib(monkeypatch):
    """Make ``import matplotlib`` (and its parts) fail as if it were not installed."""
    for name in list(sys.modules):
        if name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_matplotlib_one_line_and_nothing_written(tmp_path, capsys, monkeypatch):
    hide_matplotlib(monkeypatch)
    a = write_run(tmp_path / "a", [0.5], seed=1)
    b = write_run(tmp_path / "b", [0.6], seed=2)
    rc, _, err = run(["--mode", "plot", "--modeldir", a, b], capsys)
    assert rc == 1
    assert_one_error_line(err, "matplotlib", "pip install")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


# --------------------------------------------------------------------------------------------
# A sweep's compare.png (trainer/app/sweep.py)

def test_a_sweep_labels_its_picture_by_the_swept_values(tmp_path, monkeypatch):
    from trainer.app import sweep
    drawn = {}

    def record(path, lines, validation=True):
        drawn.update(path=path, labels=[label for label, _ in lines], validation=validation)
        return path
    monkeypatch.setattr(plots, "matplotlib_available", lambda: True)
    monkeypatch.setattr(plots, "draw_comparison", record)
    folders = [write_run(tmp_path / "v1", [0.5]), write_run(tmp_path / "v2", [0.4])]
    notes = []
    sweep.draw_comparison(str(tmp_path), folders + [str(tmp_path / "v3")],
                          ["lr=0.1", "lr=0.01", "lr=9"], replace=False, log=notes.append)
    assert drawn == {"path": str(tmp_path / "compare.png"), "labels": ["lr=0.1", "lr=0.01"],
                     "validation": True}  # lr=9 left no metrics.csv: nothing to draw
    assert notes == [f"wrote {tmp_path / 'compare.png'}"]


def test_a_sweep_without_matplotlib_notes_it_and_goes_on(tmp_path, monkeypatch):
    from trainer.app import sweep
    hide_matplotlib(monkeypatch)
    folders = [write_run(tmp_path / "seed=1", [0.5]), write_run(tmp_path / "seed=2", [0.4])]
    notes = []
    sweep.draw_comparison(str(tmp_path), folders, ["seed=1", "seed=2"], replace=True,
                          log=notes.append)
    assert len(notes) == 1 and "not drawn" in notes[0] and "matplotlib" in notes[0]
    assert not (tmp_path / "compare.png").exists()


def test_a_sweep_keeps_a_compare_png_that_is_not_its_own(tmp_path):
    from trainer.app import sweep
    pytest.importorskip("matplotlib")
    folders = [write_run(tmp_path / "seed=1", [0.5]), write_run(tmp_path / "seed=2", [0.4])]
    mine = tmp_path / "compare.png"
    mine.write_bytes(b"my own picture")
    notes = []
    sweep.draw_comparison(str(tmp_path), folders, ["seed=1", "seed=2"], replace=False,
                          log=notes.append)
    assert mine.read_bytes() == b"my own picture"
    assert len(notes) == 1 and "left as it is" in notes[0]
    sweep.draw_comparison(str(tmp_path), folders, ["seed=1", "seed=2"], replace=True,
                          log=notes.append)  # --resume or --overwrite: the sweep's own
    assert mine.read_bytes()[:8] == PNG_SIGNATURE
