"""Learning-rate schedules, as pure functions of the step.

The rate of a step depends only on the configuration, the epoch, the step within it and the number
of steps an epoch has, never on what happened before: a resumed run sets exactly the rates the
uninterrupted run would have set.

Schedules (``--lr_schedule``), for a run of G = max_epoch * steps_per_epoch steps, with global step g
counted from 0 and W = warmup_epochs * steps_per_epoch warm-up steps:

* ``step``: learning_rate, multiplied by lr_decay_factor after each of lr_decay_epochs (the paper's
  and the course's schedule);
* ``cosine``: learning_rate * (1 + cos(pi * (g - W) / (G - W))) / 2 after the warm-up;
* ``onecycle``: rises linearly to learning_rate over the warm-up (30% of the run when
  warmup_epochs is 0), then falls linearly to 0 at the end of the run.

During the warm-up of step and cosine the rate is their value times min(1, (g + 1) / W).
"""
import math

SCHEDULES = ("step", "cosine", "onecycle")
ONECYCLE_RISE = 0.3  # share of a one-cycle run spent rising when --warmup_epochs is 0


def step_decays(config, epoch: int) -> int:
    """How many of lr_decay_epochs lie before (1-based) ``epoch``."""
    return sum(1 for e in config.lr_decay_epochs if epoch > e)


def lr_at_step(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based) of (1-based) ``epoch``."""
    total = config.max_epoch * steps_per_epoch
    g = (epoch - 1) * steps_per_epoch + step
    schedule = getattr(config, "lr_schedule", "step")
    warmup = getattr(config, "warmup_epochs", 0.0) * steps_per_epoch
    if schedule == "onecycle" and warmup <= 0:
        warmup = ONECYCLE_RISE * total
    warmup = min(warmup, total)
    base = config.learning_rate
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
