"""The plan of a --budget_minutes run, as pure functions of timings and progress (no network, no
clock: trainer.training.budget measures, this module decides).

``plan_epochs`` turns the seconds left and the seconds an epoch takes into the epochs that fit (the
last one may be a share of an epoch, so that the budget is spent rather than left over), in
thousandths of an epoch, rounded down (``in_thousandths``: the one rounding both the first plan and
every replan use). ``planned_changes`` gives the configuration values that change with a plan:
max_epoch and final_epoch_share, the step schedule's decay epochs (moved to the same fractions of
the new length by ``stretch_decay_epochs``) and a recipe's warm-up (scaled likewise). A replan
between epochs (``replanned``) never undoes what is past: a decay that has taken place stays
where it was and one still to come cannot move into the past (``keep_past_decays``), and
the schedule, the run's progress (lookahead, --whiten_bias_share) and the warm-up go on from where
they are (``plan_anchor``, trainer.training.schedules).
"""
import math
from typing import NamedTuple

from configure import ConfigError
from trainer.training import schedules

MIN_EPOCHS = 0.1  # a plan shorter than this share of an epoch is refused
MIN_SHARE = 0.05  # a last epoch shorter than this share is dropped rather than begun
MARGIN = 0.02  # share of what is left kept in hand
SAME_PLAN = 0.01  # epochs: a replan that changes the length by less keeps the plan as it is


class Done(NamedTuple):
    """Where a run stands at a replan: ``epochs`` whole epochs trained under ``config`` (the plan
    so far), of ``steps_per_epoch`` steps each."""
    config: object
    epochs: int
    steps_per_epoch: int


def in_thousandths(epochs: float) -> int:
    """Epochs in whole thousandths, rounded down (a hair of float error forgiven)."""
    return int(math.floor(epochs * 1000 + 1e-6))


def plan_epochs(budget_seconds: float, spent_seconds: float, train_seconds_per_epoch: float,
                eval_seconds_per_epoch: float, save_seconds: float = 0.0,
                margin: float = MARGIN) -> float:
    """Epochs that fit into what is left of a wall-time budget, (budget - spent) less a ``margin``
    share kept in hand: as many whole epochs (training, validation and a checkpoint) as fit, and
    then the share of one more epoch's training that fits beside its validation and checkpoint
    (in thousandths, rounded down; dropped below MIN_SHARE); 0 when nothing fits."""
    per_epoch = train_seconds_per_epoch + eval_seconds_per_epoch + save_seconds
    if per_epoch <= 0 or train_seconds_per_epoch <= 0:
        raise ValueError("an epoch must take some time")
    left = (budget_seconds - spent_seconds) * (1 - margin)
    if left <= 0:
        return 0.0
    whole = int(left // per_epoch)
    rest = left - whole * per_epoch - eval_seconds_per_epoch - save_seconds
    share = in_thousandths(max(0.0, rest / train_seconds_per_epoch)) / 1000
    return float(whole) + (share if share >= MIN_SHARE else 0.0)


def split_epochs(epochs: float):
    """(max_epoch, final_epoch_share) of a plan of ``epochs`` (possibly fractional) epochs."""
    whole = max(1, math.ceil(epochs - 1e-9))
    share = round(epochs - (whole - 1), 6)
    return whole, min(1.0, share)


def stretch_decay_epochs(decay_epochs, planned_from: int, planned_to: int):
    """The step schedule's decay epochs moved to the same fractions of a run of ``planned_to``
    epochs as they had in one of ``planned_from``; distinct, increasing, within the run."""
    stretched = []
    for e in decay_epochs:
        moved = max(1, round(e * planned_to / planned_from))
        if stretched and moved <= stretched[-1]:
            moved = stretched[-1] + 1
        if moved < planned_to:
            stretched.append(moved)
    return tuple(stretched)


def keep_past_decays(current, stretched, done: int, whole: int):
    """The decay epochs of a replan after epoch ``done``: those of the ``current`` plan before it
    stay as they are (they have taken place: epoch d + 1 on trained at the lower rate); the later
    ones are the ``stretched`` ones that follow them, none before ``done`` (a decay after epoch
    done first acts on the next epoch), each after the one before, all within a run of ``whole``
    epochs."""
    kept = [d for d in current if d < done and d < whole]
    for d in stretched[len(kept):]:
        d = max(d, done, kept[-1] + 1 if kept else 1)
        if d < whole:
            kept.append(d)
    return tuple(kept)


def planned_changes(base, epochs: float, epoch_seconds: float, done: Done = None,
                    set_aside: float = 0.0) -> dict:
    """The configuration values a plan of ``epochs`` (possibly fractional) epochs changes, from
    ``base``, the configuration as the command line made it: max_epoch and final_epoch_share,
    the step schedule's decay epochs, a warm-up that came from a recipe (scaled to the same share
    of the run), and after ``done`` epochs of an earlier plan, the anchor the schedule goes on
    from. ConfigError when too little of an epoch fits, or when an explicit --warmup_epochs fills
    the whole plan. ``set_aside``: seconds of the test after the training (--test), which the
    refusal names."""
    if epochs < MIN_EPOCHS:
        test = f", and the test after it (--test) about {set_aside:.0f} s" if set_aside else ""
        raise ConfigError(f"--budget_minutes {base.budget_minutes:g} leaves no time for one epoch "
                          f"at the measured speed, nor for a tenth of one (an epoch takes about "
                          f"{epoch_seconds:.0f} s{test}); give more minutes"
                          + (" or drop --test." if set_aside else "."))
    whole, share = split_epochs(epochs)
    changes = {"max_epoch": whole, "final_epoch_share": share}
    if base.lr_schedule == "step":
        stretched = stretch_decay_epochs(base.lr_decay_epochs, base.max_epoch, whole)
        changes["lr_decay_epochs"] = stretched if done is None else \
            keep_past_decays(done.config.lr_decay_epochs, stretched, done.epochs, whole)
    if base.from_recipe("warmup_epochs"):
        changes["warmup_epochs"] = base.warmup_epochs * epochs / base.max_epoch
    elif epochs <= base.warmup_epochs:
        raise ConfigError(f"--budget_minutes {base.budget_minutes:g} leaves time for {epochs:g} "
                          f"epoch(s) at the measured speed, no more than --warmup_epochs "
                          f"{base.warmup_epochs:g}; give more minutes or fewer warm-up epochs.")
    if done is not None:
        changes["plan_anchor"] = schedules.anchor_at(done.config, done.epochs,
                                                     done.steps_per_epoch)
    return changes


def replanned(base, done: Done, rest_epochs: float, epoch_seconds: float) -> dict:
    """The changes (as ``planned_changes``) of a replan after ``done``, with ``rest_epochs``
    more epochs fitting the budget; {} when the plan stands (the same length within SAME_PLAN).
    An explicit --warmup_epochs is the user's, and a plan must end after it: where the budget
    leaves less, the plan is the shortest one that does (``shortest_after_warmup``), over
    budget rather than refused halfway through a run."""
    current = done.config
    epochs = done.epochs + rest_epochs
    if not base.from_recipe("warmup_epochs"):
        epochs = max(epochs, shortest_after_warmup(base))
    old = current.max_epoch - 1 + current.final_epoch_share
    if abs(epochs - old) < SAME_PLAN:
        return {}
    return planned_changes(base, epochs, epoch_seconds, done)


def shortest_after_warmup(base) -> float:
    """The shortest plan an explicit --warmup_epochs leaves room in: MIN_SHARE of an epoch past
    its end (0 without a warm-up)."""
    if base.warmup_epochs <= 0:
        return 0.0
    return (in_thousandths(base.warmup_epochs) + in_thousandths(MIN_SHARE)) / 1000


def describe(changes: dict) -> str:
    """'12.4 epochs (decay after epochs 6 10, warm-up 1.6 epochs)' for a plan's changes."""
    epochs = changes["max_epoch"] - 1 + changes["final_epoch_share"]
    decay = f", decay after epochs {' '.join(map(str, changes['lr_decay_epochs']))}" \
        if changes.get("lr_decay_epochs") else ""
    warmup = f", warm-up {changes['warmup_epochs']:.2g} epochs" if "warmup_epochs" in changes \
        else ""
    return f"{epochs:g} epochs{decay}{warmup}"
