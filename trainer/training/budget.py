"""--budget_minutes: fit a training run into a number of minutes of wall time.

The run's first moments time a few training steps (on a copy of the network, so the run itself is
untouched), a validation batch and a checkpoint's serialization; ``plan_epochs`` turns those into
the whole epochs that fit into what is left, and ``planned_changes`` gives the configuration values
that change with it: max_epoch, the step schedule's decay epochs (moved to the same fractions of
the shorter or longer run by ``stretch_decay_epochs``) and a recipe's warm-up (scaled likewise).
The other schedules span max_epoch by themselves.
"""
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


def plan_epochs(budget_seconds: float, spent_seconds: float, train_seconds_per_epoch: float,
                eval_seconds_per_epoch: float, save_seconds: float = 0.0,
                margin: float = 0.03) -> int:
    """Whole epochs that fit into what is left of a wall-time budget: (budget - spent), less a
    ``margin`` share kept in hand, divided by the time of one epoch (training, validation and a
    checkpoint); 0 when not even one fits."""
    per_epoch = train_seconds_per_epoch + eval_seconds_per_epoch + save_seconds
    left = (budget_seconds - spent_seconds) * (1 - margin)
    if per_epoch <= 0:
        raise ValueError("an epoch must take some time")
    return max(0, int(left // per_epoch))


def planned_changes(cfg, epochs: int, epoch_seconds: float) -> dict:
    """The configuration values a plan of ``epochs`` epochs changes, from cfg as the command line
    made it: max_epoch, the step schedule's decay epochs, and a warm-up that came from a recipe
    (scaled to the same share of the run). ConfigError when no epoch fits, or when an explicit
    --warmup_epochs fills the whole plan."""
    if epochs < 1:
        raise ConfigError(f"--budget_minutes {cfg.budget_minutes:g} leaves no time for one epoch "
                          f"at the measured speed (an epoch takes about {epoch_seconds:.0f} s); "
                          f"give more minutes.")
    changes = {"max_epoch": epochs}
    if cfg.lr_schedule == "step":
        changes["lr_decay_epochs"] = stretch_decay_epochs(cfg.lr_decay_epochs, cfg.max_epoch,
                                                          epochs)
    if cfg.from_recipe("warmup_epochs"):
        changes["warmup_epochs"] = cfg.warmup_epochs * epochs / cfg.max_epoch
    elif epochs <= cfg.warmup_epochs:
        raise ConfigError(f"--budget_minutes {cfg.budget_minutes:g} leaves time for {epochs} "
                          f"epoch(s) at the measured speed, no more than --warmup_epochs "
                          f"{cfg.warmup_epochs:g}; give more minutes or fewer warm-up epochs.")
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


def fit(model, images: torch.Tensor, labels: torch.Tensor, x_valid) -> dict:
    """Time ``model``'s steps on its training images (on the device); return the configuration
    values (``planned_changes``) that fit the run into config.budget_minutes, counted from
    model.started. The plan is printed. Under torchrun every rank takes the slowest rank's plan."""
    cfg, ctx, rt = model.config, model.dist, model.runtime
    slices = batch_slices(len(labels), cfg.batch_size, ctx.rank, ctx.world_size)
    order, offsets, flips = (t.to(model.device) for t in epoch_plan(len(labels), 1, cfg.seed,
                                                                       cfg.translate, cfg.flip))
    network = copy.deepcopy(model.network).train()
    # SGD's own rate (--decoupled scales it), so that the timed steps stay finite.
    optimizer = torch.optim.SGD(network.parameters(), lr=cfg.learning_rate * rate_scale(cfg),
                                momentum=cfg.momentum)
    warm, timed = 2, max(4, min(20, len(slices)))
    for i in range(warm + timed):
        if i == warm:
            _synchronize(model.device)
            start = time.perf_counter()
        positions = slices[i % len(slices)].to(model.device)
        index = order[positions]
        x = rt.prepare_images(images[index], True, offsets[positions], flips[positions])
        with rt.autocast():
            loss = F.cross_entropy(network(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize(model.device)
    step_seconds = (time.perf_counter() - start) / timed
    del network, optimizer
    eval_seconds = 0.0
    if x_valid is not None and len(x_valid):
        sample = x_valid[:min(len(x_valid), cfg.eval_batch_size)]
        begin = time.perf_counter()
        evaluate.logits(model, sample, "timing validation")
        _synchronize(model.device)
        eval_seconds = (time.perf_counter() - begin) * len(x_valid) / len(sample)
    begin = time.perf_counter()
    torch.save(state.snapshot(model, 0, {}, ""), io.BytesIO())
    save_seconds = 2 * (time.perf_counter() - begin)  # at most a best and a numbered one
    spent = time.monotonic() - model.started
    epoch_seconds = step_seconds * len(slices) + eval_seconds + save_seconds
    epochs = plan_epochs(cfg.budget_minutes * 60, spent, step_seconds * len(slices), eval_seconds,
                         save_seconds)
    epochs = distributed.agree_min(epochs, rt.collective_device())  # the slowest rank's
    changes = planned_changes(cfg, epochs, epoch_seconds)
    decay = f", decay after epochs {' '.join(map(str, changes['lr_decay_epochs']))}" \
        if "lr_decay_epochs" in changes else ""
    warmup = f", warm-up {changes['warmup_epochs']:.2g} epochs" if "warmup_epochs" in changes \
        else ""
    model.log(f"budget {cfg.budget_minutes:g} min: {spent:.0f} s spent starting, "
              f"{step_seconds * 1000:.0f} ms per step x {len(slices)} steps = "
              f"{step_seconds * len(slices):.0f} s per epoch, validation {eval_seconds:.1f} s, "
              f"checkpoint {save_seconds:.1f} s -> {epochs} epochs ({cfg.lr_schedule} "
              f"schedule{decay}{warmup})")
    return changes


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
