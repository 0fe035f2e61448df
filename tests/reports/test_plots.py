"""curves.png from metrics.csv (plots.py). matplotlib is optional: the drawing tests are skipped
without it, and the tests of reading metrics.csv and of the missing-matplotlib message run
everywhere."""
import csv
import json
import math
import os
import struct
import sys
import types

import pytest

from trainer.reports import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics_rows(epochs=6, decay_after=3, valid=True):
    """Rows as training writes them: lr 0.1, then 0.01 after epoch ``decay_after``."""
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append({"epoch": epoch, "lr": 0.1 if epoch <= decay_after else 0.01,
                     "train_loss": 2.0 / epoch, "train_acc": 0.3 + 0.1 * epoch,
                     "valid_loss": 2.2 / epoch if valid else None,
                     "valid_acc": 0.25 + 0.1 * epoch if valid else None,
                     "seconds": 12.5, "images_per_second": 3600.0})
    return rows


def write_metrics(folder, rows):
    """Write rows as records.py does (empty cells for None); return the file's path."""
    path = os.path.join(folder, "metrics.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(plots.COLUMNS)
        for row in rows:
            writer.writerow(["" if row[c] is None else f"{row[c]:.10g}" for c in plots.COLUMNS])
    return path


def write_text(folder, text):
    path = os.path.join(folder, "metrics.csv")
    with open(path, "w", newline="") as f:
        f.write(text)
    return path


def hide_modules(monkeypatch, top: str, stand_in=None):
    """Make ``import top`` (and its submodules) fail as if top were not installed."""
    for name in list(sys.modules):
        if name.startswith(top + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, stand_in)


# --------------------------------------------------------------------------------------------
# Reading metrics.csv (no matplotlib needed)

def test_the_columns_are_the_ones_training_writes():
    records = pytest.importorskip("records")
    assert plots.COLUMNS == records.COLUMNS


def test_read_metrics_returns_numbers_and_none_for_empty_validation_cells(tmp_path):
    expected = metrics_rows(valid=True)
    rows = plots.read_metrics(write_metrics(tmp_path, expected))
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row == {column: pytest.approx(value) for column, value in want.items()}
    rows = plots.read_metrics(write_metrics(tmp_path, metrics_rows(valid=False)))
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(row["epoch"], int) for row in rows)
    assert all(row["valid_loss"] is None and row["valid_acc"] is None for row in rows)
    assert rows[3]["lr"] == pytest.approx(0.01) and rows[3]["train_acc"] == pytest.approx(0.7)


HEADER = ",".join(plots.COLUMNS) + "\n"
GOOD = "1,0.1,2.0,0.4,2.2,0.35,12.5,3600\n"
DAMAGED = {
    "empty": ("", "is empty"),
    "only a header": (HEADER, "no finished epoch"),
    "another header": ("step,loss,acc\n1,2.0,0.4\n", "lacks the column(s) epoch, lr, train_loss"),
    "a word for a number": (HEADER + "1,0.1,nope,0.4,2.2,0.35,12.5,3600\n",
                            "line 2: train_loss is 'nope'"),
    "a cell short": (HEADER + GOOD + "2,0.1,1.0,0.5,1.1,0.45,12.5\n", "line 3: expected 8 cells"),
    "a cell too many": (HEADER + "1,0.1,2.0,0.4,2.2,0.35,12.5,3600,9\n", "line 2: expected 8"),
    "a missing training loss": (HEADER + "1,0.1,,0.4,2.2,0.35,12.5,3600\n", "train_loss is ''"),
    "accuracy in percent": (HEADER + "1,0.1,2.0,40,2.2,0.35,12.5,3600\n", "outside [0, 1]"),
    "a fractional epoch": (HEADER + "1.5,0.1,2.0,0.4,2.2,0.35,12.5,3600\n", "not a positive whole"),
    "an epoch twice": (HEADER + GOOD + GOOD, "epoch 1 comes after epoch 1"),
    "binary junk": ("\x00\xff\xfe" * 10, "is not a readable CSV file"),
    "a loss no float32 holds": (HEADER + "1,0.1,1e308,0.4,2.2,0.35,12.5,3600\n",
                                "line 2: train_loss is 1e+308"),
    "a negative loss": (HEADER + "1,0.1,2.0,0.4,-1e308,0.35,12.5,3600\n",
                        "line 2: valid_loss is -1e+308"),
    "an infinite rate": (HEADER + "1,inf,2.0,0.4,2.2,0.35,12.5,3600\n", "line 2: lr is inf"),
    "a negative rate": (HEADER + "1,-0.1,2.0,0.4,2.2,0.35,12.5,3600\n", "line 2: lr is -0.1"),
    "an epoch past counting": (HEADER + "1e308,0.1,2.0,0.4,2.2,0.35,12.5,3600\n",
                               "not a positive whole"),
}


@pytest.mark.parametrize("case", DAMAGED, ids=list(DAMAGED))
def test_read_metrics_refuses_a_damaged_file_naming_it(tmp_path, case):
    text, reason = DAMAGED[case]
    path = os.path.join(tmp_path, "metrics.csv")
    if case == "binary junk":
        with open(path, "wb") as f:
            f.write(text.encode("latin-1"))
    else:
        write_text(tmp_path, text)
    with pytest.raises(plots.PlotError) as refused:
        plots.read_metrics(path)
    message = str(refused.value)
    assert path in message and reason in message and "\n" not in message


def test_read_metrics_refuses_a_missing_file_saying_to_train_first(tmp_path):
    with pytest.raises(plots.PlotError, match="holds no metrics.csv; train first") as refused:
        plots.read_metrics(os.path.join(tmp_path, "metrics.csv"))
    assert str(tmp_path) in str(refused.value) and "--modeldir" in str(refused.value)


def test_lr_changes_are_the_first_epochs_at_a_new_rate():
    rows = metrics_rows(epochs=8, decay_after=3)
    rows[6]["lr"] = rows[7]["lr"] = 0.001
    assert plots.lr_changes(rows) == [(4, pytest.approx(0.01)), (7, pytest.approx(0.001))]
    assert plots.lr_changes(metrics_rows(epochs=3, decay_after=3)) == []


def test_only_the_decays_of_a_step_schedule_are_marked():
    rows = metrics_rows(epochs=6, decay_after=4)
    rows[0]["lr"] = 0.05  # the warm-up's rise is not a decay
    assert plots.lr_changes(rows, "step") == [(5, pytest.approx(0.01))]
    for epoch, row in enumerate(rows, 1):  # a rate that changes at every epoch
        row["lr"] = 0.05 * (1 + math.cos(math.pi * epoch / 7))
    assert plots.lr_changes(rows, "cosine") == []
    assert plots.lr_changes(rows, "onecycle") == []


def test_the_schedule_is_the_one_config_json_records(tmp_path):
    assert plots.recorded_schedule(str(tmp_path)) == "step"  # no record: the default schedule
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"config": {"lr_schedule": "cosine", "max_epoch": 6}}, f)
    assert plots.recorded_schedule(str(tmp_path)) == "cosine"
    (tmp_path / "config.json").write_text("{damaged")
    assert plots.recorded_schedule(str(tmp_path)) == "step"


# --------------------------------------------------------------------------------------------
# Without matplotlib (runs everywhere)

def test_without_matplotlib_drawing_says_how_to_install_it_and_writes_nothing(tmp_path,
                                                                              monkeypatch):
    write_metrics(tmp_path, metrics_rows())
    hide_modules(monkeypatch, "matplotlib")
    assert plots.matplotlib_available() is False
    with pytest.raises(plots.MatplotlibMissing) as refused:
        plots.draw_curves(str(tmp_path))
    message = str(refused.value)
    assert "not installed" in message
    assert "pip install matplotlib" in message and "requirements-dev.txt" in message
    assert "\n" not in message
    assert isinstance(refused.value, plots.PlotError) and isinstance(refused.value, ValueError)
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_a_matplotlib_that_does_not_import_is_named_as_such(tmp_path, monkeypatch):
    write_metrics(tmp_path, metrics_rows())
    hide_modules(monkeypatch, "matplotlib", stand_in=types.ModuleType("matplotlib"))  # no parts
    assert plots.matplotlib_available() is False  # training then skips the picture
    with pytest.raises(plots.MatplotlibMissing, match="installed but does not import"):
        plots.draw_curves(str(tmp_path))
    assert os.listdir(tmp_path) == ["metrics.csv"]


# --------------------------------------------------------------------------------------------
# Drawing (needs matplotlib)

def png_size(path):
    """(width, height) from the PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("valid", [True, False], ids=["with validation", "train_all"])
def test_draw_curves_writes_a_png_into_modeldir(tmp_path, valid):
    pytest.importorskip("matplotlib")
    assert plots.matplotlib_available()
    modeldir = tmp_path / "run"
    modeldir.mkdir()
    write_metrics(modeldir, metrics_rows(valid=valid))
    path = plots.draw_curves(str(modeldir))
    assert path == os.path.join(str(modeldir), "curves.png")
    assert png_size(path) == (plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI)
    assert 10_000 < os.path.getsize(path) < 1_000_000
    assert sorted(os.listdir(modeldir)) == ["curves.png", "metrics.csv"]  # no temporary left


def legend_labels(axes):
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_the_figure_has_loss_and_accuracy_panels_with_the_lr_drop_marked():
    pytest.importorskip("matplotlib")
    rows = metrics_rows(valid=True)
    figure = plots.curves_figure(rows, "run")
    loss_axes, acc_axes = figure.axes
    assert "loss" in loss_axes.get_ylabel() and "accuracy (%)" == acc_axes.get_ylabel()
    assert any("run: 6 epochs" in text.get_text() for text in figure.texts)  # the title
    for axes in (loss_axes, acc_axes):
        assert legend_labels(axes) == ["train", "validation"]
        dashed = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
        assert [list(line.get_xdata()) for line in dashed] == [[3.5, 3.5]]
        assert [text.get_text().strip() for text in axes.texts] == ["lr 0.01"]
    train_acc = [line for line in acc_axes.get_lines() if line.get_label() == "train"][0]
    assert list(train_acc.get_ydata()) == pytest.approx([100 * row["train_acc"] for row in rows])

    no_valid = plots.curves_figure(metrics_rows(valid=False), "run")
    assert [legend_labels(axes) for axes in no_valid.axes] == [["train"], ["train"]]


def test_draw_curves_refuses_a_missing_metrics_file_and_writes_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(plots.PlotError, match="holds no metrics.csv"):
        plots.draw_curves(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_picture_that_cannot_be_written_is_named_and_leaves_no_temporary(tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path, metrics_rows())
    os.mkdir(tmp_path / "curves.png")  # in the way: os.replace cannot put a file there
    with pytest.raises(plots.PlotError, match="curves.png is a folder"):
        plots.draw_curves(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "metrics.csv"]


def test_a_cosine_run_has_no_rate_marked(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    rows = metrics_rows(epochs=6)
    for epoch, row in enumerate(rows, 1):
        row["lr"] = 0.05 * (1 + math.cos(math.pi * epoch / 7))
    figure = plots.curves_figure(rows, "run", "cosine")
    for axes in figure.axes:
        assert [line for line in axes.get_lines() if line.get_linestyle() == "--"] == []
        assert list(axes.texts) == []
    write_metrics(tmp_path, rows)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"config": {"lr_schedule": "cosine"}}, f)
    drawn = []
    real = plots.curves_figure

    def spy(rows, name, schedule="step"):
        drawn.append(schedule)
        return real(rows, name, schedule)

    monkeypatch.setattr(plots, "curves_figure", spy)
    plots.draw_curves(str(tmp_path))
    assert drawn == ["cosine"]


def test_extreme_losses_a_run_can_record_are_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    rows = metrics_rows(epochs=3)
    rows[0]["train_loss"] = 3e38  # float32's largest finite values are near 3.4e38
    rows[1]["valid_loss"] = math.inf
    rows[2]["valid_loss"] = math.nan
    write_metrics(tmp_path, rows)
    assert plots.draw_curves(str(tmp_path)).endswith("curves.png")


def test_plot_mode_refuses_an_impossible_metrics_file_in_one_sentence(tmp_path):
    pytest.importorskip("matplotlib")  # without it, --mode plot says so first
    from cli_tools import run_main
    write_text(tmp_path, HEADER + GOOD + "2,0.1,1e308,0.5,1.1,0.45,12.5,3600\n")
    r = run_main(["--mode", "plot", "--modeldir", str(tmp_path)])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    said = r.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("error: ") and "metrics.csv" in said[0], r.stderr
