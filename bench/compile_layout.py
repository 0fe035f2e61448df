"""torch.compile and the memory format on this machine, for the recipes' own training steps: a
script that prints figures, not a test.

    python bench/compile_layout.py [--threads 1] [--steps 6] [--repeats 3]
                                   [--recipes speed@0.375 fast] [--amp off bf16]
                                   [--modes eager inductor]

For each recipe (NAME or NAME@WIDTH, the speed recipe's width), precision, memory format
(channels_last, contiguous) and compilation (eager, inductor) it builds the model the run would
(Model.MyModel, every flag of the recipe) and times its training step as the trainer takes it
(trainer.training.step_timing: crops, flips, the optimizer, lookahead), on random images. It prints
the seconds of the first step (for inductor: the compilation) and the images per second of the
steps after it: the median and the spread over --repeats runs of --steps steps. Whether
compilation pays in a budget: the seconds it costs at the start against the seconds it saves per
epoch (50,000 images), both printed.
"""
import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
from Model import MyModel  # noqa: E402
from configure import Config  # noqa: E402
from throughput import cpu_name  # noqa: E402
from trainer.app.probe import random_batch  # noqa: E402
from trainer.training.step_timing import StepTimer  # noqa: E402

EPOCH_IMAGES = 50_000


def config_of(name: str, amp: str, channels_last: bool, compiled: bool) -> Config:
    recipe, _, width = name.partition("@")
    config = Config(recipe=recipe).apply_recipe()
    config.width_scale = float(width) if width else (config.width_scale or 1.0)
    config.amp, config.device, config.compile = amp, "cpu", compiled
    config.channels_last = "on" if channels_last else "off"
    config.cpu_processes = 1
    return config


def measure(config: Config, steps: int) -> tuple:
    """(seconds of the first step, images per second of the next ``steps``)."""
    torch._dynamo.reset()
    model = MyModel(config, log=lambda *a: None)
    images, labels = random_batch(config, steps, 1)
    with StepTimer(model, images, labels) as timer:
        first = timer.step()
        seconds = timer.steps(steps)
    return first, timer.images_per_step / statistics.median(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recipes", nargs="+", default=["speed@0.375", "fast"])
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=("off", "bf16"))
    p.add_argument("--modes", nargs="+", default=["eager", "inductor"],
                   choices=("eager", "inductor"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d')}")
    print("| recipe | amp | layout | mode | first step s | img/s median (min to max) | "
          "s per epoch |")
    print("|---|---|---|---|---|---|---|")
    for name in args.recipes:
        for amp in args.amp:
            for channels_last in (True, False):
                for compiled in [m == "inductor" for m in args.modes]:
                    firsts, rates = [], []
                    for _ in range(args.repeats):
                        first, rate = measure(config_of(name, amp, channels_last, compiled),
                                              args.steps)
                        firsts.append(first)
                        rates.append(rate)
                    median = statistics.median(rates)
                    print(f"| {name} | {amp} | {'channels_last' if channels_last else 'contiguous'}"
                          f" | {'inductor' if compiled else 'eager'} | "
                          f"{statistics.median(firsts):.1f} | {median:.0f} ({min(rates):.0f} to "
                          f"{max(rates):.0f}) | {EPOCH_IMAGES / median:.1f} |", flush=True)


if __name__ == "__main__":
    main()
