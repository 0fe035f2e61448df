"""Which checkpoint --mode test and predict use by default, and the network and data set it was
trained with, so that those modes need no network flags."""
import dataclasses
import os

from configure import ARCHITECTURE_KEYS, RECIPES, Config, applies, flag
from trainer.app.console import CommandError, TrainedWith
from trainer.run import checkpoints


def newest(config: Config) -> int:
    """The number of the newest checkpoint in config.modeldir; CheckpointError if it has none."""
    found = checkpoints.list_checkpoints(config.modeldir)
    if not found:
        raise checkpoints.CheckpointError(f"{config.modeldir} holds no checkpoints; train first "
                                          f"or pass --modeldir.")
    return found[-1]


def config_from_checkpoint(config: Config, explicit, number) -> tuple:
    """(the configuration with the network and data set checkpoint ``number`` was trained with,
    and the test-time augmentation it stores (its recipe's) unless --tta is given; what the start
    line says of it, console.TrainedWith: the checkpoint's recipe unless --recipe is given). A
    flag among ``explicit`` (those the command line gave) that disagrees is refused."""
    path = checkpoints.find_checkpoint(config.modeldir, number)
    saved = checkpoints.read_checkpoint(path)["config"]
    changes, notes = {}, []
    network = saved.get("network", config.network)
    for key in ARCHITECTURE_KEYS:
        if key in explicit and not applies(key, network):
            raise CommandError(f"--{key} does not apply to the {network} network of {path}; drop "
                               f"it.")
        if key not in saved or saved[key] == getattr(config, key):
            continue
        if key in explicit:
            given = flag(key, getattr(config, key))
            raise CommandError(f"{path} holds a network trained with {key} {saved[key]}, but "
                               f"{given} was given; drop {given.split()[0]} or pass "
                               f"{flag(key, saved[key])}.")
        changes[key] = saved[key]
    recipe = saved.get("recipe", "course")
    if "tta" not in explicit and saved.get("tta", "off") != config.tta:
        changes["tta"] = saved["tta"]  # the test-time augmentation its recipe relies on
        notes.append(f"--tta {saved['tta']}: the default for {path}, which its --recipe {recipe} "
                     f"trained for; pass --tta off to compare without.")
    if "recipe" in explicit or recipe not in RECIPES:
        recipe = config.recipe  # the one asked for (or one this version does not know)
    trained = TrainedWith(os.path.basename(path), recipe, tuple(ARCHITECTURE_KEYS) + ("tta",),
                          tuple(notes))
    return (dataclasses.replace(config, **changes) if changes else config), trained
