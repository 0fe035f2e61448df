"""--budget_minutes: the pure plan (trainer.training.budget_plan), a replan that never undoes what
is past (trainer.training.schedules' anchor), and what the budget measures
(trainer.training.budget): the real timing, a replan to zero, resuming, --overwrite."""
import json
import os
import time

import pytest
import torch

import main
from cifar_files import write_cifar
from cli_tools import TINY, load, snapshot
from configure import Config
from Model import MyModel
from trainer.training import budget, budget_plan, schedules
from test_training import data, tiny_config


def planned(cfg: Config, changes: dict) -> Config:
    """cfg with a plan's changes applied (as the training loop applies them)."""
    out = Config(**{k: getattr(cfg, k) for k in cfg.to_dict()})
    out._recipe_keys = getattr(cfg, "_recipe_keys", frozenset())
    for key, value in changes.items():
        setattr(out, key, value)
    return out


def course(max_epoch=200, decays=(100, 150)) -> Config:
    return Config(max_epoch=max_epoch, lr_decay_epochs=decays, budget_minutes=10.0)


# --------------------------------------------------------------------------------------------
# The pure plan

@pytest.mark.parametrize("current, stretched, done, whole, expected", [
    ((6, 10), (8, 11), 7, 15, (6, 11)),  # the case: 6 took place, 10 -> 11
    ((6, 10), (4, 7), 7, 9, (6, 7)),     # shorter: 6 stays; 7, still to come, acts on epoch 8
    ((6, 10), (4, 5), 7, 9, (6, 7)),     # 5 would be past: no earlier than after epoch 7
    ((6, 10), (8, 11), 5, 15, (8, 11)),  # nothing took place yet: both move
    ((6, 10), (5, 6), 9, 10, (6, 9)),    # one epoch left: it still trains at the last rate
    ((3,), (1, 2), 4, 5, (3, 4)),        # a decay the shorter plan had dropped comes back
    ((2, 3), (1, 2), 3, 3, (2,)),        # the run ends now: decays at or past its end go
])
def test_decays_that_took_place_stay_and_later_ones_never_move_into_the_past(
        current, stretched, done, whole, expected):
    assert budget_plan.keep_past_decays(current, stretched, done, whole) == expected


def test_a_replan_of_the_step_schedule_never_trains_an_epoch_at_the_old_rate_again():
    base = course()
    first = planned(base, budget_plan.planned_changes(base, 13, 60.0))
    assert first.lr_decay_epochs == (6, 10)
    for epochs in (15, 9):  # longer, then shorter, after epoch 7
        done = budget_plan.Done(first, 7, 10)
        after = planned(base, budget_plan.replanned(base, done, epochs - 7, 60.0))
        assert after.max_epoch == epochs
        before_rates = [schedules.lr_at_step(first, e, 0, 10) for e in range(1, 8)]
        assert [schedules.lr_at_step(after, e, 0, 10) for e in range(1, 8)] == before_rates
        # epoch 8 goes on at the rate epoch 7 trained at or lower, never 0.1 again
        assert schedules.lr_at_step(after, 8, 0, 10) <= 0.01 + 1e-12
        assert schedules.lr_at_step(after, epochs, 0, 10) == pytest.approx(0.001)


def progress_of(cfg: Config, steps_per_epoch: int) -> list:
    return [schedules.progress(cfg, e, s, steps_per_epoch)
            for e in range(1, cfg.max_epoch + 1)
            for s in range(schedules.epoch_steps(cfg, e, steps_per_epoch))]


def rates_of(cfg: Config, steps_per_epoch: int) -> list:
    return [schedules.lr_at_step(cfg, e, s, steps_per_epoch)
            for e in range(1, cfg.max_epoch + 1)
            for s in range(schedules.epoch_steps(cfg, e, steps_per_epoch))]


@pytest.mark.parametrize("schedule", ["triangle", "onecycle", "cosine"])
@pytest.mark.parametrize("done, new_epochs", [(1, 14), (1, 6.5), (1, 3), (2, 3), (4, 14),
                                              (4, 6.5), (4, 4)])
def test_a_replan_goes_on_from_where_the_run_is(schedule, done, new_epochs):
    """Longer and shorter, during the warm-up (after epoch 1 of 10) and after it (epoch 4), so
    short that the new warm-up would be over already (3 epochs), and to an end at once: the steps already taken keep their rates and progress; from the replan
    on, progress grows steadily to 1 at the new end, the warm-up never starts again and the
    rate never jumps."""
    spe = 10
    base = Config(lr_schedule=schedule, max_epoch=10, learning_rate=1.0, budget_minutes=5.0,
                  lr_decay_epochs=())
    first = planned(base, budget_plan.planned_changes(base, 10, 60.0))
    after = planned(base, budget_plan.replanned(base, budget_plan.Done(first, done, spe),
                                                new_epochs - done, 60.0))
    g0 = done * spe
    # what the run takes: the old plan's steps up to the replan, the new plan's after it
    progress = progress_of(first, spe)[:g0] + progress_of(after, spe)[g0:]
    rates = rates_of(first, spe)[:g0] + rates_of(after, spe)[g0:]
    if after.max_epoch == done:  # nothing more fits: the run ends at the replan
        assert len(progress) == g0
        return
    assert progress_of(after, spe)[g0] == pytest.approx(progress_of(first, spe)[g0])
    assert all(b > a for a, b in zip(progress, progress[1:]))
    last = after.max_epoch, schedules.epoch_steps(after, after.max_epoch, spe)
    assert schedules.progress(after, *last, spe) == pytest.approx(1.0)
    changes = [abs(b - a) for a, b in zip(rates, rates[1:])]
    jump = changes.pop(g0 - 1)  # no jump at the replan: about one step's change, no more
    assert jump <= 1.5 * max(changes) + 1e-12, (jump, max(changes))


def test_the_whitening_bias_and_lookahead_never_go_back_when_the_plan_grows():
    """Stopped at 30% of the run, the bias stays stopped however much the run grows; the
    lookahead decay (a function of progress) never falls."""
    spe = 10
    base = Config(network="airbench", whiten_bias_share=0.3, lr_schedule="triangle",
                  max_epoch=10, budget_minutes=5.0, lr_decay_epochs=())
    first = planned(base, budget_plan.planned_changes(base, 10, 60.0))
    assert schedules.progress(first, 5, 0, spe) >= 0.3  # stopped after epoch 4
    after = planned(base, budget_plan.replanned(base, budget_plan.Done(first, 4, spe), 26, 60.0))
    assert after.max_epoch == 30
    assert all(p >= 0.3 for p in progress_of(after, spe)[4 * spe:])


def test_the_first_plan_and_a_replan_round_alike():
    rt = MyModel(Config(device="cpu", amp="off", resnet_size=1), log=lambda *a: None).runtime
    assert budget.agreed(2.9999999999, rt) == 3.0  # a hair of float error is no thousandth
    assert budget.agreed(2.9994, rt) == 2.999  # rounded down, as plan_epochs rounds shares
    assert budget_plan.in_thousandths(0.1 * 3) == 300


def test_a_replan_that_an_explicit_warm_up_overruns_ends_as_soon_as_the_warm_up_allows():
    base = Config(lr_schedule="cosine", warmup_epochs=3.0, max_epoch=10, budget_minutes=5.0,
                  lr_decay_epochs=())
    first = planned(base, budget_plan.planned_changes(base, 10, 60.0))
    after = budget_plan.replanned(base, budget_plan.Done(first, 1, 10), 1.5, 60.0)
    assert (after["max_epoch"], after["final_epoch_share"]) == (4, pytest.approx(0.05))
    assert "warmup_epochs" not in after  # the user's, kept


def test_a_plan_that_stands_changes_nothing():
    base = course()
    first = planned(base, budget_plan.planned_changes(base, 13, 60.0))
    assert budget_plan.replanned(base, budget_plan.Done(first, 7, 10), 6.005, 60.0) == {}


# --------------------------------------------------------------------------------------------
# What the budget measures, and the runs it plans

def test_a_budget_run_times_its_own_steps_and_spends_no_more_than_its_budget(tmp_path):
    """The real timing (nothing replaced): the plan comes from the run's own steps, a validation
    pass timed after a warm-up and a checkpoint written to disk; the run ends within its
    budget, and the timing leaves no file behind."""
    x, y = data(32)
    lines = []
    model = MyModel(tiny_config(tmp_path, budget_minutes=0.25, max_epoch=200,
                                lr_decay_epochs=(100, 150), lookahead=True), log=lines.append)
    history = model.train(x[:24], y[:24], x[24:], y[24:])
    wall = time.monotonic() - model.started
    assert 0.5 * 15 <= wall <= 15 + 10, wall  # spent, and not overrun by more than an epoch's
    plan = [line for line in lines if line.startswith("budget 0.25 min:")]
    assert plan and "ms per step x 3 steps" in plan[0], lines
    assert len(history) == model.config.max_epoch >= 1
    assert sum(m["seconds"] for m in history) < 15  # within the budget, start-up aside
    folder = tmp_path / "model"
    assert not [name for name in os.listdir(folder) if name.endswith(".part")]
    recorded = json.loads((folder / "config.json").read_text())["config"]
    assert recorded["max_epoch"] == model.config.max_epoch


def test_the_validation_timing_warms_up_first(tmp_path, monkeypatch):
    calls = []
    original = budget.evaluate.logits

    def spy(model, x, *args, **kwargs):
        calls.append(len(x))
        return original(model, x, *args, **kwargs)

    monkeypatch.setattr(budget.evaluate, "logits", spy)
    x, y = data(100)
    model = MyModel(tiny_config(tmp_path, eval_batch_size=32), log=lambda *a: None)
    seconds = budget.measure_validation(model, x)
    assert calls == [32, 32] and seconds > 0  # a warm-up batch, then the timed one


def test_the_checkpoint_timing_writes_to_disk_beside_the_checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    written = []
    original = budget.os.fsync

    def spy(fd):
        written.append(os.readlink(f"/proc/self/fd/{fd}"))
        return original(fd)

    monkeypatch.setattr(budget.os, "fsync", spy)
    model = MyModel(tiny_config(tmp_path), log=lambda *a: None)
    assert budget.measure_save(model) > 0
    assert len(written) == 1 and os.path.dirname(written[0]) == str(folder)
    assert os.listdir(folder) == []  # removed again


def test_a_replan_to_nothing_ends_the_run_with_its_weights_finished(tmp_path, monkeypatch):
    """Nothing more fits after epoch 1: the run ends there, lookahead hands over its slow
    weights, and the last checkpoint and config.json hold the finished run. (Three steps, a fold
    after the second: only the run's end makes the network the slow weights after the third.)"""
    plans = iter([3.0, 0.0])
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: next(plans))
    x, y = data(32)
    lines = []
    model = MyModel(tiny_config(tmp_path, budget_minutes=1.0, max_epoch=20, lookahead=True,
                                lookahead_every=2, lr_decay_epochs=()), log=lines.append)
    history = model.train(x[:24], y[:24], x[24:], y[24:])
    assert [m["epoch"] for m in history] == [1] and model.config.max_epoch == 1
    ckpt = load(tmp_path / "model" / "model-1.ckpt")
    for k, v in ckpt["lookahead"].items():
        assert torch.equal(ckpt["model"][k], v), f"{k}: not the slow weights"
    assert ckpt["config"]["max_epoch"] == 1
    recorded = json.loads((tmp_path / "model" / "config.json").read_text())["config"]
    assert recorded["max_epoch"] == 1
    assert any("epoch 1 took" in line and "-> 1 epochs in all" in line for line in lines), lines


def test_a_resumed_budget_run_keeps_its_plan_and_its_anchor(tmp_path, monkeypatch):
    """A run replanned after epoch 1 and stopped in epoch 2 resumes with the plan it had
    (length, decays, anchor) and trains it to its end without planning again."""
    from test_training import pause_at_last_step_then_sigint
    plans = iter([3.0, 3.0])  # 3 epochs, then 3 more after epoch 1: 4 in all
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: next(plans))
    x, y = data(32)
    options = dict(budget_minutes=1.0, max_epoch=20, lr_decay_epochs=(10, 15), lookahead=True)
    pause_at_last_step_then_sigint(monkeypatch, 2, 0)
    with pytest.raises(Exception, match="stopped by SIGINT"):
        MyModel(tiny_config(tmp_path, **options), log=lambda *a: None).train(
            x[:24], y[:24], x[24:], y[24:])
    monkeypatch.delenv("RESNET_CIFAR_PAUSE_AT")
    stopped = load(tmp_path / "model" / "interrupted.ckpt")
    assert stopped["config"]["max_epoch"] == 4 and stopped["config"]["plan_anchor"]

    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: pytest.fail("planned again"))
    resumed = MyModel(tiny_config(tmp_path, **options), log=lambda *a: None)
    history = resumed.train(x[:24], y[:24], x[24:], y[24:], resume="latest")
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert resumed.config.max_epoch == 4
    assert list(resumed.config.plan_anchor) == stopped["config"]["plan_anchor"]
    assert list(resumed.config.lr_decay_epochs) == stopped["config"]["lr_decay_epochs"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("budget") / "data")
    write_cifar(folder, n_per_batch=8, n_test=4, seed=0)
    return folder


def test_overwrite_keeps_the_old_run_when_the_budget_refuses_the_new_one(data_dir, tmp_path,
                                                                         capsys):
    """Everything that can refuse a run does so before --overwrite removes a file."""
    folder = tmp_path / "m"
    common = [*TINY, "--data_dir", data_dir, "--modeldir", str(folder), "--split_index", "32",
              "--lr_decay_epochs", "--quiet"]
    assert main.main(common + ["--max_epoch", "1"]) == 0
    before = snapshot(str(folder))
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main.main(common + ["--overwrite", "--budget_minutes", "0.0005"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "leaves no time for one epoch" in err and "Traceback" not in err, err
    assert snapshot(str(folder)) == before


@pytest.mark.parametrize("anchor", ["oops", [1, 2], [1, 0.5, float("nan"), 0.1], [1, None, 1, 0]])
def test_a_damaged_plan_anchor_is_refused_in_one_sentence(tmp_path, anchor):
    from trainer.run import state
    from trainer.run.checkpoints import CheckpointError
    x, y = data(16)
    model = MyModel(tiny_config(tmp_path, max_epoch=1), log=lambda *a: None)
    model.train(x, y)
    ckpt = load(tmp_path / "model" / "model-1.ckpt")
    ckpt["config"]["plan_anchor"] = anchor
    with pytest.raises(CheckpointError, match="damaged plan_anchor"):
        state.check_same_run(ckpt, "model-1.ckpt", model.config, model.network,
                             [p for g in model.optimizer.param_groups for p in g["params"]])


def test_a_frozen_start_is_timed_in_both_states_and_planned_at_the_free_speed(monkeypatch):
    """--freeze_epochs: the frozen steps are the cheaper, so the plan counts every epoch at the
    free backbone's speed, and the replan after the last frozen epoch carries that epoch's real
    speed over to the free ones at the ratio measured."""
    from types import SimpleNamespace
    from trainer.training.runtime import Runtime
    timed = []

    def steps(model, images, labels, epoch=1):
        timed.append(epoch)
        return (0.1 if epoch == 1 else 0.4), 10  # a frozen step, a free one; 10 steps an epoch

    monkeypatch.setattr(budget, "measure_steps", steps)
    monkeypatch.setattr(budget, "measure_validation", lambda model, x: 0.0)
    monkeypatch.setattr(budget, "measure_save", lambda model: 0.0)
    cfg = Config(network="resnet50", freeze_epochs=1, budget_minutes=1.0, lr_schedule="cosine",
                 lr_decay_epochs=(), device="cpu", amp="off", max_epoch=5)
    model = SimpleNamespace(config=cfg, runtime=Runtime(cfg), started=time.monotonic(),
                            log=lambda *a: None, test_after=None)
    changes, timing = budget.fit(model, None, None, None)
    assert timed == [1, 2]
    assert changes["max_epoch"] == 15  # 58.8 s left at 4 s an epoch: 14.7 epochs
    seen = []
    monkeypatch.setattr(budget_plan, "plan_epochs",
                        lambda budget_s, spent, train, *a, **k: seen.append(train) or 10.0)
    for key, value in changes.items():
        setattr(cfg, key, value)
    budget.replan(model, cfg, timing, 1, 1.5)  # the frozen epoch took 1.5 s: free ones 6 s
    assert seen == [pytest.approx(6.0)]


def timed_with_a_test(monkeypatch, test_seconds: float, log=lambda *a: None):
    """A budget run's stand-in that budget.fit times as 10 steps of 0.4 s an epoch, with nothing
    to validate or save, and a --test after it of ``test_seconds``; a 1-minute budget."""
    from types import SimpleNamespace
    from trainer.training.runtime import Runtime
    monkeypatch.setattr(budget, "measure_steps", lambda model, images, labels, epoch=1: (0.4, 10))
    monkeypatch.setattr(budget, "measure_validation", lambda model, x: 0.0)
    monkeypatch.setattr(budget, "measure_save", lambda model: 0.0)
    monkeypatch.setattr(budget, "measure_test", lambda model, save_seconds: test_seconds)
    cfg = Config(budget_minutes=1.0, lr_schedule="cosine", lr_decay_epochs=(), device="cpu",
                 amp="off", max_epoch=5)
    return SimpleNamespace(config=cfg, runtime=Runtime(cfg), started=time.monotonic(), log=log,
                           test_after=object())


def test_the_budget_sets_the_test_after_the_training_aside(monkeypatch):
    """--mode train --test: the test after the training is timed before the plan and set aside,
    so the run and its test together end within --budget_minutes; the replans set it aside too."""
    lines = []
    model = timed_with_a_test(monkeypatch, 20.0, lines.append)
    cfg = model.config
    changes, timing = budget.fit(model, None, None, None)
    assert changes["max_epoch"] == 10  # 60 s less 20 s of test, at 4 s an epoch (15 without)
    assert timing.test_seconds == 20.0 and "the test after 20.0 s" in lines[0], lines
    seen = []
    monkeypatch.setattr(budget_plan, "plan_epochs",
                        lambda budget_s, spent, *a, **k: seen.append(spent) or 5.0)
    for key, value in changes.items():
        setattr(cfg, key, value)
    budget.replan(model, cfg, timing, 1, 4.0)  # at the pace planned: the test as timed
    budget.replan(model, cfg, timing, 2, 8.0)  # the machine at half the speed: the test too
    budget.replan(model, cfg, timing, 3, 2.0)  # faster than timed: the test as timed, no less
    assert 20.0 <= seen[0] < 21.0 and 40.0 <= seen[1] < 41.0 and 20.0 <= seen[2] < 21.0, seen


def test_a_budget_the_test_leaves_no_epoch_says_so(monkeypatch):
    from configure import ConfigError
    model = timed_with_a_test(monkeypatch, 59.9)
    with pytest.raises(ConfigError, match=r"the test after it \(--test\) about 60 s\); give "
                                          r"more minutes or drop --test\.$"):
        budget.fit(model, None, None, None)


def test_the_test_timing_takes_a_batch_with_its_views_after_a_warm_up(tmp_path, monkeypatch):
    from types import SimpleNamespace
    calls = []
    original = budget.evaluate.logits

    def spy(model, x, *args, **kwargs):
        calls.append((len(x), kwargs.get("tta")))
        return original(model, x, *args, **kwargs)

    monkeypatch.setattr(budget.evaluate, "logits", spy)
    clock = iter([10.0, 12.0])  # the timed batch: 2 s
    monkeypatch.setattr(budget, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    x, _ = data(100)
    model = MyModel(tiny_config(tmp_path, eval_batch_size=32), log=lambda *a: None)
    assert budget.measure_test(model, 1.5) == 0.0 and calls == []  # no --test, nothing to time
    model.test_after = budget.TestAfter(x, "six")
    seconds = budget.measure_test(model, 1.5)
    assert calls == [(32, "off"), (32, "six")]  # one view warms up, then the timed batch
    # 100 images at 2 s per 32, and the checkpoint read back twice at 1.5 s each
    assert seconds == pytest.approx(2.0 * 100 / 32 + 2 * 1.5)
