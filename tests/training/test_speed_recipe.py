"""--recipe speed (issue 18): airbench94's triangle schedule, the width chosen for the budget, a
budget spent rather than left over, validation without the recipe's test-time augmentation, and
that augmentation the default of --mode test and predict for the checkpoints it makes."""
import copy
import json
import shutil
import time

import pytest
import torch

from cli_tools import TINY, run_main
from cifar_files import write_cifar
from configure import Config
from Model import MyModel
from trainer.evaluation import evaluate
from trainer.run import checkpoints
from trainer.training import schedules, sizing
from test_training import data, tiny_config


# --------------------------------------------------------------------------------------------
# The triangle schedule (airbench94's get_lr: 0.2 -> 1 over 23% of the steps, then -> 0.07)

def test_the_triangle_schedule_rises_from_a_fifth_and_falls_to_seven_hundredths():
    cfg = Config(lr_schedule="triangle", learning_rate=2.0, max_epoch=1)
    rate = [schedules.lr_at_step(cfg, 1, g, 100) for g in range(100)]
    # 23 warm-up steps (int(0.23 * 100)): step g rises by 0.8 / 23 of the rate each
    assert rate[0] == pytest.approx(2.0 * 0.2)
    assert rate[10] == pytest.approx(2.0 * (0.2 + 0.8 * 10 / 23))
    assert rate[23] == pytest.approx(2.0)
    # then down over the 77 others: 1 - 0.93 * (g - 23) / 77
    assert rate[60] == pytest.approx(2.0 * (1 - 0.93 * 37 / 77))
    assert rate[99] == pytest.approx(2.0 * (1 - 0.93 * 76 / 77))
    assert max(rate) == pytest.approx(2.0) and min(rate) > 2.0 * 0.07


def test_the_triangle_spans_a_fractional_run():
    # 2.5 epochs of 10 steps: 25 steps, 5 of warm-up (int(0.23 * 25))
    cfg = Config(lr_schedule="triangle", learning_rate=1.0, max_epoch=3, final_epoch_share=0.5)
    assert schedules.total_steps(cfg, 10) == 25
    assert schedules.lr_at_step(cfg, 1, 5, 10) == pytest.approx(1.0)
    assert schedules.lr_at_step(cfg, 3, 4, 10) == pytest.approx(1 - 0.93 * 19 / 20)


# --------------------------------------------------------------------------------------------
# The width

def test_pick_takes_the_widest_width_whose_epochs_fit():
    assert sizing.pick(lambda w: 100 * w, 500, epochs=10) == 0.5  # 10 * 100 * 0.5 = 500
    assert sizing.pick(lambda w: 100 * w, 499, epochs=10) == 0.4375  # the next one down
    assert sizing.pick(lambda w: 100 * w, 1e9, epochs=10) == 2.0  # the widest offered
    assert sizing.pick(lambda w: 100 * w, 1, epochs=10) == 0.25  # none fits: the narrowest


@pytest.mark.parametrize("power, seconds, expected", [
    (2.0, 500.0, 1.0),     # 10 epochs of 50,000 images at 1e-3 * w**2 s each: w**2 <= 1
    (2.0, 125.0, 0.5),     # w**2 <= 0.25
    (2.0, 1.0, 0.25),      # nothing fits: the narrowest
    (1.6, 500 * 0.5 ** 1.6, 0.5),  # time grows as MACs**0.8: the second timing shows it
])
def test_choose_estimates_each_width_from_two_timings(monkeypatch, power, seconds, expected):
    monkeypatch.setattr(sizing, "macs", lambda config, width: 1e6 * width ** 2)
    timed = []

    def timer(width):
        timed.append(width)
        return 1e-3 * width ** power

    lines = []
    width = sizing.choose(Config(network="airbench"), 50000, 0, seconds * 1.0000001, timer,
                          lines.append)
    assert width == expected
    assert timed[0] == sizing.REFERENCE_WIDTH and len(timed) <= 2
    assert lines and f"--width_scale {expected:g}" in lines[0]


def test_validation_counts_a_third_of_a_training_pass_per_image(monkeypatch):
    monkeypatch.setattr(sizing, "macs", lambda config, width: 1e6 * width ** 2)
    timer = lambda width: 1e-3 * width ** 2  # noqa: E731
    # 45,000 training and 15,000 validation images: 50,000 training passes an epoch
    assert sizing.choose(Config(network="airbench"), 45000, 15000, 125.0000001, timer,
                         lambda *a: None) == 0.5


def test_the_test_after_the_training_narrows_the_width_it_leaves_time_for(monkeypatch):
    monkeypatch.setattr(sizing, "macs", lambda config, width: 1e6 * width ** 2)
    timer = lambda width: 1e-3 * width ** 2  # noqa: E731  (an epoch: 50 * w**2 s)
    lines = []
    # 500 s: 10 epochs fit at width 1; a six-view test of 10,000 images (60,000 passes, a third
    # of a training pass each) adds 0.4 of an epoch, which fits only at 0.9375
    assert sizing.choose(Config(network="airbench"), 50000, 0, 500.0000001, timer,
                         lambda *a: None) == 1.0
    assert sizing.choose(Config(network="airbench"), 50000, 0, 500.0000001, timer,
                         lines.append, test_passes=60000) == 0.9375
    assert "the test (0.40 of an epoch)" in lines[0], lines


def test_a_width_already_measured_is_not_timed_again(monkeypatch):
    monkeypatch.setattr(sizing, "macs", lambda config, width: 1e6 * width ** 2)
    timed = []

    def timer(width):
        timed.append(width)
        return 1e-3 * width ** 2

    assert sizing.choose(Config(network="airbench"), 50000, 0, 500.0000001, timer,
                         lambda *a: None, measured={0.5: 1e-3 * 0.25}) == 1.0
    assert timed == [1.0]


def test_with_orthogonal_filter_steps_the_width_fits_nine_epochs(monkeypatch):
    monkeypatch.setattr(sizing, "macs", lambda config, width: 1e6 * width ** 2)
    timer = lambda width: 1e-3 * width ** 2  # noqa: E731  (an epoch: 50 * w**2 s)
    lines = []
    # 450 s: 9 epochs fit at width 1 (450 s), 10 only at 0.9375 (439 s)
    assert sizing.choose(Config(network="airbench", muon_lr=0.12), 50000, 0, 450.0000001, timer,
                         lines.append) == 1.0
    assert "9 epochs" in lines[0]
    assert sizing.choose(Config(network="airbench"), 50000, 0, 450.0000001, timer,
                         lambda *a: None) == 0.9375


def test_width_zero_without_a_budget_is_the_published_network():
    cfg = Config(network="airbench", width_scale=0.0)
    sizing.resolve(cfg, None, None, None, 0, 0.0)
    assert cfg.width_scale == 1.0


def refuse_to_build(config):
    raise AssertionError("nothing should be built or timed")


@pytest.mark.parametrize("network", ["resnet", "resnet18", "simple_cnn", "resnet50"])
def test_a_network_without_a_width_trains_its_own(network):
    """--recipe speed with a network that has no width: nothing is timed (every width would
    build the same network, and the chooser divided by zero), the network is its own."""
    cfg = Config(recipe="speed", network=network).apply_recipe(explicit={"network"})
    cfg.budget_minutes = 1.0
    assert cfg.width_scale == 0
    sizing.resolve(cfg, refuse_to_build, None, None, 0, 0.0)
    assert cfg.width_scale == 1.0


def test_the_chooser_times_the_models_the_run_would_build(tmp_path):
    """Each width is timed on the model the run would build (every flag of the run applied, the
    width changed), with --amp auto settled once, on the first of them."""
    cfg = Config(network="airbench", width_scale=0.0, whiten=True, budget_minutes=1.0,
                 batch_size=8, device="cpu", amp="auto", label_smoothing=0.2, lookahead=True,
                 num_classes=10, modeldir=str(tmp_path / "m"))
    built, lines = [], []

    def build(config):
        built.append(copy.copy(config))
        return MyModel(config, log=lines.append)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    sizing.resolve(cfg, build, images, labels, 0, time.monotonic(), log=lines.append)
    assert cfg.width_scale in sizing.WIDTHS and cfg.amp in ("bf16", "off")
    assert built[0].width_scale == sizing.REFERENCE_WIDTH and 1 <= len(built) <= 2
    for config in built:
        assert (config.whiten, config.label_smoothing, config.lookahead, config.batch_size) == \
            (True, 0.2, True, 8)
    assert all(config.amp == cfg.amp for config in built[1:])  # settled once, then kept
    assert sum(line.startswith("amp auto:") for line in lines) == 1, lines
    assert any(f"--width_scale {cfg.width_scale:g}" in line for line in lines), lines


# --------------------------------------------------------------------------------------------
# Validation and test-time augmentation

def test_validation_during_training_ignores_the_recipes_tta(tmp_path, monkeypatch):
    seen = []
    original = evaluate.evaluate_batch

    def spy(network, x, rt, tta):
        seen.append(tta)
        return original(network, x, rt, tta)

    monkeypatch.setattr(evaluate, "evaluate_batch", spy)
    x, y = data(16)
    MyModel(tiny_config(tmp_path, tta="six"), log=lambda *a: None).train(x, y, x[:8], y[:8])
    assert seen and set(seen) == {"off"}


def speed_flags() -> list:
    """TINY's flags for the speed recipe: its own network and --amp auto, batches of 16."""
    flags = [a for a in TINY if a not in ("--resnet_size", "1", "--first_num_filters", "4",
                                          "--amp", "off")]
    flags[flags.index("--batch_size") + 1] = "16"
    return flags


@pytest.fixture(scope="module")
def speed_run(tmp_path_factory):
    """A tiny --recipe speed run with a budget (batch 16 instead of 1,024: the data is tiny)."""
    root = tmp_path_factory.mktemp("speed")
    data_dir = root / "data"
    write_cifar(data_dir, n_per_batch=24, n_test=20)
    modeldir = root / "model"
    flags = speed_flags()
    began = time.monotonic()
    result = run_main(["--mode", "train", "--recipe", "speed", "--budget_minutes", "0.5",
                       "--data_dir", data_dir, "--modeldir", modeldir, "--quiet",
                       "--split_index", "100", "--save_interval", "1", *flags])
    result.wall_seconds = time.monotonic() - began
    return data_dir, modeldir, result


def test_a_speed_run_chooses_its_width_and_spends_its_budget(speed_run):
    data_dir, modeldir, result = speed_run
    assert result.returncode == 0, result.stderr
    assert "width for" in result.stdout and "budget 0.5 min" in result.stdout, result.stdout
    saved = json.loads((modeldir / "config.json").read_text())["config"]
    assert saved["width_scale"] in sizing.WIDTHS and saved["network"] == "airbench"
    assert saved["tta"] == "six" and saved["lr_schedule"] == "triangle"
    newest = checkpoints.list_checkpoints(str(modeldir))[-1]
    ckpt = checkpoints.read_checkpoint(checkpoints.find_checkpoint(str(modeldir), newest))
    assert ckpt["config"]["width_scale"] == saved["width_scale"]
    assert ckpt["config"]["max_epoch"] == newest  # the planned run was trained to its end
    assert result.stdout.count("amp auto:") == 1  # settled once, for the width and the run
    # Spent, not left over: the process ran for most of its 30 s (Python's start-up and the
    # curves it draws after training lie outside the budget, which counts from main's start).
    assert 0.7 * 30 <= result.wall_seconds <= 30 + 15, result.wall_seconds


def test_test_mode_uses_the_recipes_tta_unless_told_otherwise(speed_run):
    data_dir, modeldir, result = speed_run
    assert result.returncode == 0, result.stderr
    default = run_main(["--mode", "test", "--data_dir", data_dir, "--modeldir", modeldir,
                        "--device", "cpu", "--no_download"])
    assert default.returncode == 0, default.stderr
    assert "--tta six: the default" in default.stdout and "config: speed recipe" in default.stdout
    plain = run_main(["--mode", "test", "--data_dir", data_dir, "--modeldir", modeldir,
                      "--device", "cpu", "--no_download", "--tta", "off"])
    assert plain.returncode == 0, plain.stderr
    assert "--tta six" not in plain.stdout


def test_a_resumed_speed_run_keeps_its_width(speed_run, tmp_path):
    """Trained again from its first checkpoint (a real resume, in a copy of the folder), the run
    takes the width and the plan that checkpoint holds: nothing is chosen or planned anew."""
    data_dir, modeldir, result = speed_run
    assert result.returncode == 0, result.stderr
    copy_dir = tmp_path / "model"
    shutil.copytree(modeldir, copy_dir)
    first = checkpoints.read_checkpoint(str(copy_dir / "model-1.ckpt"))["config"]
    flags = speed_flags()
    again = run_main(["--mode", "train", "--recipe", "speed", "--budget_minutes", "0.5",
                      "--data_dir", data_dir, "--modeldir", copy_dir, "--quiet",
                      "--split_index", "100", "--save_interval", "1", "--resume", "1",
                      "--overwrite", *flags])
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout and "width for" not in again.stdout, again.stdout
    assert "amp auto:" not in again.stdout and "budget 0.5 min:" not in again.stdout
    newest = checkpoints.list_checkpoints(str(copy_dir))[-1]
    last = checkpoints.read_checkpoint(checkpoints.find_checkpoint(str(copy_dir), newest))
    assert last["config"]["width_scale"] == first["width_scale"]
    assert last["config"]["amp"] == first["amp"]
    assert newest == first["max_epoch"] == last["config"]["max_epoch"]
