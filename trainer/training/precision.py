"""--amp auto on a CPU: choose the training precision by timing the run's own network.

bf16 autocast is much faster than fp32 on CPUs with AMX and several times slower on CPUs without
bf16 instructions, so ``choose`` times a few full training steps (forward under autocast,
cross-entropy, backward, an SGD step) in both precisions, interleaved, on a copy of the network
and a throwaway optimizer: the run itself, its weights and torch's random state, is untouched.
"""
import copy
import statistics
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.parallel import distributed
from trainer.training import runtime

# bf16 is kept only when its median step takes at most 1/1.15 of fp32's: a near tie would
# otherwise flip between runs of the same command with the noise of the timing.
BF16_MARGIN = 1.15
TIMING_IMAGES = 256  # at most this many images per timed step, whatever the batch size
TIMED_STEPS = 3  # timed steps per precision, after one warm-up step each


class Choice(NamedTuple):
    """The resolved --amp ("bf16" or "off") and the median seconds of one step in each."""
    amp: str
    bf16_seconds: float
    fp32_seconds: float


def pick(bf16_seconds: float, fp32_seconds: float) -> str:
    """"bf16" when its step time is clearly below fp32's (by BF16_MARGIN), else "off"."""
    return "bf16" if bf16_seconds * BF16_MARGIN <= fp32_seconds else "off"


def train_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, device_type: str, bf16: bool) -> None:
    """One training step on (x, y), under bf16 autocast or at full precision."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(network(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def choose(network: torch.nn.Module, rt, images: torch.Tensor, labels: torch.Tensor,
           steps: int = TIMED_STEPS, clock=time.perf_counter) -> Choice:
    """Time ``steps`` training steps in fp32 and in bf16 autocast, interleaved, after one warm-up
    step each, on a copy of ``network`` (on rt.device) and the first TIMING_IMAGES of ``images``
    (the network's float input) and ``labels``; return the Choice. ``clock``: seconds, read
    before and after each timed step (tests give fake ones)."""
    x, y = images[:TIMING_IMAGES], labels[:TIMING_IMAGES].to(images.device)
    copy_ = copy.deepcopy(network).train()
    optimizer = torch.optim.SGD(copy_.parameters(), lr=1e-3)  # small, so the steps stay finite
    rng = torch.get_rng_state()  # a network that draws (dropout) must not move the run's draws
    try:
        for bf16 in (False, True):
            train_step(copy_, optimizer, x, y, rt.device.type, bf16)
        seconds = {False: [], True: []}
        for _ in range(steps):
            for bf16 in (False, True):
                start = clock()
                train_step(copy_, optimizer, x, y, rt.device.type, bf16)
                seconds[bf16].append(clock() - start)
    finally:
        torch.set_rng_state(rng)
    bf16_median, fp32_median = statistics.median(seconds[True]), statistics.median(seconds[False])
    return Choice(pick(bf16_median, fp32_median), bf16_median, fp32_median)


def agreed(choice: Choice, rt) -> Choice:
    """The choice every rank takes under torchrun: bf16 only if every rank found it faster, so
    that all ranks train alike (the choice itself outside torchrun)."""
    if not rt.context.distributed:
        return choice
    everywhere = distributed.agree_min(int(choice.amp == "bf16"), rt.collective_device())
    return choice._replace(amp="bf16" if everywhere else "off")


def set_amp(model, amp: str) -> None:
    """Settle a run's --amp at ``amp``: the config (which config.json and the checkpoints
    record) and the precision its steps run in. The loss scaler needs no change: it only acts
    under fp16, which ``amp`` is not here (bf16 or off)."""
    model.config.amp = amp
    model.runtime.amp_dtype = runtime.amp_dtype(amp, model.runtime.device)
    model.amp_dtype = model.runtime.amp_dtype


def settle(model, images: torch.Tensor, labels: torch.Tensor) -> None:
    """--amp auto on a CPU, at a fresh run's start: time bf16 and fp32 steps of the run's
    network on its first training images (uint8 on the device) and keep the faster (``choose``,
    ``agreed``); log the choice and the flag that pins it."""
    rt = model.runtime
    n = min(model.config.batch_size, TIMING_IMAGES)
    x = rt.prepare_images(images[:n], False)  # standardized; no crop or flip, no random draws
    choice = agreed(choose(model.network, rt, x, labels[:n]), rt)
    set_amp(model, choice.amp)
    model.log(describe(choice))


def describe(choice: Choice) -> str:
    """The line a run logs about its choice, with the flag that pins it."""
    chosen = "bf16" if choice.amp == "bf16" else "fp32"
    return (f"amp auto: bf16 {choice.bf16_seconds:.3f} s/step, fp32 {choice.fp32_seconds:.3f} "
            f"s/step on this CPU -> {chosen} (--amp {choice.amp})")
