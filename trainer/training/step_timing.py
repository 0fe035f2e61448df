"""Timing the run's own training step: the one way the budget, the width chooser and --amp auto
measure a step.

A ``StepTimer`` takes real steps of a model (trainer.training.steps, through the model's own
training network: DistributedDataParallel under torchrun, the compiled network with --compile,
fp16's loss scaler, label smoothing, L1, lookahead, EMA) on batches of its training images as the
first epoch would draw them, and puts everything back when it ends: weights and buffers,
optimizer and loss-scaler state, the weight averages, the random states. What it leaves is what
``steps.begin_epoch`` sets, a pure function of the epoch that every epoch sets again: training
mode, a frozen or free backbone (--freeze_epochs) and the training network built for it. Under
fp16 a step whose gradients overflow skips the optimizer's update, as the run's would. The first
step it takes is the warm-up (it compiles with --compile, and cuDNN's autotuner tries its
algorithms), so the time it takes counts as time spent, not as the speed of a step.

Under torchrun each step's time is the slowest rank's (one collective after the clock is read),
so every rank sees the same times, and any rule that decides from them how many steps to take
takes the same number on every rank: no rank stops timing on its own clock while another waits
in a collective.
"""
import contextlib
import copy
import time

import torch

from trainer.parallel import distributed
from trainer.run import contents
from trainer.training import steps as training_steps
from trainer.training.batches import batch_slices, epoch_plan, global_batch_sizes


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slowest(seconds: float, rt) -> float:
    """The largest of the ranks' ``seconds`` (alone, seconds itself), to the microsecond."""
    if not rt.context.distributed:
        return seconds
    return distributed.agree_max(int(round(seconds * 1e6)), rt.collective_device()) / 1e6


class StepTimer:
    """``with StepTimer(model, images, labels) as timer: timer.step()``: the seconds of one real
    training step of ``model`` on its training ``images`` ((N, 3, 32, 32) uint8 on the device)
    and ``labels``; on leaving, the model is as it was. ``clock``: seconds (tests give fake
    ones)."""

    def __init__(self, model, images: torch.Tensor, labels: torch.Tensor,
                 clock=time.perf_counter, epoch: int = 1):
        self.model, self.images, self.labels, self.clock = model, images, labels, clock
        self.epoch = epoch  # whose state the steps are taken in (--freeze_epochs)
        cfg, ctx = model.config, model.dist
        n = len(labels)
        self.slices = batch_slices(n, cfg.batch_size, ctx.rank, ctx.world_size)
        self.global_sizes = global_batch_sizes(n, cfg.batch_size, ctx.world_size)
        order, offsets, flips = epoch_plan(n, 1, cfg.seed, cfg.translate, cfg.flip)
        device = model.runtime.device
        self.order, self.offsets, self.flips = (t.to(device) for t in (order, offsets, flips))
        self.taken = 0
        self.saved = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.slices)

    @property
    def images_per_step(self) -> int:
        """Images a step trains over all ranks (the first step's global batch)."""
        return self.global_sizes[0]

    def __enter__(self):
        m = self.model
        self.saved = {
            "network": {k: v.detach().clone() for k, v in m.network.state_dict().items()},
            "optimizer": copy.deepcopy(m.optimizer.state_dict()),
            "scaler": copy.deepcopy(m.scaler.state_dict()),
            "ema": None if m.ema is None else copy.deepcopy(m.ema.state_dict()),
            "lookahead": None if m.lookahead is None else copy.deepcopy(m.lookahead.state_dict()),
            "rng": contents.capture_rng_states(),
            "training": m.network.training,
        }
        training_steps.begin_epoch(m, self.epoch)
        return self

    def __exit__(self, *exc):
        m, saved = self.model, self.saved
        with torch.no_grad():
            m.network.load_state_dict(saved["network"])
        m.optimizer.load_state_dict(saved["optimizer"])
        m.optimizer.zero_grad(set_to_none=True)
        if m.scaler.is_enabled() and saved["scaler"]:
            m.scaler.load_state_dict(saved["scaler"])
        if m.ema is not None:
            m.ema.load_state_dict(saved["ema"])
        if m.lookahead is not None:
            m.lookahead.load_state_dict(saved["lookahead"])
        contents.restore_rng_states(saved["rng"])
        m.network.train(saved["training"])
        return False

    def step(self) -> float:
        """Take the next step of the first epoch's plan; its seconds (the slowest rank's)."""
        m = self.model
        rt = m.runtime
        i = self.taken % len(self.slices)
        positions = self.slices[i].to(rt.device)
        synchronize(rt.device)
        start = self.clock()
        index = self.order[positions]
        x = rt.prepare_images(self.images[index], True, self.offsets[positions],
                              self.flips[positions])
        training_steps.set_rates(m, 1, i, len(self.slices))
        training_steps.train_step(m, x, self.labels[index], self.global_sizes[i])
        training_steps.after_step(m, 1, i, len(self.slices))
        synchronize(rt.device)
        seconds = self.clock() - start
        self.taken += 1
        return slowest(seconds, rt)

    def steps(self, count: int) -> list:
        """The seconds of each of ``count`` more steps."""
        return [self.step() for _ in range(count)]


@contextlib.contextmanager
def timing(model, images: torch.Tensor, labels: torch.Tensor, clock=time.perf_counter,
           epoch: int = 1):
    """A StepTimer (its steps in the state of ``epoch``) whose first step, the warm-up, is
    already taken."""
    with StepTimer(model, images, labels, clock, epoch) as timer:
        timer.step()
        yield timer
