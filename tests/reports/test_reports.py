"""What a run leaves to look at: metrics.csv, config.json, model-best.ckpt, and the test report."""
import csv
import json
import os
import re
import signal

import numpy as np
import pytest
import torch

from trainer.run import checkpoints
import main
from trainer.reports import reports
from cifar_files import make_batch, write_cifar
from cli_tools import TINY, load, start_main, run_main
from configure import Config
from Model import PAUSE_ENV, MyModel

HEADER = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds",
          "images_per_second"]


def tiny_config(modeldir, **overrides) -> Config:
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=3, save_interval=1,
                  lr_decay_epochs=(2,), device="cpu", modeldir=str(modeldir), eval_batch_size=64,
                  amp="off")  # fp32: --amp auto would time bf16
    values.update(overrides)
    return Config(**values)


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


# --------------------------------------------------------------------------------------------
# metrics.csv and config.json

def test_metrics_csv_holds_one_row_per_epoch_that_agrees_with_the_printed_lines(tmp_path):
    x, y = make_batch(32, np.random.default_rng(0))
    lines = []
    model = MyModel(tiny_config(tmp_path / "m"), log=lines.append)
    history = model.train(x[:24], y[:24], x[24:], y[24:])
    header, rows = read_rows(tmp_path / "m" / "metrics.csv")
    assert header == HEADER
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    printed = [line for line in lines if line.startswith("epoch")]
    for row, line, m in zip(rows, printed, history):
        epoch, lr, train_loss, train_acc, valid_loss, valid_acc = row[:6]
        assert float(lr) == pytest.approx(0.1 if int(epoch) <= 2 else 0.01)
        assert f"loss {float(train_loss):.4f}" in line
        assert f"train {100 * float(train_acc):6.2f}%" in line
        assert f"valid {100 * float(valid_acc):6.2f}%" in line
        assert float(valid_loss) == pytest.approx(m["valid_loss"], rel=1e-9)
        assert float(row[6]) > 0 and float(row[7]) > 0
    # valid_loss is the mean cross-entropy over the validation images, computed here by hand.
    model.network.eval()
    with torch.no_grad():
        from ImageUtils import standardize
        images = np.stack([standardize(r.reshape(3, 32, 32).astype(np.float32)) for r in x[24:]])
        logits = model.network(torch.from_numpy(images))
        expected = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y[24:])).item()
    assert float(rows[-1][4]) == pytest.approx(expected, rel=1e-4)


def test_metrics_csv_leaves_validation_cells_empty_without_validation(tmp_path):
    x, y = make_batch(16, np.random.default_rng(0))
    MyModel(tiny_config(tmp_path / "m", max_epoch=1), log=lambda *a: None).train(x, y)
    _, rows = read_rows(tmp_path / "m" / "metrics.csv")
    assert len(rows) == 1 and rows[0][4] == "" and rows[0][5] == ""


def test_config_json_records_the_resolved_flags_device_versions_and_data(tmp_path):
    x, y = make_batch(24, np.random.default_rng(0))
    config = tiny_config(tmp_path / "m", max_epoch=1, seed=7)
    MyModel(config, log=lambda *a: None).train(x[:16], y[:16], x[16:], y[16:])
    with open(tmp_path / "m" / "config.json") as f:
        record = json.load(f)
    assert record["config"] == config.to_dict() and record["config"]["seed"] == 7
    assert record["device"] == "cpu"
    assert record["torch"] == torch.__version__
    assert re.match(r"^3\.\d+\.\d+", record["python"])
    assert record["data"]["train_images"] == 16 and record["data"]["valid_images"] == 8
    assert record["data"]["dataset"] == "cifar10"


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    root = tmp_path_factory.mktemp("killable_metrics")
    data_dir = str(root / "data")
    write_cifar(data_dir, n_per_batch=16, n_test=8, seed=3)
    return TINY + ["--data_dir", data_dir, "--split_index", "64", "--max_epoch", "5",
                   "--save_interval", "2", "--lr_decay_epochs"]


def test_metrics_csv_after_kill_9_and_resume_has_each_epoch_once(killable, tmp_path):
    modeldir = str(tmp_path / "m")
    proc = start_main(killable + ["--modeldir", modeldir], env={PAUSE_ENV: "4:1"})
    for line in proc.stderr:
        if line.startswith("paused before"):
            break
    proc.send_signal(signal.SIGKILL)  # in epoch 4: rows 1..3 written, last checkpoint epoch 2
    proc.communicate(timeout=60)
    _, rows = read_rows(os.path.join(modeldir, "metrics.csv"))
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert checkpoints.list_checkpoints(modeldir) == [2]

    done = run_main(killable + ["--modeldir", modeldir, "--resume"])
    assert done.returncode == 0, done.stderr
    header, rows = read_rows(os.path.join(modeldir, "metrics.csv"))
    assert header == HEADER
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    final = load(os.path.join(modeldir, "model-5.ckpt"))
    assert [float(r[2]) for r in rows] == pytest.approx([m["train_loss"] for m in final["metrics"]])


# --------------------------------------------------------------------------------------------
# model-best.ckpt

def test_model_best_follows_the_best_validation_accuracy(tmp_path, monkeypatch):
    x, y = make_batch(24, np.random.default_rng(0))
    model = MyModel(tiny_config(tmp_path / "m", max_epoch=4), log=lambda *a: None)
    accuracies = iter([0.5, 0.75, 0.25, 0.75])  # best at epoch 2; a tie later does not replace it
    monkeypatch.setattr(model, "validate", lambda xv, yv: (next(accuracies), 1.0))
    model.train(x[:16], y[:16], x[16:], y[16:])
    best = load(tmp_path / "m" / checkpoints.BEST)
    assert best["epoch"] == 2
    second = load(tmp_path / "m" / "model-2.ckpt")
    assert all(torch.equal(best["model"][k], second["model"][k]) for k in best["model"])
    assert checkpoints.list_checkpoints(str(tmp_path / "m")) == [1, 2, 3, 4]


def test_retraining_from_an_earlier_epoch_drops_a_best_checkpoint_past_it(tmp_path, monkeypatch):
    x, y = make_batch(24, np.random.default_rng(0))
    first = MyModel(tiny_config(tmp_path / "m", max_epoch=3), log=lambda *a: None)
    accuracies = iter([0.25, 0.5, 0.75])
    monkeypatch.setattr(first, "validate", lambda xv, yv: (next(accuracies), 1.0))
    first.train(x[:16], y[:16], x[16:], y[16:])
    assert load(tmp_path / "m" / checkpoints.BEST)["epoch"] == 3
    again = MyModel(tiny_config(tmp_path / "m", max_epoch=2), log=lambda *a: None)
    monkeypatch.setattr(again, "validate", lambda xv, yv: (0.1, 1.0))  # never the best
    with pytest.raises(checkpoints.CheckpointError, match="--overwrite"):  # asked for, or refused
        again.train(x[:16], y[:16], x[16:], y[16:], resume=1)
    assert load(tmp_path / "m" / checkpoints.BEST)["epoch"] == 3
    again.train(x[:16], y[:16], x[16:], y[16:], resume=1, overwrite=True)
    assert not (tmp_path / "m" / checkpoints.BEST).exists()  # the epoch-3 best is of another run
    assert checkpoints.list_checkpoints(str(tmp_path / "m")) == [1, 2]


# --------------------------------------------------------------------------------------------
# The report, by hand

NAMES = ["cat", "dog", "bird"]


def hand_case():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1])
    # true 0: 2 right, 1 taken for dog; true 1: 2 right; true 2: 2 right, 1 cat, 1 dog
    confusion = [[2, 1, 0], [0, 2, 0], [1, 1, 2]]
    return labels, predictions, confusion


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    labels, predictions, confusion = hand_case()
    assert reports.confusion_matrix(labels, predictions, 3).tolist() == confusion
    assert reports.per_class(np.array(confusion)) == [(3, 2 / 3), (2, 1.0), (4, 0.5)]
    assert reports.per_class(np.array([[0, 0], [1, 1]]))[0] == (0, None)  # a class with no images


def _results(labels, predictions):
    worse = predictions.copy()
    worse[0] = 1
    return [{"checkpoint": "model-1.ckpt", "epoch": 1, "accuracy": float((worse == labels).mean()),
             "loss": 1.5, "images": len(labels), "predictions": worse},
            {"checkpoint": "model-best.ckpt", "epoch": 2,
             "accuracy": float((predictions == labels).mean()), "loss": 0.75,
             "images": len(labels), "predictions": predictions}]


def test_report_text_names_the_best_checkpoint_classes_and_aligns_the_matrix():
    labels, predictions, confusion = hand_case()
    report = reports.build(_results(labels, predictions), labels, NAMES, 3, "test")
    assert report["best"] == "model-best.ckpt"
    assert [c["accuracy"] for c in report["per_class"]] == [2 / 3, 1.0, 0.5]
    text = reports.format_text(report).splitlines()
    assert re.match(r"^checkpoint\s+epoch\s+test acc\s+loss\s+images$", text[0])
    assert re.match(r"^model-1\.ckpt\s+1\s+55\.56%\s+1\.5000\s+9$", text[1])
    assert re.match(r"^model-best\.ckpt\s+2\s+66\.67%\s+0\.7500\s+9$", text[2])
    assert "per class, model-best.ckpt:" in text
    assert any(re.match(r"^\s+bird\s+50\.00%\s+\(4 images\)$", line) for line in text)
    start = text.index("confusion matrix of model-best.ckpt (rows: true class, columns: predicted)")
    matrix = text[start + 2:start + 5]
    assert [line.split()[2:] for line in matrix] == [[str(v) for v in row] for row in confusion]
    assert [line.split()[1] for line in matrix] == NAMES
    assert len({len(line) for line in text[start + 1:start + 5]}) == 1  # aligned


def test_report_without_names_uses_class_numbers_and_json_holds_the_same(tmp_path):
    labels, predictions, confusion = hand_case()
    report = reports.build(_results(labels, predictions), labels, None, 3, "valid")
    assert report["classes"] == ["0", "1", "2"]
    path = str(tmp_path / "report.json")
    reports.write_json(report, path)
    with open(path) as f:
        back = json.load(f)
    assert back["confusion_matrix"] == confusion
    assert back["set"] == "valid" and back["best"] == "model-best.ckpt"
    assert [c["checkpoint"] for c in back["checkpoints"]] == ["model-1.ckpt", "model-best.ckpt"]


def test_of_equally_accurate_checkpoints_the_report_takes_the_first_listed():
    labels, predictions, confusion = hand_case()
    other = predictions.copy()
    other[2], other[6] = 2, 2  # a cat lost, a bird won: the same accuracy, other classes right
    other_confusion = [[1, 1, 1], [0, 2, 0], [0, 1, 3]]
    assert (other == labels).mean() == (predictions == labels).mean()
    cases = {"model-1.ckpt": (predictions, confusion), "model-2.ckpt": (other, other_confusion)}
    for order in (["model-1.ckpt", "model-2.ckpt"], ["model-2.ckpt", "model-1.ckpt"]):
        results = [{"checkpoint": name, "epoch": int(name[6]), "loss": 1.0, "images": 9,
                    "accuracy": float((cases[name][0] == labels).mean()),
                    "predictions": cases[name][0]} for name in order]
        report = reports.build(results, labels, NAMES, 3, "test")
        first = order[0]
        assert report["best"] == first
        assert report["confusion_matrix"] == cases[first][1]
        per_class = [c["accuracy"] for c in report["per_class"]]
        assert per_class == [row[k] / sum(row) for k, row in enumerate(cases[first][1])]
        assert f"per class, {first}:" in reports.format_text(report)


def test_report_json_holds_no_nan(tmp_path):
    labels, predictions, _ = hand_case()
    results = _results(labels, predictions)
    results[0]["loss"] = float("nan")  # a checkpoint whose loss overflowed
    path = str(tmp_path / "report.json")
    reports.write_json(reports.build(results, labels, NAMES, 3, "test"), path)
    with open(path) as f:
        back = json.loads(f.read(), parse_constant=lambda word: pytest.fail(f"{word} in JSON"))
    assert back["checkpoints"][0]["loss"] is None and back["checkpoints"][1]["loss"] == 0.75


# --------------------------------------------------------------------------------------------
# The command line

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_run")
    data_dir = str(root / "data")
    write_cifar(data_dir, n_per_batch=16, n_test=12, seed=0)
    meta = {b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer",
                                                    "dog", "frog", "horse", "ship", "truck")]}
    import pickle
    with open(os.path.join(data_dir, "cifar-10-batches-py", "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    modeldir = str(root / "model")
    flags = TINY + ["--data_dir", data_dir, "--modeldir", modeldir, "--split_index", "64",
                    "--lr_decay_epochs"]
    assert main.main(flags + ["--max_epoch", "3", "--save_interval", "1"]) == 0
    return data_dir, modeldir, flags


def test_mode_test_with_best_prints_the_report_and_writes_json(trained, tmp_path, capsys):
    data_dir, modeldir, flags = trained
    best_epoch = load(os.path.join(modeldir, checkpoints.BEST))["epoch"]
    capsys.readouterr()
    out_json = str(tmp_path / "r.json")
    assert main.main(flags + ["--mode", "test", "--checkpoints", "best", "1",
                              "--json", out_json]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^model-best\.ckpt\s+{best_epoch}\s", out, re.M), out
    assert "per class" in out and "airplane" in out and "truck" in out
    with open(out_json) as f:
        report = json.load(f)
    assert report["checkpoints"][0]["checkpoint"] == "model-best.ckpt"
    assert report["checkpoints"][0]["epoch"] == best_epoch
    assert sum(map(sum, report["confusion_matrix"])) == 12
    assert report["classes"][0] == "airplane"


def test_test_and_predict_take_the_network_from_the_checkpoint(trained, tmp_path, capsys):
    data_dir, modeldir, _ = trained
    bare = ["--data_dir", data_dir, "--modeldir", modeldir, "--device", "cpu"]  # no network flags
    capsys.readouterr()
    assert main.main(bare + ["--mode", "test", "--checkpoints", "2"]) == 0
    assert re.search(r"^model-2\.ckpt\s+2\s", capsys.readouterr().out, re.M)
    private = str(tmp_path / "p.npy")
    np.save(private, np.zeros((3, 3072), np.uint8))
    out = str(tmp_path / "probs.npy")
    assert main.main(bare + ["--mode", "predict", "--checkpoint", "best", "--private_data",
                             private, "--output", out]) == 0
    assert np.load(out).shape == (3, 10)
    assert main.main(bare + ["--mode", "test", "--resnet_size", "3"]) == 1
    err = capsys.readouterr().err
    assert "resnet_size 1" in err and "--resnet_size 3" in err


# --------------------------------------------------------------------------------------------
# Progress bars

class RecordingBar:
    """Stands for tqdm: records how bars are made and what they show."""

    made, postfixes = [], []

    def __init__(self, iterable=None, disable=None, **kwargs):
        self.iterable, self.disable = iterable, disable
        RecordingBar.made.append(disable)

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass

    def set_postfix(self, **values):
        RecordingBar.postfixes.append(values)

    def close(self):
        pass

    write = staticmethod(lambda *a, **k: None)


@pytest.mark.parametrize("quiet", [False, True])
def test_bars_show_loss_accuracy_and_rate_unless_quiet(tmp_path, monkeypatch, quiet):
    from trainer.evaluation import evaluate
    from trainer.training import loop
    monkeypatch.setattr(loop, "tqdm", RecordingBar)  # the epoch's bar
    monkeypatch.setattr(evaluate, "tqdm", RecordingBar)  # the validation's
    RecordingBar.made, RecordingBar.postfixes = [], []
    x, y = make_batch(24, np.random.default_rng(0))
    config = tiny_config(tmp_path / "m", max_epoch=1, quiet=quiet)
    MyModel(config, log=lambda *a: None).train(x[:16], y[:16], x[16:], y[16:])
    assert len(RecordingBar.made) == 2  # the epoch and its validation
    if quiet:
        assert RecordingBar.made == [True, True] and RecordingBar.postfixes == []
    else:
        assert RecordingBar.made == [None, None]  # tqdm decides: a terminal or nothing
        # RecordingBar.disable is None (falsy), so both bars report as on a terminal
        training, validating = RecordingBar.postfixes[0], RecordingBar.postfixes[-1]
        assert set(training) == {"loss", "acc", "img_s"}
        assert set(validating) == {"loss", "acc", "img_s"}


# --------------------------------------------------------------------------------------------
# The optional extras, from the command line

def test_training_draws_curves_when_matplotlib_is_there_and_skips_them_otherwise(
        trained, tmp_path, monkeypatch, capsys):
    from trainer.reports import plots
    data_dir, _, flags = trained
    drawn = []
    monkeypatch.setattr(plots, "draw_curves", lambda modeldir: drawn.append(modeldir) or
                        os.path.join(modeldir, "curves.png"))
    for available, modeldir in ((True, str(tmp_path / "with")), (False, str(tmp_path / "without"))):
        monkeypatch.setattr(plots, "matplotlib_available", lambda: available)
        assert main.main(flags + ["--modeldir", modeldir, "--max_epoch", "1"]) == 0
    assert drawn == [str(tmp_path / "with")]
    out = capsys.readouterr().out
    assert out.count("wrote ") == 1


def test_tensorboard_without_the_package_stops_before_training(trained, tmp_path, capsys):
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here; tests/test_tensorboard_log.py covers it")
    data_dir, _, flags = trained
    modeldir = str(tmp_path / "m")
    capsys.readouterr()
    assert main.main(flags + ["--modeldir", modeldir, "--max_epoch", "1",
                              "--tensorboard", str(tmp_path / "tb")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install tensorboard" in err[0]
    assert not os.path.exists(modeldir) and not os.path.exists(tmp_path / "tb")


def test_predict_to_csv_writes_the_argmax_of_the_probabilities(trained, tmp_path):
    data_dir, modeldir, flags = trained
    private = str(tmp_path / "p.npy")
    np.save(private, np.random.default_rng(4).integers(0, 256, (7, 32, 32, 3)).astype(np.uint8))
    npy, csv_path = str(tmp_path / "p_out.npy"), str(tmp_path / "p_out.csv")
    for out in (npy, csv_path):
        assert main.main(flags + ["--mode", "predict", "--checkpoint", "3", "--private_data",
                                  private, "--output", out]) == 0
    header, rows = read_rows(csv_path)
    assert header == ["id", "label"]
    assert [int(r[0]) for r in rows] == list(range(7))
    assert [int(r[1]) for r in rows] == np.load(npy).argmax(axis=1).tolist()


def test_mode_plot_draws_the_weights_of_the_newest_checkpoint(trained, tmp_path, monkeypatch):
    from trainer.reports import plots
    data_dir, modeldir, flags = trained
    seen = {}

    def record(folder, magnitudes, name):
        seen.update(folder=folder, magnitudes=magnitudes, name=name)
        return os.path.join(folder, plots.WEIGHTS)

    monkeypatch.setattr(plots, "draw_curves", lambda folder: os.path.join(folder, "curves.png"))
    monkeypatch.setattr(plots, "draw_weights", record)
    assert main.main(["--mode", "plot", "--modeldir", modeldir, "--device", "cpu"]) == 0
    assert seen["name"] == "model-3.ckpt" and seen["folder"] == modeldir
    state = load(os.path.join(modeldir, "model-3.ckpt"))["model"]
    expected = sum(v.numel() for k, v in state.items()
                   if v.is_floating_point() and "running_" not in k)
    assert len(seen["magnitudes"]) == expected and (seen["magnitudes"] >= 0).all()


def test_weights_png_is_a_picture(tmp_path):
    pytest.importorskip("matplotlib")
    from trainer.reports import plots
    path = plots.draw_weights(str(tmp_path), np.abs(np.random.default_rng(0).normal(size=500)),
                              "model-3.ckpt")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
