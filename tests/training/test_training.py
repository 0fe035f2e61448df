"""Training and evaluation in process: learning, determinism, schedule, checkpoints written while
training, resume, flags refused, hardware, evaluation."""
import math
import os
import random
import re
import signal
import time

import numpy as np
import pytest
import torch

import Model
from trainer.run import checkpoints
from trainer.training import stop_requests
from cifar_files import make_batch
from configure import Config, ConfigError
from trainer.training.batches import batch_slices, epoch_plan
from trainer.training import schedules
from Model import MyModel, select_device
from trainer.evaluation.evaluate import logits as logits_of
from trainer.run import state
from trainer.training.runtime import Runtime


def tiny_config(tmp_path, **overrides) -> Config:
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=2, save_interval=100,
                  lr_decay_epochs=(), device="cpu", modeldir=str(tmp_path / "model"),
                  eval_batch_size=64, amp="off")  # fp32: --amp auto would time bf16
    values.update(overrides)
    return Config(**values)


def tiny_model(tmp_path, **overrides) -> MyModel:
    return MyModel(tiny_config(tmp_path, **overrides), log=lambda *a: None)


def data(n: int, seed: int = 0):
    return make_batch(n, np.random.default_rng(seed))


def state_of(model: MyModel) -> dict:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# --------------------------------------------------------------------------------------------
# Learning

def test_loss_falls_on_a_learnable_set(tmp_path):
    x, y = data(64)
    history = tiny_model(tmp_path, first_num_filters=8, max_epoch=6).train(x, y)
    assert [m["epoch"] for m in history] == [1, 2, 3, 4, 5, 6]
    losses = [m["train_loss"] for m in history]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert history[-1]["train_acc"] > history[0]["train_acc"]


def test_overfits_one_batch(tmp_path):
    x, y = data(16, seed=1)
    model = tiny_model(tmp_path, first_num_filters=8, batch_size=16, max_epoch=60)
    history = model.train(x, y)
    assert history[-1]["train_acc"] == 1.0
    assert history[-1]["train_loss"] < 0.05, history[-1]
    # The network in evaluation mode (running BN statistics, no augmentation) knows the batch too.
    assert model.accuracy(x, y) == 1.0


def test_seeded_runs_are_bit_identical_and_seeds_differ(tmp_path):
    x, y = data(32)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = tiny_model(tmp_path / name, seed=seed)
        history = model.train(x, y)
        runs[name] = (state_of(model), [m["train_loss"] for m in history])
    (a, loss_a), (b, loss_b), (c, loss_c) = runs["a"], runs["b"], runs["c"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loss_a == loss_b
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert loss_a != loss_c


# --------------------------------------------------------------------------------------------
# Schedule and epoch plans

def lr_at(config: Config, epoch: int) -> float:
    """The step schedule's rate of an epoch (its first step, with no warm-up)."""
    return schedules.lr_at_step(config, epoch, 0, 1)


@pytest.mark.parametrize("epoch, expected", [(1, 0.1), (2, 0.1), (3, 0.01), (4, 0.01), (5, 0.001),
                                             (200, 0.001)])
def test_lr_at_decays_after_each_decay_epoch(epoch, expected):
    config = Config(learning_rate=0.1, lr_decay_epochs=(2, 4), lr_decay_factor=0.1)
    assert lr_at(config, epoch) == pytest.approx(expected, rel=1e-12)


def test_lr_at_without_decay_epochs_is_constant():
    config = Config(learning_rate=0.05, lr_decay_epochs=())
    assert {lr_at(config, e) for e in (1, 10, 1000)} == {0.05}


def test_training_uses_the_schedule(tmp_path):
    x, y = data(16)
    model = tiny_model(tmp_path, max_epoch=5, lr_decay_epochs=(2, 4), batch_size=16)
    history = model.train(x, y)
    assert [m["lr"] for m in history] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_epoch_plan_is_a_deterministic_function_of_seed_and_epoch():
    n = 50
    order, offsets, flips = epoch_plan(n, 3, 7)
    again = epoch_plan(n, 3, 7)
    for a, b in zip((order, offsets, flips), again):
        assert torch.equal(a, b)
    assert sorted(order.tolist()) == list(range(n))
    assert offsets.shape == (n, 2) and int(offsets.min()) >= 0 and int(offsets.max()) <= 8
    assert flips.shape == (n,) and flips.dtype == torch.bool
    assert not torch.equal(epoch_plan(n, 4, 7)[0], order)  # another epoch
    assert not torch.equal(epoch_plan(n, 3, 8)[0], order)  # another seed


LARGEST_SEED = 2 ** 63 - 1  # the top of the documented range (torch takes signed 64-bit seeds)


@pytest.mark.parametrize("seed", [0, LARGEST_SEED])
def test_seeds_of_the_documented_range_are_accepted(seed):
    assert Config(seed=seed).validate().seed == seed


@pytest.mark.parametrize("seed", [-1, LARGEST_SEED + 1])
def test_seeds_outside_the_documented_range_are_refused(seed):
    with pytest.raises(ConfigError, match="--seed"):
        Config(seed=seed).validate()


def test_epoch_plans_of_the_largest_seeds_exist_and_differ():
    n = 50
    top, below = epoch_plan(n, 1, LARGEST_SEED), epoch_plan(n, 1, LARGEST_SEED - 1)
    assert sorted(top[0].tolist()) == list(range(n))
    assert not torch.equal(top[0], below[0])
    assert not torch.equal(epoch_plan(n, 2, LARGEST_SEED)[0], top[0])  # and epochs still differ


def test_a_model_with_the_largest_seed_trains(tmp_path):
    x, y = data(8)
    history = tiny_model(tmp_path, seed=LARGEST_SEED, max_epoch=1).train(x, y)
    assert [m["epoch"] for m in history] == [1] and math.isfinite(history[0]["train_loss"])


@pytest.mark.parametrize("n, batch_size", [(20, 4), (17, 4), (9, 8), (3, 8)])
def test_one_process_takes_every_position_in_order(n, batch_size):
    # The shares of several processes are tested in test_distributed.py.
    slices = batch_slices(n, batch_size)
    assert torch.cat(slices).tolist() == list(range(n))
    assert [len(s) for s in slices[:-1]] == [batch_size] * (len(slices) - 1)


# --------------------------------------------------------------------------------------------
# Checkpoints written while training

@pytest.mark.parametrize("save_interval, max_epoch, expected", [(3, 7, [3, 6, 7]), (3, 6, [3, 6]),
                                                                 (10, 4, [4])])
def test_checkpoints_are_written_every_save_interval_and_at_the_last_epoch(
        tmp_path, save_interval, max_epoch, expected):
    x, y = data(8)
    model = tiny_model(tmp_path, save_interval=save_interval, max_epoch=max_epoch)
    model.train(x, y)
    modeldir = model.config.modeldir
    assert checkpoints.list_checkpoints(modeldir) == expected
    assert checkpoints.run_files(modeldir) == sorted(f"model-{e}.ckpt" for e in expected)
    for epoch in expected:
        assert checkpoints.read_checkpoint(checkpoints.checkpoint_path(modeldir, epoch))["epoch"] \
            == epoch


# --------------------------------------------------------------------------------------------
# Resume

def seed_global_generators(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


GENERATORS = ("python", "numpy", "torch")  # in the order of one_draw_of_each_generator


def one_draw_of_each_generator() -> tuple:
    return random.random(), float(np.random.random()), torch.rand(1).item()


def drawing_every_step(monkeypatch) -> list:
    """Make every training step also draw from the Python, numpy and torch global generators (as
    user code or a later feature might); return the list the draws are appended to."""
    draws = []
    real_images = Runtime.prepare_images

    def images_and_draws(self, x, training, offsets=None, flips=None):
        if training:
            draws.append(one_draw_of_each_generator())
        return real_images(self, x, training, offsets, flips)

    monkeypatch.setattr(Runtime, "prepare_images", images_and_draws)
    return draws


def test_resume_restores_the_global_random_generators(tmp_path, monkeypatch):
    # Training itself draws nothing from the global generators and MyModel seeds torch's anew, so
    # only a run that draws from them, as this one does at every step, can see their restoring.
    x, y = data(16)  # 2 steps per epoch
    draws = drawing_every_step(monkeypatch)
    seed_global_generators(1)
    tiny_model(tmp_path / "straight", max_epoch=2).train(x, y)
    straight = draws + [one_draw_of_each_generator()]
    assert len(straight) == 5

    draws.clear()
    seed_global_generators(1)
    tiny_model(tmp_path / "split", max_epoch=1, save_interval=1).train(x, y)
    assert draws == straight[:2]
    draws.clear()
    seed_global_generators(99)  # whatever ran in between leaves the generators elsewhere
    tiny_model(tmp_path / "split", max_epoch=2, save_interval=1).train(x, y, resume="latest")
    resumed = draws + [one_draw_of_each_generator()]

    assert len(resumed) == 3
    for i, name in enumerate(GENERATORS):
        assert [d[i] for d in resumed] == [d[i] for d in straight[2:]], \
            f"the {name} generator was not restored on resume"


def pause_at_last_step_then_sigint(monkeypatch, epoch: int, last_step: int) -> None:
    """Stop training with a real SIGINT just before the last step of ``epoch``, so the step runs
    and interrupted.ckpt is written at the epoch's very end."""
    monkeypatch.setenv(Model.PAUSE_ENV, f"{epoch}:{last_step}")

    def sigint_and_wait(stop, epoch, step):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10
        while stop.signum is None:
            assert time.monotonic() < deadline, "SIGINT never reached the handler"
            time.sleep(0.01)

    monkeypatch.setattr(stop_requests, "wait_for_signal", sigint_and_wait)


def test_resume_at_an_epoch_boundary_reports_the_epochs_rate_and_is_exact(tmp_path, monkeypatch):
    x, y = data(16)
    steps = 2  # 16 images in batches of 8
    straight = tiny_model(tmp_path / "straight", max_epoch=2)
    straight_history = straight.train(x, y)

    modeldir = tmp_path / "split"
    pause_at_last_step_then_sigint(monkeypatch, 1, steps - 1)
    with pytest.raises(Model.TrainingStopped) as stopped:
        tiny_model(modeldir, max_epoch=2).train(x, y)
    ckpt = checkpoints.read_checkpoint(stopped.value.path, for_resume=True)
    assert os.path.basename(stopped.value.path) == checkpoints.INTERRUPTED
    assert (ckpt["epoch"], ckpt["step"], ckpt["partial"]["seen"]) == (0, steps, 16)

    monkeypatch.delenv(Model.PAUSE_ENV)
    lines = []
    resumed = MyModel(tiny_config(modeldir, max_epoch=2), log=lines.append)
    history = resumed.train(x, y, resume="latest")
    first = history[0]
    assert first["epoch"] == 1
    assert math.isfinite(first["images_per_second"]) and first["images_per_second"] > 0
    # The epoch's overall rate: its 16 images over all the seconds spent on it, before and after.
    assert first["images_per_second"] == pytest.approx(16 / first["seconds"], rel=1e-6)
    epoch_line = next(line for line in lines if re.match(r"epoch +1/", line))
    assert not re.search(r"(?<![\d.])0 img/s", epoch_line), epoch_line
    assert first["train_loss"] == straight_history[0]["train_loss"]
    assert first["train_acc"] == straight_history[0]["train_acc"]
    a, b = state_of(straight), state_of(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming at the epoch's end"


# --------------------------------------------------------------------------------------------
# Flags refused

@pytest.mark.parametrize("flag, value", [("learning_rate", math.inf), ("learning_rate", math.nan),
                                         ("weight_decay", math.inf), ("momentum", math.nan),
                                         ("lr_decay_factor", math.nan)])
def test_non_finite_optimization_flags_are_refused(flag, value):
    with pytest.raises(ConfigError, match=f"--{flag}\\b"):
        Config(**{flag: value}).validate()


@pytest.mark.parametrize("name", ["meta", "xpu", "cuda:7"])
def test_devices_this_trainer_cannot_use_are_refused(name):
    if name == "xpu" and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    if name == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight CUDA devices")
    with pytest.raises(ConfigError, match="--device"):
        select_device(name)


def test_cpu_device_is_accepted():
    assert select_device("cpu") == torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Hardware options give the same numbers

def test_channels_last_on_and_off_agree(tmp_path):
    x, y = data(32)
    on = tiny_model(tmp_path / "on", channels_last="on")
    off = tiny_model(tmp_path / "off", channels_last="off")
    conv = on.network.start_layer[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert off.network.start_layer[0].weight.is_contiguous()
    torch.testing.assert_close(logits_of(on, x), logits_of(off, x), atol=1e-5, rtol=1e-5)
    on.train(x, y)
    off.train(x, y)
    assert max_difference(state_of(on), state_of(off)) < 1e-4
    torch.testing.assert_close(logits_of(on, x), logits_of(off, x), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_on_cpu_is_close_to_fp32(tmp_path):
    x, y = data(32)
    bf16 = tiny_model(tmp_path / "bf16", amp="bf16", max_epoch=1)
    fp32 = tiny_model(tmp_path / "fp32", amp="off", max_epoch=1)
    assert bf16.amp_dtype == torch.bfloat16 and fp32.amp_dtype is None
    bf16.train(x, y)
    assert np.isfinite(bf16.history[-1]["train_loss"])
    fp32.network.load_state_dict(bf16.network.state_dict())
    low, full = logits_of(bf16, x), logits_of(fp32, x)
    assert low.dtype == torch.float32
    assert not torch.equal(low, full)  # bf16 really ran
    torch.testing.assert_close(low, full, atol=0.1, rtol=0.05)
    top2 = full.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.2  # argmax agreement where fp32 has a clear winner
    assert torch.equal(low.argmax(1)[clear], full.argmax(1)[clear])


def test_compile_gives_the_same_logits(tmp_path):
    x, _ = data(16)
    compiled = tiny_model(tmp_path / "c", compile=True, eval_batch_size=16)
    eager = tiny_model(tmp_path / "e", eval_batch_size=16)
    assert compiled.forward_net is not compiled.network
    torch.testing.assert_close(logits_of(compiled, x), logits_of(eager, x), atol=1e-4, rtol=1e-4)


def test_a_compiled_model_saves_the_plain_networks_names(tmp_path):
    # torch.compile is lazy: nothing is compiled here, so this runs in the default suite.
    compiled = tiny_model(tmp_path / "c", compile=True)
    plain = tiny_model(tmp_path / "p", seed=1)  # other weights, so that loading shows
    plain_names = set(plain.network.state_dict())
    wrapped_names = set(compiled.forward_net.state_dict())
    assert compiled.forward_net is not compiled.network
    assert wrapped_names == {"_orig_mod." + k for k in plain_names}  # what saving it would give

    path = str(tmp_path / "compiled.ckpt")
    state.save(compiled, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert set(saved) == plain_names
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in saved)
    compiled_state = state_of(compiled)
    assert not torch.equal(state_of(plain)["start_layer.0.weight"],
                           compiled_state["start_layer.0.weight"])
    plain.load(path)
    assert all(torch.equal(plain.network.state_dict()[k], compiled_state[k]) for k in plain_names)


@pytest.mark.slow
def test_compile_trains_like_eager_and_saves_plain_names(tmp_path):
    x, y = data(16)
    compiled = tiny_model(tmp_path / "c", compile=True, max_epoch=1, batch_size=16)
    eager = tiny_model(tmp_path / "e", max_epoch=1, batch_size=16)
    compiled.train(x, y)
    eager.train(x, y)
    assert max_difference(state_of(compiled), state_of(eager)) < 1e-4
    ckpt = torch.load(Model.checkpoint_path(compiled.config.modeldir, 1), weights_only=True)
    assert not any(k.startswith("_orig_mod.") or k.startswith("module.") for k in ckpt["model"])


# --------------------------------------------------------------------------------------------
# Evaluation

def test_predict_prob_gives_probability_rows(tmp_path):
    x, y = data(20)
    model = tiny_model(tmp_path, num_classes=10, max_epoch=1)
    model.train(x, y)
    for images in (x, x.astype(np.float32)):
        p = model.predict_prob(images)
        assert isinstance(p, np.ndarray) and p.dtype == np.float32 and p.shape == (20, 10)
        assert (p >= 0).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert np.array_equal(p.argmax(1), logits_of(model, x).argmax(1).numpy())


def hand_standardized(rows: np.ndarray) -> torch.Tensor:
    """(N, 3072) rows -> (N, 3, 32, 32) float32, each image minus its mean over its population
    standard deviation floored at 1/sqrt(3072): written out here, independent of ImageUtils."""
    rows = rows.astype(np.float64)
    mean = rows.mean(axis=1, keepdims=True)
    std = np.maximum(rows.std(axis=1, keepdims=True), 1 / np.sqrt(3072))
    return torch.from_numpy(((rows - mean) / std).astype(np.float32)).reshape(-1, 3, 32, 32)


def test_logits_and_probabilities_match_a_forward_pass_written_out_by_hand(tmp_path):
    x, y = data(20)
    model = tiny_model(tmp_path, max_epoch=1, eval_batch_size=7)  # 3 batches: 7, 7, 6
    model.train(x, y)  # left in training mode, with running statistics that are not the identity
    norms = [m for m in model.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(m.running_mean.abs().max() > 1e-3 for m in norms)

    logits = logits_of(model, x)
    probabilities = model.predict_prob(x)
    with torch.no_grad():
        expected = model.network.eval()(hand_standardized(x))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(probabilities, torch.softmax(expected, dim=1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(model.predict_prob(x.astype(np.float32)), probabilities)


def test_predict_prob_does_not_depend_on_the_rest_of_the_batch(tmp_path):
    x, y = data(20)
    model = tiny_model(tmp_path, max_epoch=1, eval_batch_size=7)
    model.train(x, y)
    np.testing.assert_allclose(model.predict_prob(x)[:5], model.predict_prob(x[:5]), atol=1e-6)


def test_test_or_validate_scores_each_checkpoint(tmp_path):
    x, y = data(24)
    xt, yt = data(20, seed=5)
    trainer = tiny_model(tmp_path, max_epoch=3, save_interval=1)
    trainer.train(x, y)
    lines = []
    evaluator = MyModel(trainer.config, log=lines.append)
    results = evaluator.test_or_validate(xt, yt, [1, 3], "test")
    assert list(results) == [1, 3]
    for num, acc in results.items():
        assert 0.0 <= acc <= 1.0
        assert round(acc * len(yt)) == pytest.approx(acc * len(yt))  # a fraction of the 20 images
        fresh = MyModel(trainer.config, log=lambda *a: None)
        fresh.load(num)
        expected = (fresh.predict_prob(xt).argmax(1) == yt).mean()
        assert acc == pytest.approx(expected)
    assert len(lines) == 2 and "model-1.ckpt" in lines[0] and "model-3.ckpt" in lines[1]


def test_test_or_validate_checks_every_number_before_evaluating(tmp_path):
    x, y = data(16)
    trainer = tiny_model(tmp_path, max_epoch=2, save_interval=1)
    trainer.train(x, y)
    lines = []
    evaluator = MyModel(trainer.config, log=lines.append)
    with pytest.raises(Model.CheckpointError, match=r"no checkpoint 5 .*1, 2"):
        evaluator.test_or_validate(x, y, [1, 5])
    assert lines == []


def test_evaluation_changes_neither_parameters_nor_bn_statistics(tmp_path):
    x, y = data(24)
    model = tiny_model(tmp_path, max_epoch=1)
    model.train(x, y)  # no validation set: the network is left in training mode
    assert model.network.training
    before = state_of(model)
    model.predict_prob(x)
    model.accuracy(x, y)
    after = state_of(model)
    assert any("running_mean" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed during evaluation"
