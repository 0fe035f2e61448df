"""Learning-rate schedules, as pure functions of the step.

The rate of a step depends only on the configuration, the epoch, the step within it and the number
of steps an epoch has, never on what happened before: a resumed run sets exactly the rates the
uninterrupted run would have set.

Schedules (``--lr_schedule``), for a run of G steps (``total_steps``: max_epoch epochs, the last of
which trains only final_epoch_share of its steps when a time budget planned a fractional run), with
global step g counted from 0 and W = warmup_epochs * steps_per_epoch warm-up steps:

* ``step``: learning_rate, multiplied by lr_decay_factor after each of lr_decay_epochs (the paper's
  and the course's schedule);
* ``cosine``: learning_rate * (1 + cos(pi * (g - W) / (G - W))) / 2 after the warm-up;
* ``onecycle``: rises linearly to learning_rate over the warm-up (30% of the run when
  warmup_epochs is 0), then falls linearly to 0 at the end of the run;
* ``triangle``: airbench94's: rises linearly from 0.2 * learning_rate to learning_rate over the
  warm-up (23% of the run when warmup_epochs is 0), then falls linearly to 0.07 * learning_rate at
  the end of the run.

During the warm-up of step and cosine the rate is their value times min(1, (g + 1) / W).
"""
import math

SCHEDULES = ("step", "cosine", "onecycle", "triangle")
ONECYCLE_RISE = 0.3  # share of a one-cycle run spent rising when --warmup_epochs is 0
# airbench94's triangle (legacy/airbench94.py, get_lr): rise over 23% of the steps from 0.2 of the
# rate to all of it, then fall to 0.07 of it at the last step.
TRIANGLE_RISE, TRIANGLE_START, TRIANGLE_END = 0.23, 0.2, 0.07


def step_decays(config, epoch: int) -> int:
    """How many of lr_decay_epochs lie before (1-based) ``epoch``."""
    return sum(1 for e in config.lr_decay_epochs if epoch > e)


def epoch_steps(config, epoch: int, steps_per_epoch: int) -> int:
    """Steps (1-based) ``epoch`` trains: all of them, except in the last epoch of a run planned
    with a fractional length (final_epoch_share below 1), where at least one."""
    share = getattr(config, "final_epoch_share", 1.0)
    if epoch < config.max_epoch or share >= 1:
        return steps_per_epoch
    return min(steps_per_epoch, max(1, math.ceil(share * steps_per_epoch)))


def total_steps(config, steps_per_epoch: int) -> int:
    """Steps of the whole run."""
    return (config.max_epoch - 1) * steps_per_epoch + \
        epoch_steps(config, config.max_epoch, steps_per_epoch)


def lr_at_step(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based) of (1-based) ``epoch``."""
    total = total_steps(config, steps_per_epoch)
    g = (epoch - 1) * steps_per_epoch + step
    schedule = getattr(config, "lr_schedule", "step")
    warmup = getattr(config, "warmup_epochs", 0.0) * steps_per_epoch
    if schedule == "onecycle" and warmup <= 0:
        warmup = ONECYCLE_RISE * total
    if schedule == "triangle" and warmup <= 0:
        warmup = int(TRIANGLE_RISE * total)
    warmup = min(warmup, total)
    base = config.learning_rate
    if schedule == "triangle":
        if g < warmup:
            frac = g / warmup
            return base * (TRIANGLE_START * (1 - frac) + frac)
        frac = min(g - warmup, total - warmup) / max(total - warmup, 1)
        return base * ((1 - frac) + TRIANGLE_END * frac)
    if schedule == "onecycle":
        if g < warmup:
            return base * min(1.0, (g + 1) / warmup)
        return base * max(total - g, 0) / max(total - warmup, 1)
    if schedule == "cosine":
        rate = base if g < warmup else \
            base * 0.5 * (1 + math.cos(math.pi * min(g - warmup, total - warmup)
                                       / max(total - warmup, 1)))
    else:
        rate = base * config.lr_decay_factor ** step_decays(config, epoch)
    if g < warmup:
        rate *= min(1.0, (g + 1) / warmup)
    return rate
