"""--width_scale 0 (set by --recipe speed): the network's width, chosen for --budget_minutes.

A recipe tuned for about ten epochs (airbench94: 9.9) is at its best with about that many; a
narrower network fits more epochs into the same minutes and a wider one fewer. So the chooser
picks the widest width (in steps of 1/16, from 1/4 to 2) at which TARGET_EPOCHS epochs fit into
what is left of the budget, at the speed it measures on this machine.

Time per image grows with a network's multiply-accumulates (MACs), though more slowly (narrow
layers use a processor less well): the chooser times a few training steps at a reference width,
estimates the others from their MACs, times the width that estimate picks, and then estimates
each width from the two measured ones (a power law in the MACs) to pick again. The budget's own
planner (budget.fit) then times the chosen network and plans its epochs, and plans once more
after the first epoch, so the estimate here need only be close.

Without a budget, width 0 means the published network (1). A resumed run takes the width its
checkpoint was trained with.
"""
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from NetWork import build_network
from trainer.parallel import distributed
from trainer.run import state
from trainer.training import precision

TARGET_EPOCHS = 10  # airbench94 trains 9.9 epochs
WIDTHS = tuple(k / 16 for k in range(4, 33))  # 0.25 ... 2
REFERENCE_WIDTH = 0.5
# Images per timed step (at most the batch size): per image, a CPU can run small batches faster
# than large ones, so the run's own batch is timed, up to this many images.
TIMING_IMAGES = 1024
EVAL_SHARE = 1 / 3  # evaluating an image costs about a third of training on it (forward only)
EXPONENT_RANGE = (0.5, 1.2)  # of the power law in the MACs, where two timings disagree wildly


def network_at(config, width: float) -> torch.nn.Module:
    """The run's network at ``width`` (on the CPU, default initialization)."""
    return build_network(config.network, num_classes=config.num_classes, width_scale=width,
                         whiten=config.whiten)


def macs(config, width: float) -> float:
    """Multiply-accumulates of one 32x32 image through the network at ``width``."""
    network = network_at(config, width).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() / 2


def seconds_per_image(config, rt, width: float, steps: int = 1,
                      clock=time.perf_counter) -> float:
    """Median seconds per image of ``steps`` training steps (after one warm-up step) of the
    network at ``width`` on rt's device and precision, on random images cropped and flipped as
    the run's are; the run's random state is left as it was."""
    batch = min(config.batch_size, TIMING_IMAGES)
    rng = torch.get_rng_state()
    try:
        network = network_at(config, width).to(rt.device, memory_format=rt.memory_format)
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=rt.device)
        labels = torch.randint(0, config.num_classes, (batch,), device=rt.device)
        offsets = torch.zeros(batch, 2, dtype=torch.long, device=rt.device)
        flips = torch.zeros(batch, dtype=torch.bool, device=rt.device)
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
        times = []
        for i in range(steps + 1):
            start = clock()
            x = rt.prepare_images(images, True, offsets, flips)  # the same work as a real step
            with rt.autocast():
                loss = F.cross_entropy(network(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            if i:  # the first step warms up
                times.append(clock() - start)
    finally:
        torch.set_rng_state(rng)
    times.sort()
    return times[len(times) // 2] / batch


def pick(epoch_seconds, seconds: float, epochs: float = TARGET_EPOCHS) -> float:
    """The widest of WIDTHS whose ``epochs`` epochs (epoch_seconds(width) each) fit into
    ``seconds``; the narrowest when none does."""
    fitting = [w for w in WIDTHS if epochs * epoch_seconds(w) <= seconds]
    return max(fitting) if fitting else min(WIDTHS)


def choose(config, rt, train_images: int, valid_images: int, seconds: float, log=print,
           timer=seconds_per_image) -> float:
    """The width for a run of ``seconds`` on ``train_images`` (validating ``valid_images`` each
    epoch); the steps are timed by ``timer(config, rt, width)`` (tests give fake ones)."""
    work = train_images + EVAL_SHARE * valid_images  # image-passes an epoch, in training units
    count = {}

    def mac(width):
        if width not in count:
            count[width] = macs(config, width)
        return count[width]

    measured = {REFERENCE_WIDTH: timer(config, rt, REFERENCE_WIDTH)}

    def estimate(width, exponent):
        return work * measured[REFERENCE_WIDTH] * (mac(width) / mac(REFERENCE_WIDTH)) ** exponent

    first = pick(lambda w: estimate(w, 1.0), seconds)
    exponent = 1.0
    if first != REFERENCE_WIDTH:
        measured[first] = timer(config, rt, first)
        ratio = math.log(measured[first] / measured[REFERENCE_WIDTH]) / \
            math.log(mac(first) / mac(REFERENCE_WIDTH))
        exponent = min(max(ratio, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
    width = pick(lambda w: estimate(w, exponent), seconds)
    log(f"width for {seconds:.0f} s: {TARGET_EPOCHS} epochs of "
        + ", ".join(f"{1 / measured[w]:.0f} img/s at width {w:g}" for w in sorted(measured))
        + f" -> --width_scale {width:g} (about {estimate(width, exponent):.0f} s an epoch)")
    return width


def resolve(config, rt, resume, train_images: int, valid_images: int, started: float,
            log=print) -> None:
    """Set config.width_scale when it is 0 (chosen): from the checkpoint a resume continues,
    by ``choose`` for a --budget_minutes run (settling --amp auto on the CPU first, since the
    speed depends on it), else 1 (the published network)."""
    if config.width_scale != 0:
        return
    if resume is not None:
        _, ckpt = state.resume_source(config.modeldir, resume, lambda *a: None)
        config.width_scale = ckpt["config"]["width_scale"]
        return
    if not config.budget_minutes:
        config.width_scale = 1.0
        return
    if config.amp == "auto" and rt.device.type == "cpu":
        config.amp = settle_precision(config, rt, log)
        rt.amp_dtype = torch.bfloat16 if config.amp == "bf16" else None
    seconds = config.budget_minutes * 60 - (time.monotonic() - started)
    width = choose(config, rt, train_images, valid_images, seconds, log)
    # Under torchrun every rank builds the same network: the narrowest rank's choice.
    config.width_scale = distributed.agree_min(round(width * 16), rt.collective_device()) / 16


def settle_precision(config, rt, log) -> str:
    """--amp auto on the CPU, timed on the network at the reference width."""
    batch = min(config.batch_size, precision.TIMING_IMAGES)
    network = network_at(config, REFERENCE_WIDTH).to(rt.device, memory_format=rt.memory_format)
    rng = torch.get_rng_state()
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=rt.device)
    labels = torch.randint(0, config.num_classes, (batch,), device=rt.device)
    torch.set_rng_state(rng)
    choice = precision.choose(network, rt, rt.prepare_images(images, False), labels, steps=2)
    choice = precision.agreed(choice, rt)
    log(precision.describe(choice))
    return choice.amp
