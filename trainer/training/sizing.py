"""--width_scale 0 (set by --recipe speed): the network's width, chosen for --budget_minutes.

A recipe tuned for about ten epochs (airbench94: 9.9) is at its best with about that many; a
narrower network fits more epochs into the same minutes and a wider one fewer. So the chooser
picks the widest width (in steps of 1/16, from 1/4 to 2) at which TARGET_EPOCHS epochs fit into
what is left of the budget, at the speed it measures on this machine; with --muon_lr, whose
orthogonalized filter steps learn faster (airbench94_muon needs 8 epochs where airbench94 needs
9.9), MUON_EPOCHS, so that the network is wider.

Time per image grows with a network's multiply-accumulates (MACs), though more slowly (narrow
layers use a processor less well): the chooser times the run's own training step
(trainer.training.step_timing: the model the run would build at that width, every flag applied,
with its DDP wrapper, precision and optimizer) at a reference width, estimates the others from
their MACs, times the width that estimate picks, and then estimates each width from the two
measured ones (a power law in the MACs) to pick again. With --amp auto on a CPU the precision is
settled first, on the reference network, since the speed depends on it. The budget's own planner
(trainer.training.budget) then times the chosen network and plans its epochs, and plans again
after each epoch, so the estimate here need only be close.

Only the networks that have a width (configure.NETWORK_SPECIFIC's width_scale: resnet9 and
airbench) have one chosen; for any other, width 0 means its own network (1). Without a budget,
width 0 is the published network (1) too. A resumed run takes the width its checkpoint was
trained with.
"""
import copy
import gc
import math
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from configure import applies
from trainer.run import state
from trainer.training import precision, runtime, timing_cache
from trainer.training.batches import global_batch_sizes
from trainer.training.step_timing import timing

TARGET_EPOCHS = 10  # airbench94 trains 9.9 epochs
MUON_EPOCHS = 9  # with --muon_lr (BENCHMARKS.md: 87.6% at width 0.375 in 9 epochs, 87.1% with SGD)
WIDTHS = tuple(k / 16 for k in range(4, 33))  # 0.25 ... 2
REFERENCE_WIDTH = 0.5
TIMED_STEPS = 2  # steps timed per width, after one that warms up
EVAL_SHARE = 1 / 3  # evaluating an image costs about a third of training on it (forward only)
EXPONENT_RANGE = (0.5, 1.2)  # of the power law in the MACs, where two timings disagree wildly


def at_width(config, width: float):
    """A copy of config with width_scale ``width``."""
    copied = copy.copy(config)
    copied.width_scale = width
    return copied


def macs(config, width: float) -> float:
    """Multiply-accumulates of one 32x32 image through the run's network at ``width``."""
    rng = torch.get_rng_state()
    try:
        network = runtime.network_for(at_width(config, width)).eval()
    finally:
        torch.set_rng_state(rng)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() / 2


def seconds_per_image(model, images: torch.Tensor, labels: torch.Tensor,
                      steps: int = TIMED_STEPS, cache=None) -> float:
    """Median seconds per image of ``steps`` of model's own training steps, after one that warms
    up (step_timing: the model is left as it was); under torchrun the slowest rank's, per image of
    the global batch. With a ``cache`` (timing_cache.TimingCache), a remembered time is taken
    as it is, and a new one is remembered."""
    remembered = None if cache is None else cache.lookup(model)
    if remembered:
        return remembered
    with timing(model, images, labels) as timer:
        seconds = statistics.median(timer.steps(steps)) / timer.images_per_step
    if cache is not None:
        cache.remember(model, seconds)
    return seconds


def target_epochs(config) -> int:
    """The epochs the chosen width is sized for: MUON_EPOCHS with --muon_lr, else TARGET_EPOCHS."""
    return MUON_EPOCHS if config.muon_lr else TARGET_EPOCHS


def pick(epoch_seconds, seconds: float, epochs: float = TARGET_EPOCHS) -> float:
    """The widest of WIDTHS whose ``epochs`` epochs (epoch_seconds(width) each) fit into
    ``seconds``; the narrowest when none does."""
    fitting = [w for w in WIDTHS if epochs * epoch_seconds(w) <= seconds]
    return max(fitting) if fitting else min(WIDTHS)


def choose(config, train_images: int, valid_images: int, seconds: float, timer, log=print,
           measured=None, test_passes: int = 0) -> float:
    """The width for a run of ``seconds`` on ``train_images`` (validating ``valid_images`` each
    epoch), followed by a test of ``test_passes`` image views (--test: images x views), which
    grows with the width as an epoch does; ``timer(width)`` gives the seconds per training image
    at a width (tests give fake ones); ``measured``: {width: seconds per image} already known."""
    work = train_images + EVAL_SHARE * valid_images  # image-passes an epoch, in training units
    test_share = EVAL_SHARE * test_passes / work  # the test, in epochs
    count = {}

    def mac(width):
        if width not in count:
            count[width] = macs(config, width)
        return count[width]

    measured = dict(measured or {})
    if REFERENCE_WIDTH not in measured:
        measured[REFERENCE_WIDTH] = timer(REFERENCE_WIDTH)

    def estimate(width, exponent):
        return work * measured[REFERENCE_WIDTH] * (mac(width) / mac(REFERENCE_WIDTH)) ** exponent

    epochs = target_epochs(config)
    planned = epochs + test_share
    first = pick(lambda w: estimate(w, 1.0), seconds, planned)
    exponent = 1.0
    if first != REFERENCE_WIDTH:
        measured[first] = timer(first)
        ratio = math.log(measured[first] / measured[REFERENCE_WIDTH]) / \
            math.log(mac(first) / mac(REFERENCE_WIDTH))
        exponent = min(max(ratio, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
    width = pick(lambda w: estimate(w, exponent), seconds, planned)
    log(f"width for {seconds:.0f} s: {epochs} epochs"
        + (f" and the test ({test_share:.2f} of an epoch)" if test_passes else "") + " of "
        + ", ".join(f"{1 / measured[w]:.0f} img/s at width {w:g}" for w in sorted(measured))
        + f" -> --width_scale {width:g} (about {estimate(width, exponent):.0f} s an epoch)")
    return width


def release(device: torch.device) -> None:
    """Free a candidate model's memory (a GPU's above all) before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reference_config(config):
    """The configuration of the first network a fresh run builds: config itself where its width
    is set, else the one ``resolve`` times first (at REFERENCE_WIDTH), or width 1 where no width
    is chosen (no budget, or a network without a width)."""
    if config.width_scale != 0:
        return config
    if not config.budget_minutes or not applies("width_scale", config.network):
        return at_width(config, 1.0)
    return at_width(config, REFERENCE_WIDTH)


def resolve_from_checkpoint(config, resume) -> None:
    """A resumed run's width 0 (chosen): the width its checkpoint was trained with."""
    if config.width_scale == 0 and resume is not None:
        _, ckpt = state.resume_source(config.modeldir, resume, lambda *a: None)
        config.width_scale = ckpt["config"]["width_scale"]


def resolve(config, build, images: torch.Tensor, labels: torch.Tensor, valid_images: int,
            started: float, log=print, test_passes: int = 0) -> None:
    """Set a fresh run's config.width_scale when it is 0 (chosen): 1 for a network without a
    width or a run without a budget, else by ``choose``, timing the models ``build(config)``
    makes (Model.MyModel's) on the training ``images`` ((N, 3, 32, 32) uint8 on the run's
    device) and ``labels``. --amp auto on a CPU is settled first, on the reference network.
    ``test_passes``: the image views of a --test after the training (choose). Under torchrun
    every rank times the same steps and sees the slowest rank's times, so every rank chooses,
    and logs, the same width."""
    if config.width_scale != 0:
        return
    if not config.budget_minutes or not applies("width_scale", config.network):
        config.width_scale = 1.0
        return
    measured = {}
    cache = timing_cache.TimingCache(log=log)
    reference = build(at_width(config, REFERENCE_WIDTH))
    if config.amp == "auto" and reference.runtime.device.type == "cpu":
        choice = precision.settle(reference, images, labels, cache=cache)
        config.amp = choice.amp
        per_step = global_batch_sizes(len(labels), config.batch_size,
                                      reference.dist.world_size)[0]
        measured[REFERENCE_WIDTH] = choice.seconds / per_step
    else:
        measured[REFERENCE_WIDTH] = seconds_per_image(reference, images, labels, cache=cache)
    del reference
    release(images.device)

    def timer(width):
        model = build(at_width(config, width))
        try:
            return seconds_per_image(model, images, labels, cache=cache)
        finally:
            del model
            release(images.device)

    seconds = config.budget_minutes * 60 - (time.monotonic() - started)
    config.width_scale = choose(config, len(labels), valid_images, seconds, timer,
                                lambda line: log(line + cache.said()), measured, test_passes)
