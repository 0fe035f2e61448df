"""--amp auto on a CPU: choose the training precision by timing the run's own step.

Whether bf16 autocast pays on a CPU depends on the CPU: measured here (BENCHMARKS.md), an Intel
Xeon without AVX-512 BF16 or AMX trained 3.3 to 4.5 times slower in bf16 than in fp32, and an AMD
EPYC with AVX-512 BF16 1.7 to 1.8 times faster. So ``choose`` times the run's own training step
(trainer.training.step_timing, which puts the run back as it was) in both precisions,
interleaved, and ``settle`` keeps the faster. It is settled once per run, on the first network
the run builds: the width chooser's reference network for --recipe speed, else the run's own.
"""
import statistics
import time
from typing import NamedTuple

from trainer.training import runtime
from trainer.training.batches import global_batch_sizes
from trainer.training.step_timing import StepTimer

# bf16 is kept only when its median step takes at most 1/1.15 of fp32's: a near tie would
# otherwise flip between runs of the same command with the noise of the timing.
BF16_MARGIN = 1.15
TIMED_STEPS = 3  # timed steps per precision, after one warm-up step each


class Choice(NamedTuple):
    """The resolved --amp ("bf16" or "off") and the median seconds of one step in each, and
    whether they were remembered (timing_cache) rather than timed now."""
    amp: str
    bf16_seconds: float
    fp32_seconds: float
    remembered: bool = False

    @property
    def seconds(self) -> float:
        """The median seconds of a step in the precision chosen."""
        return self.bf16_seconds if self.amp == "bf16" else self.fp32_seconds


def pick(bf16_seconds: float, fp32_seconds: float) -> str:
    """"bf16" when its step time is clearly below fp32's (by BF16_MARGIN), else "off"."""
    return "bf16" if bf16_seconds * BF16_MARGIN <= fp32_seconds else "off"


def choose(model, images, labels, steps: int = TIMED_STEPS, clock=time.perf_counter,
           cache=None) -> Choice:
    """Time ``steps`` of model's training steps in fp32 and in bf16 autocast, interleaved, after
    one warm-up step each, on its training ``images`` ((N, 3, 32, 32) uint8 on the device) and
    ``labels``; return the Choice. The model is left as it was, its --amp included. Under
    torchrun each time is the slowest rank's, so every rank chooses alike. ``clock``: seconds,
    read before and after each step (tests give fake ones). With a ``cache``
    (timing_cache.TimingCache), times it remembers for both precisions are taken instead, and
    new ones are remembered."""
    amp_before = model.config.amp
    per_step = global_batch_sizes(len(labels), model.config.batch_size, model.dist.world_size)[0]
    if cache is not None:
        remembered = {}
        try:
            for amp in ("bf16", "off"):
                set_amp(model, amp)
                remembered[amp] = cache.lookup(model)
        finally:
            set_amp(model, amp_before)
        if all(remembered.values()):
            bf16, fp32 = remembered["bf16"] * per_step, remembered["off"] * per_step
            return Choice(pick(bf16, fp32), bf16, fp32, remembered=True)
    seconds = {"off": [], "bf16": []}
    try:
        with StepTimer(model, images, labels, clock) as timer:
            for amp in seconds:
                set_amp(model, amp)
                timer.step()
            for _ in range(steps):
                for amp in seconds:
                    set_amp(model, amp)
                    seconds[amp].append(timer.step())
    finally:
        set_amp(model, amp_before)
    bf16_median, fp32_median = statistics.median(seconds["bf16"]), statistics.median(seconds["off"])
    if cache is not None:
        try:
            for amp, median in (("bf16", bf16_median), ("off", fp32_median)):
                set_amp(model, amp)
                cache.remember(model, median / per_step)
        finally:
            set_amp(model, amp_before)
    return Choice(pick(bf16_median, fp32_median), bf16_median, fp32_median)


def set_amp(model, amp: str) -> None:
    """Settle a run's --amp at ``amp``: the config (which config.json and the checkpoints
    record) and the precision its steps run in. The loss scaler needs no change: it only acts
    under fp16, which ``amp`` is not here (bf16, off, or auto on a CPU, which is off)."""
    model.config.amp = amp
    model.runtime.amp_dtype = runtime.amp_dtype(amp, model.runtime.device)
    model.amp_dtype = model.runtime.amp_dtype


def settle(model, images, labels, clock=time.perf_counter, cache=None) -> Choice:
    """--amp auto on a CPU, at a fresh run's start: keep the faster precision of ``choose`` and
    log it with the flag that pins it; return the Choice."""
    choice = choose(model, images, labels, clock=clock, cache=cache)
    set_amp(model, choice.amp)
    model.log(describe(choice) + (cache.said() if choice.remembered else ""))
    return choice


def describe(choice: Choice) -> str:
    """The line a run logs about its choice, with the flag that pins it."""
    chosen = "bf16" if choice.amp == "bf16" else "fp32"
    return (f"amp auto: bf16 {choice.bf16_seconds:.3f} s/step, fp32 {choice.fp32_seconds:.3f} "
            f"s/step on this CPU -> {chosen} (--amp {choice.amp})")
