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

A --budget_minutes run may be planned again between epochs (trainer.training.budget), which moves
G (and a recipe's W). What is past must stay past: the rise of the warm-up, the fall after it and
the run's progress (which lookahead's decay and --whiten_bias_share follow) never go back, and
never jump ahead. So a replan records ``plan_anchor``, (g0, progress, rise, fall) at its step g0
under the plan before it, and from g0 on each of the three goes on linearly from its value there
to 1 at the end of its phase in the new plan (``anchor_at``). Without an anchor (a run planned
once) the formulas above hold exactly.
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


def _anchor(config):
    """(g0, progress, rise, fall) a replan recorded, or None (see the module's docstring)."""
    anchor = getattr(config, "plan_anchor", ())
    return tuple(anchor) if anchor else None


def _go_on(value0: float, x: float, x0: float, end: float) -> float:
    """From value0 at x0 linearly to 1 at end, at x (1 at or past the end)."""
    if end <= x0 or x >= end:
        return 1.0
    return value0 + (1 - value0) * (x - x0) / (end - x0)


class _Plan:
    """The quantities of one step of the run: global step g, total steps G, warm-up steps W, and
    the run's progress, the warm-up's rise and the fall after it, each in [0, 1]."""

    def __init__(self, config, epoch: int, step: int, steps_per_epoch: int):
        self.config = config
        self.schedule = getattr(config, "lr_schedule", "step")
        self.total = total_steps(config, steps_per_epoch)
        self.epoch = epoch
        self.g = (epoch - 1) * steps_per_epoch + step
        warmup = getattr(config, "warmup_epochs", 0.0) * steps_per_epoch
        if self.schedule == "onecycle" and warmup <= 0:
            warmup = ONECYCLE_RISE * self.total
        if self.schedule == "triangle" and warmup <= 0:
            warmup = int(TRIANGLE_RISE * self.total)
        self.warmup = min(warmup, self.total)
        self.anchor = _anchor(config)
        shift = 0 if self.schedule == "triangle" else 1
        if self.anchor is not None and self.anchor[2] < 1 and \
                self.warmup <= self.anchor[0] + shift:
            # A shorter plan whose warm-up would already be over: the rise ends where it is,
            # and the fall begins from the rate the run has now, not from the peak.
            g0, p0, r0, _ = self.anchor
            self.anchor = (g0, p0, 1.0, self._fall_at_rate_of(r0))

    def _fall_at_rate_of(self, rise: float) -> float:
        """The fall (in [0, 1]) at which the rate is what it is at ``rise`` of the warm-up."""
        if self.schedule == "triangle":  # S(1 - r) + r = (1 - f) + E f
            return (1 - (TRIANGLE_START * (1 - rise) + rise)) / (1 - TRIANGLE_END)
        if self.schedule == "onecycle":  # r = 1 - f
            return 1 - rise
        if self.schedule == "cosine":  # r = (1 + cos(pi f)) / 2
            return math.acos(min(1.0, max(-1.0, 2 * rise - 1))) / math.pi
        return 0.0  # the step schedule falls by its decays alone

    def _anchored(self) -> bool:
        return self.anchor is not None and self.g >= self.anchor[0]

    def progress(self) -> float:
        """Steps done over the run's steps."""
        if self._anchored():
            g0, p0 = self.anchor[0], self.anchor[1]
            return _go_on(p0, self.g, g0, self.total)
        return self.g / self.total

    def rise(self) -> float:
        """How far the warm-up has risen, in [0, 1] (1: over, or none). The triangle counts
        step g as g / W, the others as (g + 1) / W."""
        shift = 0 if self.schedule == "triangle" else 1
        if self._anchored():
            g0, r0 = self.anchor[0], self.anchor[2]
            return 1.0 if r0 >= 1 else _go_on(r0, self.g + shift, g0 + shift, self.warmup)
        if self.g + shift >= self.warmup:
            return 1.0
        return (self.g + shift) / self.warmup

    def fall(self) -> float:
        """How far the rate has fallen after the warm-up, (g - W) / (G - W) in [0, 1]."""
        if self._anchored() and self.anchor[3] > 0:
            g0, f0 = self.anchor[0], self.anchor[3]
            return _go_on(f0, self.g, g0, self.total)
        if self.rise() < 1:
            return 0.0
        start = self.warmup
        if self._anchored():  # the fall begins where the (anchored) rise ended
            start = self.anchor[0] if self.anchor[2] >= 1 else max(self.warmup, self.anchor[0])
        return max(0.0, min(self.g - start, self.total - start)) / max(self.total - start, 1)


def progress(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The run's progress at step ``step`` (0-based) of (1-based) ``epoch``: steps done over the
    run's steps, continued from a replan's anchor (lookahead's decay and --whiten_bias_share
    follow it)."""
    return _Plan(config, epoch, step, steps_per_epoch).progress()


def anchor_at(config, epoch: int, steps_per_epoch: int) -> tuple:
    """The plan_anchor of a replan after (1-based) ``epoch``, from ``config`` as planned before
    it: (g0, progress, rise, fall) at the first step of the next epoch."""
    plan = _Plan(config, epoch + 1, 0, steps_per_epoch)
    return (plan.g, plan.progress(), plan.rise(), plan.fall())


def lr_at_step(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based) of (1-based) ``epoch``."""
    plan = _Plan(config, epoch, step, steps_per_epoch)
    base = config.learning_rate
    if plan.anchor is None:
        return _plain_rate(plan, base)
    rise, fall = plan.rise(), plan.fall()
    if plan.schedule == "triangle":
        if rise < 1:
            return base * (TRIANGLE_START * (1 - rise) + rise)
        return base * ((1 - fall) + TRIANGLE_END * fall)
    if plan.schedule == "onecycle":
        return base * rise if rise < 1 else base * (1 - fall)
    if plan.schedule == "cosine":
        rate = base * 0.5 * (1 + math.cos(math.pi * fall))
    else:
        rate = base * config.lr_decay_factor ** step_decays(config, epoch)
    return rate * rise


def _plain_rate(plan: _Plan, base: float) -> float:
    """The rate of a run planned once (no anchor): the formulas of the module's docstring."""
    config, g, total, warmup = plan.config, plan.g, plan.total, plan.warmup
    if plan.schedule == "triangle":
        if g < warmup:
            frac = g / warmup
            return base * (TRIANGLE_START * (1 - frac) + frac)
        frac = min(g - warmup, total - warmup) / max(total - warmup, 1)
        return base * ((1 - frac) + TRIANGLE_END * frac)
    if plan.schedule == "onecycle":
        if g < warmup:
            return base * min(1.0, (g + 1) / warmup)
        return base * max(total - g, 0) / max(total - warmup, 1)
    if plan.schedule == "cosine":
        rate = base if g < warmup else \
            base * 0.5 * (1 + math.cos(math.pi * min(g - warmup, total - warmup)
                                       / max(total - warmup, 1)))
    else:
        rate = base * config.lr_decay_factor ** step_decays(config, plan.epoch)
    if g < warmup:
        rate *= min(1.0, (g + 1) / warmup)
    return rate
