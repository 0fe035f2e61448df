"""--amp auto on a CPU: the precision chosen by timing (trainer.training.precision), stored in
config.json and the checkpoints, kept on resume, and never measured when it is pinned."""
import json
import os

import pytest
import torch

import main
from cifar_files import write_cifar
from cli_tools import TINY
from configure import Config
from trainer.run.checkpoints import read_checkpoint
from Model import MyModel
from trainer.evaluation.evaluate import to_image_tensor
from trainer.training import precision, steps
from test_training import data, tiny_config

# TINY without its "--amp off", which pins the other tests to fp32.
AUTO_TINY = [a for i, a in enumerate(TINY)
             if a != "--amp" and not (i and TINY[i - 1] == "--amp")] + ["--amp", "auto"]


def fake_clock(fp32_steps, bf16_steps):
    """A clock read before and after each step, fp32 and bf16 in turn (a warm-up step of each
    first, which takes 5 s), that makes the timed steps take the given seconds."""
    readings, now = [], 100.0
    for pair in [(5.0, 5.0)] + list(zip(fp32_steps, bf16_steps)):
        for seconds in pair:
            readings += [now, now + seconds]
            now += seconds + 7.0  # time passes between steps too
    return iter(readings).__next__


def tiny(tmp_path) -> MyModel:
    return MyModel(tiny_config(tmp_path, amp="auto"), log=lambda *a: None)


def batch(n: int = 16):
    x, y = data(n)
    return to_image_tensor(x), torch.as_tensor(y, dtype=torch.int64)


@pytest.mark.parametrize("fp32, bf16, expected", [
    ([0.30, 0.10, 0.32], [0.20, 0.05, 0.90], "bf16"),  # medians 0.20 vs 0.30: clearly faster
    ([0.30, 0.10, 0.32], [0.27, 0.05, 0.90], "off"),  # 0.27 vs 0.30: within 15%, a near tie
    ([0.30, 0.10, 0.32], [0.90, 0.05, 1.20], "off"),  # 0.90 vs 0.30: slower
])
def test_the_choice_follows_the_median_step_times(tmp_path, fp32, bf16, expected):
    images, labels = batch()
    choice = precision.choose(tiny(tmp_path), images, labels, steps=3,
                              clock=fake_clock(fp32, bf16))
    assert choice.amp == expected
    assert choice.fp32_seconds == pytest.approx(0.30)
    assert choice.bf16_seconds == pytest.approx(sorted(bf16)[1])


def test_each_precision_times_the_runs_own_step_in_that_precision(tmp_path, monkeypatch):
    model = tiny(tmp_path)
    seen = []
    original = steps.train_step

    def spy(m, x, y, global_batch=None):
        seen.append(m.runtime.amp_dtype)
        return original(m, x, y, global_batch)

    monkeypatch.setattr(steps, "train_step", spy)
    images, labels = batch()
    precision.choose(model, images, labels, steps=2)
    assert seen == [None, torch.bfloat16] * 3  # a warm-up of each, then two of each in turn
    assert model.config.amp == "auto" and model.runtime.amp_dtype is None  # as it was


def test_choosing_leaves_the_weights_and_the_random_state_alone(tmp_path):
    model = tiny(tmp_path)
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    images, labels = batch()
    torch.manual_seed(5)
    expected_draw = torch.rand(4)
    torch.manual_seed(5)
    precision.choose(model, images, labels, steps=2)
    assert torch.equal(torch.rand(4), expected_draw)
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def test_settling_sets_the_run_and_says_so(tmp_path):
    lines = []
    model = MyModel(tiny_config(tmp_path, amp="auto"), log=lines.append)
    images, labels = batch()
    choice = precision.settle(model, images, labels, clock=fake_clock([0.3] * 3, [0.1] * 3))
    assert choice.amp == "bf16" and model.config.amp == "bf16"
    assert model.runtime.amp_dtype == torch.bfloat16 == model.amp_dtype
    assert lines == ["amp auto: bf16 0.100 s/step, fp32 0.300 s/step on this CPU -> bf16 "
                     "(--amp bf16)"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("precision") / "data")
    write_cifar(folder, n_per_batch=8, n_test=4, seed=0)
    return folder


def train(data_dir, modeldir, *extra) -> None:
    flags = AUTO_TINY + ["--data_dir", data_dir, "--modeldir", str(modeldir), "--split_index",
                         "32", "--lr_decay_epochs", "--save_interval", "1", "--quiet"]
    assert main.main(flags + list(extra)) == 0


def stored_amp(modeldir, epoch: int):
    """(config.json's amp, model-<epoch>.ckpt's amp)."""
    with open(os.path.join(modeldir, "config.json")) as f:
        recorded = json.load(f)["config"]["amp"]
    ckpt = read_checkpoint(os.path.join(modeldir, f"model-{epoch}.ckpt"))
    return recorded, ckpt["config"]["amp"]


def test_a_new_cpu_run_with_amp_auto_measures_and_stores_its_choice(data_dir, tmp_path, capsys):
    train(data_dir, tmp_path / "m", "--max_epoch", "1")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("amp auto:")]
    assert len(lines) == 1, out
    assert "s/step" in lines[0] and "--amp " in lines[0]
    recorded, saved = stored_amp(tmp_path / "m", 1)
    assert recorded == saved and saved in ("bf16", "off")
    assert lines[0].endswith(f"(--amp {saved})")


def test_a_resume_with_amp_auto_keeps_the_stored_precision(data_dir, tmp_path, capsys):
    train(data_dir, tmp_path / "m", "--max_epoch", "1", "--amp", "bf16")
    capsys.readouterr()
    train(data_dir, tmp_path / "m", "--max_epoch", "2", "--resume")  # --amp auto
    out = capsys.readouterr().out
    assert "amp auto:" not in out and "resuming from" in out
    assert stored_amp(tmp_path / "m", 2) == ("bf16", "bf16")
    # Testing with --amp auto does not measure either.
    assert main.main(["--mode", "test", "--checkpoints", "2", "--data_dir", data_dir,
                      "--modeldir", str(tmp_path / "m"), *AUTO_TINY]) == 0
    assert "amp auto:" not in capsys.readouterr().out


def test_a_pinned_amp_is_not_measured(data_dir, tmp_path, capsys):
    train(data_dir, tmp_path / "m", "--max_epoch", "1", "--amp", "off")
    assert "amp auto:" not in capsys.readouterr().out
    assert stored_amp(tmp_path / "m", 1) == ("off", "off")
