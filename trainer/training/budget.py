"""--budget_minutes: fit a training run into a number of minutes of wall time.

This module measures; trainer.training.budget_plan decides. Before the first epoch of a fresh run
``fit`` times the run's own training step (trainer.training.step_timing: a warm-up step, then
real steps, the run put back as it was; with --freeze_epochs, steps of the free backbone, which
most epochs train), a validation batch after one that warms up, and a real checkpoint written to
disk (a temporary beside the checkpoints, removed again), counted for each epoch's model-best.ckpt
and its share of the numbered ones (--save_interval), and with --test (``model.test_after``) the
test that follows the training (one pass over the test images with their views, as a sample batch
takes it, and reading the checkpoint back twice, each about as long as writing one); the plan fits
as many epochs into what is left, the test set aside, as those times allow, and each replan sets
the test aside again, grown as far as the epochs go slower than timed.
Everything before it (loading the data, --amp auto, the width of --recipe speed, the timing
itself, and with --compile the compilation its warm-up step does) is time already spent. After
every epoch but the last, ``replan`` plans the rest again from that epoch's real training time,
counting the epoch's own validation and checkpoint, still to come, as spent. The machine's speed
may change during a run (another process starts or ends), and the plan follows it.
"""
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from configure import applies
from trainer.evaluation import evaluate
from trainer.parallel import distributed
from trainer.run import state
from trainer.run.checkpoints import checkpoint_path
from trainer.storage import atomic
from trainer.training import budget_plan, step_timing

MIN_TIMED, MAX_TIMED = 2, 20  # training steps timed, after one that warms up
TIMING_SECONDS = 2.0  # past MIN_TIMED steps, no more are timed once this much time went by


@dataclass
class TestAfter:
    """The test --mode train --test runs once the training ends, which a budget leaves time for:
    the test images (N, 32, 32, 3) and the test-time augmentation the test uses."""
    images: np.ndarray
    tta: str


@dataclass
class Timing:
    """What a plan was made from: seconds of one training step, steps an epoch, seconds of a
    validation pass and of an epoch's checkpoints, and of the last epoch (for the log)."""
    step_seconds: float
    steps_per_epoch: int
    eval_seconds: float
    save_seconds: float
    last_epoch_seconds: float = 0.0
    frozen_step_seconds: float = 0.0  # --freeze_epochs: a step with the backbone frozen
    test_seconds: float = 0.0  # --test: the test after the training, set aside

    @property
    def train_seconds(self) -> float:
        return self.step_seconds * self.steps_per_epoch

    @property
    def epoch_seconds(self) -> float:
        return self.train_seconds + self.eval_seconds + self.save_seconds


def measure_steps(model, images: torch.Tensor, labels: torch.Tensor, epoch: int = 1):
    """(mean seconds of the run's training step in the state of ``epoch``, steps an epoch): at
    least MIN_TIMED steps after a warm-up, more (up to MAX_TIMED) while they take less than
    TIMING_SECONDS in all, so that large batches on a slow device cost little. Under torchrun
    every rank times the same steps."""
    with step_timing.timing(model, images, labels, epoch=epoch) as timer:
        times = timer.steps(MIN_TIMED)
        while len(times) < MAX_TIMED and sum(times) < TIMING_SECONDS:
            times.append(timer.step())
        return sum(times) / len(times), timer.steps_per_epoch


def measure_pass(model, x, tta: str) -> float:
    """Seconds of one evaluation pass over this rank's share of ``x`` with test-time
    augmentation ``tta``, from one batch timed after one view of it that warms up (compiling
    with --compile, autotuning cuDNN); 0 for no images."""
    if x is None or not len(x):
        return 0.0
    cfg, ctx, rt = model.config, model.dist, model.runtime
    share = len(x[distributed.share(len(x), ctx.rank, ctx.world_size)])
    sample = x[:min(len(x), cfg.eval_batch_size)]
    # the warm-up: one view (every view has the batch's shape, so it warms up all of them)
    evaluate.logits(model, sample, "timing evaluation", tta="off")
    step_timing.synchronize(rt.device)
    begin = time.perf_counter()
    evaluate.logits(model, sample, "timing evaluation", tta=tta)
    step_timing.synchronize(rt.device)
    seconds = (time.perf_counter() - begin) * share / len(sample)
    return step_timing.slowest(seconds, rt)


def measure_validation(model, x_valid) -> float:
    """Seconds of one validation pass (no test-time augmentation) over this rank's share of
    x_valid; 0 without validation."""
    return measure_pass(model, x_valid, "off")


def measure_test(model, save_seconds: float) -> float:
    """Seconds of the test after the training (``model.test_after``; 0 without --test): its pass
    over the test images with their views, and reading the checkpoint back (its configuration,
    then its weights), each read counted as ``save_seconds``, what writing one takes."""
    after = model.test_after
    if after is None:
        return 0.0
    return measure_pass(model, after.images, after.tta) + 2 * save_seconds


def measure_save(model) -> float:
    """Seconds to write one checkpoint of the run to disk, as a run writes it (a temporary beside
    the checkpoints, fsynced; a killed run's is cleared like any other), then removed. Rank 0
    writes; every rank takes its time."""
    seconds = 0.0
    if model.dist.is_main:
        folder = model.config.modeldir if os.path.isdir(model.config.modeldir) else \
            tempfile.gettempdir()
        path = atomic.temporary_name(checkpoint_path(folder, "best"))
        begin = time.perf_counter()
        try:
            with open(path, "wb") as f:
                torch.save(state.snapshot(model, 0, {}, ""), f)
                f.flush()
                os.fsync(f.fileno())
            seconds = time.perf_counter() - begin
        finally:
            if os.path.exists(path):
                os.remove(path)
    return step_timing.slowest(seconds, model.runtime)


def fit(model, images: torch.Tensor, labels: torch.Tensor, x_valid):
    """The configuration values (budget_plan.planned_changes) that fit the run, and with --test
    the test after it, into config.budget_minutes, counted from model.started, and the Timing
    they come from. The plan is printed. Under torchrun every rank takes the slowest rank's plan."""
    cfg, rt = model.config, model.runtime
    frozen_seconds = 0.0
    if freezes(cfg):  # the frozen epochs are the cheaper; the plan counts every epoch free
        frozen_seconds, _ = measure_steps(model, images, labels, epoch=1)
    step_seconds, steps_per_epoch = measure_steps(model, images, labels,
                                                  epoch=cfg.freeze_epochs + 1 if freezes(cfg)
                                                  else 1)
    saves = (1 if x_valid is not None and len(x_valid) else 0) + 1 / cfg.save_interval
    save_seconds = measure_save(model)
    timing = Timing(step_seconds, steps_per_epoch, measure_validation(model, x_valid),
                    saves * save_seconds, frozen_step_seconds=frozen_seconds,
                    test_seconds=measure_test(model, save_seconds))
    spent = time.monotonic() - model.started
    epochs = budget_plan.plan_epochs(cfg.budget_minutes * 60, spent + timing.test_seconds,
                                     timing.train_seconds,
                                     timing.eval_seconds, timing.save_seconds)
    epochs = agreed(epochs, rt)
    changes = budget_plan.planned_changes(cfg, epochs, timing.epoch_seconds,
                                          set_aside=timing.test_seconds)
    timing.last_epoch_seconds = timing.epoch_seconds
    model.log(f"budget {cfg.budget_minutes:g} min: {spent:.0f} s spent starting, "
              f"{step_seconds * 1000:.0f} ms per step x {steps_per_epoch} steps = "
              f"{timing.train_seconds:.0f} s per epoch, validation {timing.eval_seconds:.1f} s, "
              f"checkpoints {timing.save_seconds:.1f} s"
              + (f", the test after {timing.test_seconds:.1f} s" if timing.test_seconds else "")
              + f" -> {budget_plan.describe(changes)} "
              f"({cfg.lr_schedule} schedule)")
    return changes, timing


def replan(model, base, timing: Timing, epoch: int, train_seconds: float) -> dict:
    """After the training of each whole epoch but the last of a budget run planned in this
    process, before its validation and checkpoint (which then hold the plan that runs): the
    changes (budget_plan.replanned) that fit the rest of the run into the budget at that
    epoch's real ``train_seconds``, or {} when the plan stands. ``base``: the configuration as
    the command line made it, before the first plan. Under torchrun every rank takes the
    slowest rank's plan."""
    cfg = model.config
    if freezes(cfg) and epoch == cfg.freeze_epochs and timing.frozen_step_seconds > 0:
        # the last frozen epoch: its speed, carried over to the free ones that follow
        train_seconds *= timing.step_seconds / timing.frozen_step_seconds
    pending = timing.eval_seconds + timing.save_seconds  # this epoch's own, still to come
    # the test (--test), slower as the epochs are where a busy machine slows them; never less
    # than timed (a first step slowed by the start of something else shrinks it falsely)
    test_seconds = timing.test_seconds * max(1.0, train_seconds / timing.train_seconds) \
        if timing.train_seconds > 0 else timing.test_seconds
    spent = time.monotonic() - model.started + pending + test_seconds
    rest = budget_plan.plan_epochs(cfg.budget_minutes * 60, spent, train_seconds,
                                   timing.eval_seconds, timing.save_seconds)
    rest = agreed(rest, model.runtime)
    epoch_seconds = train_seconds + pending
    planned_seconds, timing.last_epoch_seconds = timing.last_epoch_seconds, epoch_seconds
    done = budget_plan.Done(cfg, epoch, timing.steps_per_epoch)
    changes = budget_plan.replanned(base, done, rest, epoch_seconds)
    if changes:
        planned = changes["max_epoch"] - 1 + changes["final_epoch_share"]
        over = f" (over budget: --warmup_epochs {base.warmup_epochs:g} needs them)" \
            if planned > epoch + rest + budget_plan.SAME_PLAN else ""
        model.log(f"budget {cfg.budget_minutes:g} min: epoch {epoch} took {epoch_seconds:.0f} s "
                  f"against {planned_seconds:.0f} s planned -> "
                  f"{budget_plan.describe(changes)} in all{over}")
    return changes


def freezes(cfg) -> bool:
    """Whether the run starts with its backbone frozen (--freeze_epochs, resnet50)."""
    return applies("freeze_epochs", cfg.network) and cfg.freeze_epochs > 0


def agreed(epochs: float, rt) -> float:
    """The fewest epochs any rank's plan fits (alone, ``epochs``), in whole thousandths."""
    return distributed.agree_min(budget_plan.in_thousandths(epochs), rt.collective_device()) / 1000
