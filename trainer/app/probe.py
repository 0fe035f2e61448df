"""A worker of trainer.parallel.launch that times the run's own training step on this many
processes, for trainer.app.parallelism: ``python -m trainer.app.probe CONFIG OUT``.

CONFIG is a JSON file of the run's configuration; each worker builds the model the run would
build (Model.MyModel under this process group: DistributedDataParallel, its share of the batch),
takes TIMED_STEPS steps after a warm-up (trainer.training.step_timing, whose times are the slowest
rank's), and rank 0 writes {"seconds_per_image": ...} (per image of the global batch) to OUT. The
images are random: a step's time does not depend on what the pixels show.
"""
import json
import sys

import torch

import Model
from configure import Config
from trainer.parallel import distributed
from trainer.training import sizing, timing_cache

TIMED_STEPS = 3


def random_batch(config: Config, steps: int, world_size: int):
    """Images ((N, 3, 32, 32) uint8) and labels for ``steps`` + 1 full global batches."""
    n = config.batch_size * (steps + 1)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, config.num_classes, (n,), generator=generator)
    return images, labels


def seconds_per_image(config: Config, context, steps: int = TIMED_STEPS) -> float:
    """The median seconds per image of the global batch of ``steps`` of the run's steps, which
    rank 0 remembers (sizing.seconds_per_image with a timing_cache)."""
    model = Model.MyModel(config, log=lambda *a: None, context=context)
    images, labels = random_batch(config, steps, context.world_size)
    cache = timing_cache.TimingCache(log=lambda line: print(line, file=sys.stderr))
    return sizing.seconds_per_image(model, images.to(model.device), labels.to(model.device),
                                    steps, cache=cache)


def main(argv) -> int:
    config_path, out_path = argv
    with open(config_path) as f:
        config = Config.from_dict(json.load(f))
    context = distributed.from_environment()
    context = distributed.start(context, torch.device("cpu"), config.dist_timeout)
    try:
        seconds = seconds_per_image(config, context)
    finally:
        distributed.stop()
    if context.is_main:
        with open(out_path, "w") as f:  # a file of the launcher's own temporary folder
            json.dump({"seconds_per_image": seconds}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
