"""Training options beyond the course recipe: learning-rate schedules with warm-up, Nesterov, no
decay on batch norm and biases, label smoothing, the weight average (--ema), flip TTA, recipes and
the time budget."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ImageUtils
import Model
from trainer.training import budget_plan
from trainer.run import checkpoints
import main
from trainer.training import schedules
from cli_tools import TINY, assert_same_training_state, load, run_main
from cifar_files import write_cifar
from configure import RECIPE_FAST, Config, ConfigError
from trainer.training.ema import WeightAverage
from Model import MyModel, parameter_groups
from NetWork import build_network
from test_training import data, pause_at_last_step_then_sigint, state_of, tiny_config, tiny_model


def schedule(**values) -> Config:
    return Config(**dict(dict(learning_rate=0.1, max_epoch=6, lr_decay_epochs=()), **values))


# --------------------------------------------------------------------------------------------
# Schedules, against values worked out by hand

@pytest.mark.parametrize("values, epoch, step, expected", [
    # step: 0.1, times 0.1 after epochs 2 and 4
    (dict(lr_decay_epochs=(2, 4)), 1, 0, 0.1),
    (dict(lr_decay_epochs=(2, 4)), 3, 5, 0.01),
    (dict(lr_decay_epochs=(2, 4)), 5, 9, 0.001),
    # step with one warm-up epoch of 10 steps: (g + 1) / 10 of the rate
    (dict(lr_decay_epochs=(2, 4), warmup_epochs=1.0), 1, 0, 0.01),
    (dict(lr_decay_epochs=(2, 4), warmup_epochs=1.0), 1, 4, 0.05),
    (dict(lr_decay_epochs=(2, 4), warmup_epochs=1.0), 2, 0, 0.1),
    # cosine over G = 40 steps from 0.2
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4), 1, 0, 0.2),
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4), 2, 0, 0.1 * (1 + math.sqrt(0.5))),
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4), 3, 0, 0.1),
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4), 4, 9,
     0.1 * (1 + math.cos(math.pi * 39 / 40))),
    # cosine after a warm-up of W = 10 steps: over the remaining 30
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4, warmup_epochs=1.0), 1, 4, 0.1),
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4, warmup_epochs=1.0), 2, 0, 0.2),
    (dict(lr_schedule="cosine", learning_rate=0.2, max_epoch=4, warmup_epochs=1.0), 3, 5, 0.1),
    # one-cycle, 100 steps, rising over W = 20 to 0.4, then falling over 80 to 0
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10, warmup_epochs=2.0), 1, 0, 0.02),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10, warmup_epochs=2.0), 1, 9, 0.2),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10, warmup_epochs=2.0), 2, 9, 0.4),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10, warmup_epochs=2.0), 3, 0, 0.4),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10, warmup_epochs=2.0), 7, 0, 0.2),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10, warmup_epochs=2.0), 10, 9, 0.005),
    # one-cycle with no warm-up given rises over 30% of the run: W = 30
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10), 2, 4, 0.2),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10), 3, 9, 0.4),
    (dict(lr_schedule="onecycle", learning_rate=0.4, max_epoch=10), 7, 0, 0.4 * 40 / 70),
])
def test_schedules_give_the_hand_computed_rates(values, epoch, step, expected):
    assert schedules.lr_at_step(schedule(**values), epoch, step, 10) == pytest.approx(expected,
                                                                                      rel=1e-12)


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle"])
def test_a_fractional_warm_up_never_overshoots_the_rate(name):
    config = schedule(lr_schedule=name, max_epoch=2, warmup_epochs=0.6)  # W = 1.2 of 2 steps
    rates = [schedules.lr_at_step(config, e, s, 2) for e in (1, 2) for s in (0, 1)]
    assert max(rates) <= 0.1 + 1e-15, rates
    assert rates[0] == pytest.approx(0.1 / 1.2)


def test_training_sets_the_scheduled_rate_at_every_step(tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    x, y = data(16)  # 2 steps per epoch
    history = tiny_model(tmp_path, lr_schedule="onecycle", max_epoch=3, warmup_epochs=1.0,
                         learning_rate=0.3).train(x, y)
    # W = 2 of G = 6 steps: 0.15, 0.3, then 0.3 * (6 - g) / 4 for g = 2..5
    assert seen == pytest.approx([0.15, 0.3, 0.3, 0.225, 0.15, 0.075], rel=1e-12)
    assert [m["lr"] for m in history] == pytest.approx([0.3, 0.225, 0.075], rel=1e-12)


@pytest.mark.parametrize("values", [dict(lr_schedule="cosine", warmup_epochs=0.5),
                                    dict(lr_schedule="onecycle"),
                                    dict(lr_schedule="onecycle", warmup_epochs=1.0, ema=0.9,
                                         nesterov=True, label_smoothing=0.1,
                                         no_decay_bn_bias=True)])
def test_resume_in_the_middle_of_a_schedule_is_bit_exact(tmp_path, monkeypatch, values):
    x, y = data(32)  # 4 steps per epoch
    straight = tiny_model(tmp_path / "straight", max_epoch=3, **values)
    straight.train(x, y)

    pause_at_last_step_then_sigint(monkeypatch, 2, 1)  # stopped after step 2 of epoch 2
    with pytest.raises(Model.TrainingStopped):
        tiny_model(tmp_path / "split", max_epoch=3, **values).train(x, y)
    assert load(tmp_path / "split" / "model" / checkpoints.INTERRUPTED)["step"] == 2
    monkeypatch.delenv(Model.PAUSE_ENV)
    resumed = tiny_model(tmp_path / "split", max_epoch=3, **values)
    resumed.train(x, y, resume="latest")

    a, b = (load(tmp_path / run / "model" / "model-3.ckpt") for run in ("straight", "split"))
    assert_same_training_state(a, b)
    if values.get("ema"):
        for k in a["ema"]:
            assert torch.equal(a["ema"][k], b["ema"][k]), f"weight average {k} differs"


def test_resuming_a_fast_run_without_its_recipe_names_the_recipe(tmp_path):
    x, y = data(16)
    tiny_model(tmp_path, recipe="fast", lr_schedule="onecycle", max_epoch=3).train(x, y)
    with pytest.raises(checkpoints.CheckpointError, match="trained with --recipe fast"):
        tiny_model(tmp_path, max_epoch=3).train(x, y, resume="latest")


def test_resuming_a_one_cycle_run_with_another_length_is_refused(tmp_path):
    x, y = data(16)
    tiny_model(tmp_path, lr_schedule="onecycle", max_epoch=2).train(x, y)
    with pytest.raises(checkpoints.CheckpointError, match="pass --max_epoch 2"):
        tiny_model(tmp_path, lr_schedule="onecycle", max_epoch=4).train(x, y, resume="latest")


# --------------------------------------------------------------------------------------------
# Optimizer options and the objective

def _expected_exempt(network) -> set:
    """Names of the batch-norm parameters and of every bias, found by module type and name."""
    names = set()
    for module_name, module in network.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) or name == "bias":
                names.add(full)
    return names


@pytest.mark.parametrize("network", ["resnet", "simple_cnn", "resnet18"])
def test_no_decay_groups_hold_exactly_the_batch_norm_and_bias_parameters(network):
    net = build_network(network, 1, 1, 10, 4, batch_norm=True)
    names = {id(p): n for n, p in net.named_parameters()}
    decay, exempt = parameter_groups(net, 5e-4, no_decay_bn_bias=True)
    assert {names[id(p)] for p in exempt["params"]} == _expected_exempt(net)
    assert len(exempt["params"]) > 0 and exempt["weight_decay"] == 0.0
    assert decay["weight_decay"] == 5e-4
    assert all(p.dim() > 1 for p in decay["params"])  # only convolution and linear weights
    assert len(decay["params"]) + len(exempt["params"]) == len(names)


def test_without_the_flag_every_parameter_is_decayed(tmp_path):
    model = tiny_model(tmp_path, weight_decay=3e-4)
    (group,) = model.optimizer.param_groups
    assert group["weight_decay"] == 3e-4 and not group["nesterov"]
    assert len(group["params"]) == len(list(model.network.parameters()))


def test_no_decay_leaves_batch_norm_weights_undecayed_in_a_step(tmp_path):
    # With zero gradients (lr > 0, momentum 0) only weight decay moves a parameter.
    model = tiny_model(tmp_path, no_decay_bn_bias=True, weight_decay=0.1, momentum=0.0)
    before = {n: p.detach().clone() for n, p in model.network.named_parameters()}
    for p in model.network.parameters():
        p.grad = torch.zeros_like(p)
    model.optimizer.step()
    exempt = _expected_exempt(model.network)
    for n, p in model.network.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        assert moved == (n not in exempt), n


def test_nesterov_reaches_the_optimizer(tmp_path):
    model = tiny_model(tmp_path, nesterov=True, no_decay_bn_bias=True)
    assert all(g["nesterov"] for g in model.optimizer.param_groups)


def test_label_smoothing_objective_is_the_smoothed_cross_entropy(tmp_path):
    model = tiny_model(tmp_path, label_smoothing=0.2)
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 9, 1, 1, 5])
    objective, reported = model.objective(logits, y)
    log_p = logits.log_softmax(1)
    by_hand = (0.8 * -log_p[torch.arange(6), y] + 0.2 * -log_p.mean(1)).mean()
    assert objective.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert objective.item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.2).item(), rel=1e-6)
    assert reported.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert objective.item() != pytest.approx(reported.item(), rel=1e-3)


# --------------------------------------------------------------------------------------------
# The weight average

def test_weight_average_follows_the_update_by_hand():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(net, 0.75)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    history = []
    for i in range(2):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(float(i + 1))
        net.train()(torch.randn(4, 3))  # moves the running statistics and the batch count
        history.append({k: v.clone() for k, v in net.state_dict().items()})
        average.update(net)
    got = average.state_dict()
    for k, v in start.items():
        if v.is_floating_point():
            expected = 0.75 * (0.75 * v + 0.25 * history[0][k]) + 0.25 * history[1][k]
            assert torch.allclose(got[k], expected, rtol=1e-6, atol=1e-7), k
        else:
            assert torch.equal(got[k], history[1][k]), k  # num_batches_tracked is copied


def test_ema_run_keeps_both_weight_sets_and_evaluates_with_the_average(tmp_path):
    x, y = data(8)  # one step
    model = tiny_model(tmp_path, ema=0.5, max_epoch=1)
    start = state_of(model)
    model.train(x, y, x, y)
    ckpt = load(tmp_path / "model" / "model-1.ckpt")
    final = state_of(model)
    for k, v in start.items():
        assert torch.equal(ckpt["model"][k], final[k])
        if v.is_floating_point():
            assert torch.allclose(ckpt["ema"][k], 0.5 * v + 0.5 * final[k], rtol=1e-6,
                                  atol=1e-7), k
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in start)

    # Validation during training, and test or predict from the checkpoint, use the average.
    plain = tiny_model(tmp_path / "plain", max_epoch=1)
    plain.network.load_state_dict(ckpt["ema"])
    assert model.history[0]["valid_loss"] == pytest.approx(plain.validate(x, y)[1], rel=1e-6)
    tester = tiny_model(tmp_path, ema=0.5, max_epoch=1)
    tester.load(1)
    np.testing.assert_allclose(tester.predict_prob(x), plain.predict_prob(x), rtol=1e-6)


def test_resuming_with_ema_from_a_checkpoint_without_one_is_refused(tmp_path):
    x, y = data(8)
    tiny_model(tmp_path, max_epoch=1).train(x, y)
    with pytest.raises(checkpoints.CheckpointError, match="ema"):
        tiny_model(tmp_path, ema=0.9, max_epoch=2).train(x, y, resume="latest")


# --------------------------------------------------------------------------------------------
# Flip TTA

def test_flip_tta_is_the_mean_of_two_explicit_forward_passes(tmp_path):
    x, _ = data(12)
    model = tiny_model(tmp_path, tta="flip")
    model.network.eval()
    standardized = ImageUtils.preprocess_batch(torch.from_numpy(x).view(-1, 3, 32, 32), False)
    with torch.no_grad():
        p = model.network(standardized).softmax(1)
        q = model.network(standardized.flip(3)).softmax(1)
    expected = ((p + q) / 2).numpy()
    np.testing.assert_allclose(model.predict_prob(x), expected, rtol=1e-4, atol=1e-6)
    without = tiny_model(tmp_path).predict_prob(x)
    assert not np.allclose(without, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Recipes and flags

def test_the_fast_recipe_sets_its_values_and_explicit_flags_win():
    config = Config(recipe="fast", learning_rate=0.05).apply_recipe(explicit={"learning_rate"})
    assert config.learning_rate == 0.05
    for key, value in RECIPE_FAST.items():
        if key != "learning_rate":
            assert getattr(config, key) == value, key
    assert Config().apply_recipe() == Config()  # course: the defaults themselves


def test_the_command_line_applies_the_recipe(tmp_path):
    data_dir = str(tmp_path / "data")
    write_cifar(data_dir, n_per_batch=8, n_test=8)
    r = run_main(["--mode", "train", "--data_dir", data_dir, "--modeldir", str(tmp_path / "m"),
                  *TINY, "--split_index", "32", "--recipe", "fast", "--max_epoch", "3",
                  "--weight_decay", "1e-4"])
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "m" / "config.json") as f:
        saved = json.load(f)["config"]
    for key, value in {"lr_schedule": "onecycle", "nesterov": True, "label_smoothing": 0.1,
                       "weight_decay": 1e-4, "max_epoch": 3, "recipe": "fast"}.items():
        assert saved[key] == value, key
    # The start line names the recipe for its values and lists only the flags that override it.
    words = r.stdout.splitlines()[0].split()
    assert words[:3] == ["config:", "fast", "recipe"], words
    assert "weight_decay=0.0001" in words and "max_epoch=3" in words
    assert not any(w.startswith(("lr_schedule=", "nesterov=", "recipe=")) for w in words)
    assert "amp=off" in words  # TINY pins fp32: a flag given, so listed


@pytest.mark.parametrize("flags, named", [
    (["--mode", "train", "--tta", "flip"], "--tta"),
    (["--budget_minutes", "5", "--max_epoch", "3"], "--budget_minutes"),
    (["--warmup_epochs", "3", "--max_epoch", "3"], "--warmup_epochs"),
    (["--nesterov", "--momentum", "0"], "--nesterov"),
    (["--label_smoothing", "1"], "--label_smoothing"),
    (["--ema", "1"], "--ema"),
    (["--budget_minutes", "-1"], "--budget_minutes"),
    (["--budget_minutes", "1e308"], "--budget_minutes"),  # finite, but no plan can count it
])
def test_unusable_option_values_are_refused_by_name(flags, named, capsys):
    with pytest.raises(SystemExit) as exited:
        main.main(flags + ["--device", "cpu", "--data_dir", "/nonexistent"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_config_refuses_bad_values_directly():
    with pytest.raises(ConfigError, match="--lr_schedule"):
        Config(lr_schedule="linear").validate()
    with pytest.raises(ConfigError, match="--recipe"):
        Config(recipe="quick").apply_recipe()


# --------------------------------------------------------------------------------------------
# The time budget

@pytest.mark.parametrize("seconds, spent, train, valid, save, expected", [
    # 570 * 0.98 = 558.6 left: 9 whole epochs of 56 s (504 s), then 54.6 - 6 = 48.6 s of training
    # of the tenth, 0.972 of its 50 s
    (600, 30, 50, 5, 1, 9.972),
    (600, 30, 50, 4, 0, 10.292),   # 10 whole (540 s), then 18.6 - 4 = 14.6 s of 50
    (1800, 20, 80, 3, 0.5, 20.886),  # 1744.4 - 20 * 83.5 = 74.4, less 3.5: 70.9 s of 80
    (60, 50, 100, 0, 0, 0.098),    # 9.8 s of a 100 s epoch
    (60, 70, 100, 0, 0, 0.0),      # nothing is left
])
def test_budget_planner_gives_the_expected_epoch_count(seconds, spent, train, valid, save,
                                                       expected):
    assert budget_plan.plan_epochs(seconds, spent, train, valid, save) == pytest.approx(expected)


@pytest.mark.parametrize("epochs, frm, to, expected", [
    ((100, 150), 200, 15, (8, 11)),
    ((5, 8), 10, 4, (2, 3)),
    ((8, 12), 15, 3, (2,)),    # 2 and 2 collide; the second moves to 3, the run's end: dropped
    ((1, 2), 10, 2, (1,)),
])
def test_decay_epochs_are_stretched_to_the_planned_run(epochs, frm, to, expected):
    assert budget_plan.stretch_decay_epochs(epochs, frm, to) == expected


def test_a_budget_run_trains_the_planned_epochs(tmp_path, monkeypatch):
    calls = []

    def plan(seconds, spent, train, valid, save=0.0, margin=0.02):
        calls.append((seconds, spent, train, valid, save))
        return 4 - len(calls)  # 3, then after each epoch the epochs left, as planned

    monkeypatch.setattr(budget_plan, "plan_epochs", plan)
    x, y = data(16)
    lines = []
    model = MyModel(tiny_config(tmp_path, budget_minutes=2.0, max_epoch=20, lr_decay_epochs=(10, 15)),
                    log=lines.append)
    history = model.train(x, y, x[:8], y[:8])
    (seconds, spent, train, valid, save), *replanned = calls
    assert seconds == 120 and 0 <= spent < 120 and train > 0 and valid > 0 and save > 0
    assert len(replanned) == 2  # after epochs 1 and 2, not after the last
    assert all(r[0] == 120 for r in replanned)
    assert spent < replanned[0][1] < replanned[1][1] < 120  # each after its epoch's time
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert model.config.max_epoch == 3 and model.config.lr_decay_epochs == (2,)  # 1.5 and 2.25
    assert any(line.startswith("budget 2 min:") and "3 epochs" in line for line in lines), lines
    ckpt = load(tmp_path / "model" / "model-3.ckpt")
    assert ckpt["config"]["max_epoch"] == 3 and ckpt["config"]["lr_decay_epochs"] == [2]

    # Resumed with the same flags, the run keeps its plan instead of planning anew.
    again = MyModel(tiny_config(tmp_path, budget_minutes=2.0, max_epoch=20, lr_decay_epochs=(10, 15)),
                    log=lines.append)
    again.train(x, y, x[:8], y[:8], resume="latest")
    assert len(calls) == 3 and again.config.max_epoch == 3


def test_a_budget_run_replans_after_its_first_epoch_and_spends_a_share_of_the_last(
        tmp_path, monkeypatch):
    """The first plan (3 epochs) is replaced once epoch 1's real time is known (3.5 more), and
    kept after the later epochs (2.5, 1.5, 0.5 more): the run trains 4 whole epochs and half of
    a fifth, and its checkpoints hold that plan."""
    answers = iter([3.0, 3.5, 2.5, 1.5, 0.5])
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: next(answers))
    x, y = data(32)  # batch 8: 4 steps an epoch
    lines = []
    model = MyModel(tiny_config(tmp_path, budget_minutes=2.0, max_epoch=20, lr_schedule="cosine",
                                lr_decay_epochs=(), save_interval=1), log=lines.append)
    history = model.train(x, y, x[:8], y[:8])
    assert [m["epoch"] for m in history] == [1, 2, 3, 4, 5]
    assert model.config.max_epoch == 5 and model.config.final_epoch_share == 0.5
    assert any("epoch 1 took" in line and "4.5 epochs in all" in line for line in lines), lines
    # The last epoch trained 2 of its 4 steps: its last step is step 17 of 18. The cosine had
    # fallen 4/12 of the way when the plan grew from 12 to 18 steps after epoch 1; it goes on
    # from there, over the 14 steps left: at step 17 it is 1/3 + 2/3 * 13/14 of the way down
    # (had the last epoch trained all 4 steps, the rate would have reached 0).
    lr = model.config.learning_rate
    fall = 1 / 3 + 2 / 3 * 13 / 14
    assert history[-1]["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * fall)))
    assert model.config.plan_anchor == pytest.approx((4, 4 / 12, 1.0, 4 / 12))
    ckpt = load(tmp_path / "model" / "model-5.ckpt")
    assert ckpt["config"]["max_epoch"] == 5 and ckpt["config"]["final_epoch_share"] == 0.5
    recorded = json.loads((tmp_path / "model" / "config.json").read_text())["config"]
    assert recorded["max_epoch"] == 5 and recorded["final_epoch_share"] == 0.5
    assert load(tmp_path / "model" / "model-1.ckpt")["config"]["max_epoch"] == 5


def test_a_fractional_last_epoch_trains_its_share_of_the_steps():
    cfg = Config(max_epoch=3, final_epoch_share=0.3)
    assert schedules.epoch_steps(cfg, 2, 10) == 10 and schedules.epoch_steps(cfg, 3, 10) == 3
    assert schedules.total_steps(cfg, 10) == 23
    assert schedules.epoch_steps(Config(max_epoch=1, final_epoch_share=0.01), 1, 10) == 1
    assert budget_plan.split_epochs(4.5) == (5, 0.5) and budget_plan.split_epochs(4.0) == (4, 1.0)
    assert budget_plan.split_epochs(0.25) == (1, 0.25)


def test_a_budget_too_small_for_the_warm_up_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: 2)
    x, y = data(16)
    with pytest.raises(ConfigError, match="--budget_minutes"):
        tiny_model(tmp_path, budget_minutes=1.0, max_epoch=10, lr_schedule="onecycle",
                   warmup_epochs=2.0).train(x, y)


def test_a_warm_up_from_the_recipe_scales_with_the_plan():
    cfg = Config(recipe="fast", lr_decay_epochs=()).apply_recipe(explicit={"lr_decay_epochs"})
    assert cfg.max_epoch == 15 and cfg.warmup_epochs == 2.0
    changes = budget_plan.planned_changes(cfg, 3, 10.0)
    assert changes["max_epoch"] == 3
    assert changes["warmup_epochs"] == pytest.approx(2.0 * 3 / 15)  # the same share of the run
    # Given explicitly, the warm-up is the user's: a plan it fills is refused, naming it.
    explicit = Config(recipe="fast", warmup_epochs=2.0).apply_recipe(explicit={"warmup_epochs"})
    with pytest.raises(ConfigError, match="--warmup_epochs 2"):
        budget_plan.planned_changes(explicit, 2, 10.0)
    assert budget_plan.planned_changes(explicit, 3, 10.0)["max_epoch"] == 3


def test_a_plan_without_one_whole_epoch_is_refused():
    with pytest.raises(ConfigError, match="no time for one epoch"):
        budget_plan.planned_changes(Config(budget_minutes=0.01), 0, 42.0)
