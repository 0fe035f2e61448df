"""--budget_minutes: fit a training run into a number of minutes of wall time.

The run's first moments time a few training steps (on a copy of the network, so the run itself is
untouched), a validation batch and a checkpoint's serialization; ``plan_epochs`` turns those into
the epochs that fit into what is left (the last one may be a share of an epoch, so that the budget
is spent rather than left over), and ``planned_changes`` gives the configuration values that change
with it: max_epoch and final_epoch_share, the step schedule's decay epochs (moved to the same
fractions of the shorter or longer run by ``stretch_decay_epochs``) and a recipe's warm-up (scaled
likewise). The other schedules span the run by themselves. Once the first epoch has run, ``replan``
plans the rest again from its real time (``fit`` times only a few steps).
"""
import math
import copy
import io
import time

import torch
import torch.nn.functional as F

from trainer.evaluation import evaluate
from trainer.parallel import distributed
from trainer.run import state
from trainer.training.batches import batch_slices, epoch_plan
from trainer.training.runtime import rate_scale
from configure import ConfigError


MIN_TIMED, MAX_TIMED = 2, 20  # training steps timed, after one that warms up
TIMING_SECONDS = 2.0  # past MIN_TIMED steps, no more are timed once this much time went by
MIN_EPOCHS = 0.1  # a plan shorter than this share of an epoch is refused
MIN_SHARE = 0.05  # a last epoch shorter than this share is dropped rather than begun


def plan_epochs(budget_seconds: float, spent_seconds: float, train_seconds_per_epoch: float,
                eval_seconds_per_epoch: float, save_seconds: float = 0.0,
                margin: float = 0.02) -> float:
    """Epochs that fit into what is left of a wall-time budget, (budget - spent) less a ``margin``
    share kept in hand: as many whole epochs (training, validation and a checkpoint) as fit, and
    then the share of one more epoch's training that fits beside its validation and checkpoint
    (rounded down to 1/1000); 0 when nothing fits."""
    per_epoch = train_seconds_per_epoch + eval_seconds_per_epoch + save_seconds
    if per_epoch <= 0 or train_seconds_per_epoch <= 0:
        raise ValueError("an epoch must take some time")
    left = (budget_seconds - spent_seconds) * (1 - margin)
    if left <= 0:
        return 0.0
    whole = int(left // per_epoch)
    rest = left - whole * per_epoch - eval_seconds_per_epoch - save_seconds
    share = max(0.0, rest / train_seconds_per_epoch)
    share = math.floor(share * 1000) / 1000
    return float(whole) + (share if share >= MIN_SHARE else 0.0)


def split_epochs(epochs: float):
    """(max_epoch, final_epoch_share) of a plan of ``epochs`` (possibly fractional) epochs."""
    whole = max(1, math.ceil(epochs - 1e-9))
    share = round(epochs - (whole - 1), 6)
    return whole, min(1.0, share)


def planned_changes(cfg, epochs: float, epoch_seconds: float) -> dict:
    """The configuration values a plan of ``epochs`` (possibly fractional) epochs changes, from
    cfg as the command line made it: max_epoch and final_epoch_share, the step schedule's decay
    epochs, and a warm-up that came from a recipe (scaled to the same share of the run).
    ConfigError when too little of an epoch fits, or when an explicit --warmup_epochs fills the
    whole plan."""
    if epochs < MIN_EPOCHS:
        raise ConfigError(f"--budget_minutes {cfg.budget_minutes:g} leaves no time for one epoch "
                          f"at the measured speed, nor for a tenth of one (an epoch takes about "
                          f"{epoch_seconds:.0f} s); give more minutes.")
    whole, share = split_epochs(epochs)
    changes = {"max_epoch": whole, "final_epoch_share": share}
    if cfg.lr_schedule == "step":
        changes["lr_decay_epochs"] = stretch_decay_epochs(cfg.lr_decay_epochs, cfg.max_epoch,
                                                          whole)
    if cfg.from_recipe("warmup_epochs"):
        changes["warmup_epochs"] = cfg.warmup_epochs * epochs / cfg.max_epoch
    elif epochs <= cfg.warmup_epochs:
        raise ConfigError(f"--budget_minutes {cfg.budget_minutes:g} leaves time for {epochs:g} "
                          f"epoch(s) at the measured speed, no more than --warmup_epochs "
                          f"{cfg.warmup_epochs:g}; give more minutes or fewer warm-up epochs.")
    return changes


def describe(changes: dict) -> str:
    """'12.4 epochs (onecycle schedule, warm-up 1.6 epochs)' for a plan's changes."""
    epochs = changes["max_epoch"] - 1 + changes["final_epoch_share"]
    decay = f", decay after epochs {' '.join(map(str, changes['lr_decay_epochs']))}" \
        if "lr_decay_epochs" in changes else ""
    warmup = f", warm-up {changes['warmup_epochs']:.2g} epochs" if "warmup_epochs" in changes \
        else ""
    return f"{epochs:g} epochs{decay}{warmup}"


def replan(model, base, timing: dict, epoch: int, train_seconds: float,
           eval_seconds: float) -> dict:
    """After each whole epoch but the last of a budget run planned in this process, before the
    epoch's checkpoint, which then holds the plan that runs: the changes (as
    ``planned_changes``) that fit the rest of the run into the budget at that epoch's real
    times, ``train_seconds`` of training and ``eval_seconds`` of validation; {} when the plan
    stands (the same length, or a new one that an explicit warm-up would not fit). The machine's
    speed may change during a run (another process starts or ends), and the plan follows it.
    ``base``: the configuration as the command line made it, before the first plan;
    ``timing``: what ``fit`` measured. Under torchrun every rank takes the slowest rank's
    plan."""
    cfg = model.config
    spent = time.monotonic() - model.started
    other_seconds = eval_seconds + timing["save_seconds"]
    rest = plan_epochs(cfg.budget_minutes * 60, spent, train_seconds, other_seconds)
    rest = distributed.agree_min(int(rest * 1000), model.runtime.collective_device()) / 1000
    epoch_seconds = train_seconds + other_seconds
    planned_seconds = timing.get("last_epoch_seconds", timing["epoch_seconds"])
    timing["last_epoch_seconds"] = epoch_seconds
    epochs = epoch + rest
    old = cfg.max_epoch - 1 + cfg.final_epoch_share
    if abs(epochs - old) < 0.01 or (not base.from_recipe("warmup_epochs")
                                    and epochs <= base.warmup_epochs):
        return {}
    changes = planned_changes(base, epochs, epoch_seconds)
    model.log(f"budget {cfg.budget_minutes:g} min: epoch {epoch} took {epoch_seconds:.0f} s "
              f"against {planned_seconds:.0f} s before -> {describe(changes)} in all")
    return changes


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


def fit(model, images: torch.Tensor, labels: torch.Tensor, x_valid):
    """Time ``model``'s steps on its training images (on the device); return the configuration
    values (``planned_changes``) that fit the run into config.budget_minutes, counted from
    model.started, and the times measured ({"epoch_seconds", "save_seconds"}, for ``replan``).
    The plan is printed. Under torchrun every rank takes the slowest rank's plan."""
    cfg, ctx, rt = model.config, model.dist, model.runtime
    slices = batch_slices(len(labels), cfg.batch_size, ctx.rank, ctx.world_size)
    order, offsets, flips = (t.to(model.device) for t in epoch_plan(len(labels), 1, cfg.seed,
                                                                       cfg.translate, cfg.flip))
    network = copy.deepcopy(model.network).train()
    # SGD's own rate (--decoupled scales it), so that the timed steps stay finite.
    optimizer = torch.optim.SGD(network.parameters(), lr=cfg.learning_rate * rate_scale(cfg),
                                momentum=cfg.momentum)
    # One step warms up; then at least MIN_TIMED steps, more (up to MAX_TIMED) while they take
    # less than TIMING_SECONDS in all, so that large batches on a slow device cost little.
    timed, start = 0, None
    for i in range(1 + MAX_TIMED):
        if i == 1:
            _synchronize(model.device)
            start = time.perf_counter()
        elif i > MIN_TIMED and time.perf_counter() - start >= TIMING_SECONDS:
            break
        positions = slices[i % len(slices)].to(model.device)
        index = order[positions]
        x = rt.prepare_images(images[index], True, offsets[positions], flips[positions])
        with rt.autocast():
            loss = F.cross_entropy(network(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            timed += 1
            _synchronize(model.device)
    step_seconds = (time.perf_counter() - start) / timed
    del network, optimizer
    eval_seconds = 0.0
    if x_valid is not None and len(x_valid):
        sample = x_valid[:min(len(x_valid), cfg.eval_batch_size)]
        begin = time.perf_counter()
        evaluate.logits(model, sample, "timing validation", tta="off")
        _synchronize(model.device)
        eval_seconds = (time.perf_counter() - begin) * len(x_valid) / len(sample)
    begin = time.perf_counter()
    torch.save(state.snapshot(model, 0, {}, ""), io.BytesIO())
    save_seconds = 2 * (time.perf_counter() - begin)  # at most a best and a numbered one
    spent = time.monotonic() - model.started
    epoch_seconds = step_seconds * len(slices) + eval_seconds + save_seconds
    epochs = plan_epochs(cfg.budget_minutes * 60, spent, step_seconds * len(slices), eval_seconds,
                         save_seconds)
    # The slowest rank's, in thousandths of an epoch.
    epochs = distributed.agree_min(int(round(epochs * 1000)), rt.collective_device()) / 1000
    changes = planned_changes(cfg, epochs, epoch_seconds)
    model.log(f"budget {cfg.budget_minutes:g} min: {spent:.0f} s spent starting, "
              f"{step_seconds * 1000:.0f} ms per step x {len(slices)} steps = "
              f"{step_seconds * len(slices):.0f} s per epoch, validation {eval_seconds:.1f} s, "
              f"checkpoint {save_seconds:.1f} s -> {describe(changes)} ({cfg.lr_schedule} "
              f"schedule)")
    return changes, {"epoch_seconds": epoch_seconds, "save_seconds": save_seconds}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
