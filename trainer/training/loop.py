"""The training loop: ``fit`` runs the epochs of a run, ``train_one_epoch`` the steps of one.

The training split lives once on the training device as a uint8 tensor (N, 3, 32, 32); each batch is
cropped, flipped and standardized there (``Runtime.prepare_images``), so no Python runs per image.
The order of an epoch and its augmentation are drawn from a generator seeded by (seed, epoch): any
process can rebuild any epoch's plan, which is what makes resuming exact and lets several processes
split one epoch between them.

The functions take a ``model``: anything with the ``config``, ``dist``, ``log``, ``runtime``,
``network``, ``optimizer``, ``scaler``, ``ema``, ``lookahead``, ``train_net``, ``epoch``,
``history``, ``epochs_trained``, ``epoch_callbacks`` and ``validate`` of Model.MyModel, which they
train.
"""
import copy
import math
import signal
import time
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import ImageUtils
from configure import ConfigError, applies
from trainer.evaluation.evaluate import bars_off, to_image_tensor
from trainer.parallel import distributed
from trainer.run import state
from trainer.run.checkpoints import CheckpointError, list_checkpoints
from trainer.run.folder import RunFolder
from trainer.training import (budget, precision, schedules, steps, stop_requests,
                              timing_cache, whitening)
from trainer.training.batches import batch_slices, epoch_plan, global_batch_sizes


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss is no longer finite)."""


class TrainingStopped(Exception):
    """A signal asked training to stop; a checkpoint has been written."""

    def __init__(self, signum: int, path: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}; progress saved to {path}")
        self.signum = signum
        self.path = path


# --------------------------------------------------------------------------------------------
# Resuming

def open_resume(model, resume, overwrite: bool = False, data_digest: str = None):
    """(path, checkpoint, the names of the later checkpoints that retraining from it drops) of a
    checked resume; model.config adopts what the checkpoint's run planned (a budget's epochs)."""
    cfg = model.config
    path, ckpt = state.resume_source(cfg.modeldir, resume, model.log)
    adopted = state.check_same_run(ckpt, path, cfg, model.network,
                                   [p for g in model.optimizer.param_groups for p in g["params"]],
                                   data_digest)
    for key, value in adopted.items():
        setattr(cfg, key, value)
    if cfg.amp == "auto" and model.runtime.device.type == "cpu":
        # The run chose its precision when it began (precision.settle): it keeps it, not measured
        # again. A checkpoint from before that choice (auto) ran at full precision on a CPU.
        stored = ckpt["config"].get("amp")
        precision.set_amp(model, stored if stored in ("bf16", "off") else "off")
    later = state.later_files(resume, path, ckpt, overwrite, cfg.modeldir, cfg.max_epoch)
    return path, ckpt, later


def resume(model, resume, data_digest: str, overwrite: bool = False):
    """Restore everything from the requested checkpoint; return (step, partial, the names of
    the later checkpoints that retraining from it drops)."""
    path, ckpt, later = open_resume(model, resume, overwrite, data_digest)
    step, partial = state.restore(model, ckpt, path)
    return step, partial, later


# --------------------------------------------------------------------------------------------
# The run

class RunSetup(NamedTuple):
    """What a run prepares before its first epoch: its training images ((N, 3, 32, 32) uint8) and
    labels on the device, and for a --budget_minutes run planned here, the configuration as the
    command line made it (``budget_base``, which replans start from) and the times the plan was
    made from (``budget_timing``); both None otherwise."""
    images: torch.Tensor
    labels: torch.Tensor
    budget_base: object = None
    budget_timing: object = None


def prepare_run(model, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                fresh: bool) -> RunSetup:
    """Everything a run settles before its first epoch, in order: --normalize dataset's channel
    statistics, --whiten's first layer (``fresh`` runs only: resumed, the weights come from the
    checkpoint), the training split on the device, --amp auto on a CPU (fresh runs; resumed, the
    checkpoint's), and a --budget_minutes plan (fresh runs; resumed, the checkpoint's). Any of them
    may refuse the run (ConfigError); none leaves a file (the budget times a checkpoint's
    write into a temporary it removes)."""
    cfg, rt = model.config, model.runtime
    if cfg.normalize == "dataset" and rt.mean_std is None:  # once, from the training split
        mean, std = ImageUtils.channel_stats(x_train)
        rt.mean_std = (torch.from_numpy(mean).to(rt.device), torch.from_numpy(std).to(rt.device))
    if cfg.whiten and applies("whiten", cfg.network) and fresh:
        whitening.initialise(model, x_train)
    images = to_image_tensor(x_train).to(rt.device)  # (N, 3, 32, 32) uint8, once
    labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(rt.device)
    if fresh and cfg.amp == "auto" and rt.device.type == "cpu":
        # before the budget, which times steps in it
        precision.settle(model, images, labels, cache=timing_cache.TimingCache(log=model.log))
    if not (cfg.budget_minutes and fresh):
        return RunSetup(images, labels)
    base = copy.copy(cfg)
    changes, timing = budget.fit(model, images, labels, x_valid)
    for key, value in changes.items():
        setattr(cfg, key, value)  # the plan: the records hold what runs
    return RunSetup(images, labels, base, timing)


def fit(model, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
        digest: str, resume_from=None, overwrite: bool = False) -> list:
    """Train model for config.max_epoch epochs; return the metrics of every epoch (a list of
    dicts). ``digest``: the training data's fingerprint, which checkpoints record. See
    Model.MyModel.train for the other arguments. Whatever may refuse the run (the folder, the
    resume, the budget's plan) does so before --overwrite removes an earlier run's files and
    before the run's records begin."""
    cfg, main = model.config, model.dist.is_main
    folder = RunFolder(model)
    model.epochs_trained, later, best_kept = 0, [], None
    # Under torchrun a refusal on any rank (rank 0 alone checks and prepares the folder) stops
    # every rank, and rank 0 says it.
    with distributed.all_or_none(CheckpointError, ConfigError):
        if resume_from is None:
            folder.check_fresh_start(overwrite)  # refuses; --overwrite removes only below
            start_step, partial = 0, None
        else:
            start_step, partial, later = resume(model, resume_from, digest, overwrite)
        if model.epoch >= cfg.max_epoch:  # nothing is written when nothing is trained
            model.log(f"nothing to train: {model.epoch} epochs done and --max_epoch is "
                      f"{cfg.max_epoch}; raise --max_epoch to train further.")
            return model.history
    with distributed.all_or_none(ConfigError):
        setup = prepare_run(model, x_train, y_train, x_valid, fresh=resume_from is None)
    pause_at = stop_requests.pause_point(model.dist.rank)
    with distributed.all_or_none(CheckpointError):
        if main:
            if resume_from is None:
                folder.clear_earlier_run(overwrite)
            best_kept = folder.prepare(later, model.epoch)
        else:
            partial = None  # the sums of an interrupted epoch are rank 0's to carry
        folder.start_records({"dataset": cfg.dataset,
                              "data_dir": cfg.data_dir, "train_images": len(x_train),
                              "valid_images": 0 if x_valid is None else len(x_valid),
                              "processes": model.dist.world_size}, model.history)

    with stop_requests.StopRequests(model.dist.distributed) as stop:
        epoch = model.epoch
        while epoch < cfg.max_epoch:  # a budget's replan may move max_epoch after each epoch
            epoch += 1
            metrics = train_one_epoch(model, epoch, setup.images, setup.labels, start_step,
                                      partial, stop, folder, digest, pause_at)
            start_step, partial = 0, None
            replanned = False
            if setup.budget_base is not None and epoch < cfg.max_epoch:  # planned here
                changes = budget.replan(model, setup.budget_base, setup.budget_timing, epoch,
                                        metrics["seconds"])
                for key, value in changes.items():
                    setattr(cfg, key, value)
                replanned = bool(changes)
            if epoch == cfg.max_epoch:  # the run's end, where it was planned or a replan put it
                finish(model)
            began = time.perf_counter()
            if x_valid is not None and len(x_valid):
                metrics["valid_acc"], metrics["valid_loss"] = model.validate(x_valid, y_valid)
                if setup.budget_timing is not None:  # what the next replan counts
                    setup.budget_timing.eval_seconds = time.perf_counter() - began
            if replanned:
                folder.plan_changed()
            best_before = max([m["valid_acc"] for m in model.history if "valid_acc" in m]
                              + ([] if best_kept is None else [best_kept]), default=None)
            model.epoch = epoch
            model.epochs_trained += 1
            model.history.append(metrics)
            model.log(epoch_line(metrics, cfg.max_epoch))
            if main:
                folder.record(metrics)
                for callback in model.epoch_callbacks:
                    callback(metrics)
            saved = folder.save_epoch(epoch, metrics, best_before, digest)
            signum = agreed_stop(model, stop)
            if signum and epoch < cfg.max_epoch:  # came during validation
                if saved is None:
                    saved = folder.save_interrupted(data_digest=digest)
                distributed.barrier()  # no rank leaves before the checkpoint is written
                raise TrainingStopped(signum, saved)
    if not distributed.parameters_agree(model.network):
        raise TrainingError("the processes ended training with different weights, so the "
                            "run is not data-parallel; please report this.")
    distributed.barrier()
    return model.history


def finish(model) -> None:
    """The end of the run's last epoch: the network takes lookahead's slow weights (the last
    checkpoint and the validation after it then hold them)."""
    if model.lookahead is not None:
        model.lookahead.finish(model.network)


# --------------------------------------------------------------------------------------------
# One epoch

def train_one_epoch(model, epoch: int, images: torch.Tensor, labels: torch.Tensor,
                    start_step: int, partial, stop, folder: RunFolder, digest: str,
                    pause_at=None) -> dict:
    """Train epoch ``epoch`` from ``start_step`` on (its running sums ``partial`` carried over
    from an interrupted run); return its metrics. A stop request saves interrupted.ckpt after the
    step in progress and raises TrainingStopped."""
    cfg, world, rt = model.config, model.dist.world_size, model.runtime
    device = rt.device
    n = len(labels)
    order, offsets, flips = epoch_plan(n, epoch, cfg.seed, cfg.translate, cfg.flip)
    order = order.to(device, non_blocking=True)
    offsets = offsets.to(device, non_blocking=True)
    flips = flips.to(device, non_blocking=True)
    slices = [p.to(device, non_blocking=True)
              for p in batch_slices(n, cfg.batch_size, model.dist.rank, world)]
    global_sizes = global_batch_sizes(n, cfg.batch_size, world)

    partial = partial or {}
    loss_sum = torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64, device=device)
    correct = torch.tensor(partial.get("correct", 0), dtype=torch.int64, device=device)
    seen = seen_before = int(partial.get("seen", 0))
    seconds = float(partial.get("seconds", 0.0))
    steps.begin_epoch(model, epoch)
    start = time.perf_counter()
    count = schedules.epoch_steps(cfg, epoch, len(slices))  # fewer in a budget's last epoch
    bar = tqdm(total=count, initial=start_step, desc=f"epoch {epoch}/{cfg.max_epoch}",
               leave=False, disable=bars_off(cfg, model.dist), unit="batch")
    lr = None
    for step in range(start_step, count):
        if pause_at == (epoch, step):
            stop_requests.wait_for_signal(stop, epoch, step)
        lr = steps.set_rates(model, epoch, step, len(slices))
        positions = slices[step]
        index = order[positions]
        x = rt.prepare_images(images[index], True, offsets[positions], flips[positions])
        y = labels[index]
        logits, reported = steps.train_step(model, x, y, global_sizes[step])
        steps.after_step(model, epoch, step, len(slices))

        loss_sum += reported.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if step % 50 == 0 and not bar.disable:
            rate = (seen - seen_before) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                            acc=f"{100 * correct.item() / seen:.1f}%", img_s=f"{rate:.0f}")
        signum = agreed_stop(model, stop)
        if signum:
            bar.close()
            loss_total, correct_total, seen_total = epoch_totals(model, loss_sum, correct, seen)
            check_finite(cfg, loss_total, epoch)
            part = {"loss_sum": loss_total, "correct": correct_total, "seen": seen_total,
                    "seconds": seconds + time.perf_counter() - start}
            path = folder.save_interrupted(step=step + 1, partial=part, data_digest=digest)
            distributed.barrier()  # no rank leaves before the checkpoint is written
            raise TrainingStopped(signum, path)
    bar.close()
    distributed.broadcast_buffers(model.network)  # rank 0's running statistics, everywhere
    if model.ema is not None:
        distributed.broadcast_buffers(model.ema.network)
    if model.lookahead is not None:
        distributed.broadcast_buffers(model.lookahead.network)
    loss_total, correct_total, seen = epoch_totals(model, loss_sum, correct, seen)
    check_finite(cfg, loss_total, epoch)
    elapsed = time.perf_counter() - start
    # Resumed at the epoch's very end, this process trained nothing: report the epoch's rate.
    rate = (seen - seen_before) / max(elapsed, 1e-9) if seen > seen_before else \
        seen / max(seconds + elapsed, 1e-9)
    if lr is None:  # resumed at the epoch's very end
        lr = schedules.lr_at_step(cfg, epoch, count - 1, len(slices))
    return {"epoch": epoch, "lr": lr, "train_loss": loss_total / max(seen, 1),
            "train_acc": correct_total / max(seen, 1), "seconds": seconds + elapsed,
            "images_per_second": rate}


def epoch_totals(model, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int):
    """(loss sum, correct, seen) of the epoch so far over all ranks, as Python numbers."""
    if not model.dist.distributed:
        return loss_sum.item(), int(correct.item()), seen
    loss_total, correct_total, seen_total = distributed.sum_over_ranks(
        [loss_sum, correct, seen], model.runtime.collective_device())
    return loss_total, int(correct_total), int(seen_total)


def agreed_stop(model, stop) -> int:
    """The signal number of a stop any rank was asked for (0 if none), the same on all ranks."""
    if not model.dist.distributed:
        return stop.signum or 0
    return distributed.agree_max(stop.signum or 0, model.runtime.collective_device())


def check_finite(cfg, loss_sum: float, epoch: int) -> None:
    """TrainingError, naming the last good checkpoint, when the epoch's loss is not finite."""
    if not math.isfinite(loss_sum):
        last = list_checkpoints(cfg.modeldir)
        kept = f"the last good checkpoint (model-{last[-1]}.ckpt) is kept" if last else \
            "no checkpoint was written"
        rate = f"--learning_rate (--recipe {cfg.recipe} sets {cfg.learning_rate:g})" \
            if cfg.from_recipe("learning_rate") else "--learning_rate"
        lower = f"{rate} or --l1" if cfg.l1 else rate
        raise TrainingError(f"the training loss became NaN or infinite in epoch {epoch}; "
                            f"{kept}. Lower {lower}, or check the data.")


def epoch_line(m: dict, max_epoch: int) -> str:
    """The line printed after each epoch."""
    valid = f"  valid {100 * m['valid_acc']:6.2f}%" if "valid_acc" in m else ""
    return (f"epoch {m['epoch']:>3}/{max_epoch}  lr {m['lr']:.4g}  loss "
            f"{m['train_loss']:.4f}  train {100 * m['train_acc']:6.2f}%{valid}  "
            f"{m['seconds']:.1f} s  {m['images_per_second']:.0f} img/s")
