"""Which checkpoint --mode test and predict use by default, and the network and data set it was
trained with, so that those modes need no network flags."""
import dataclasses

from configure import ARCHITECTURE_KEYS, Config, applies, flag
from trainer.app.console import CommandError
from trainer.run import checkpoints


def newest(config: Config) -> int:
    """The number of the newest checkpoint in config.modeldir; CheckpointError if it has none."""
    found = checkpoints.list_checkpoints(config.modeldir)
    if not found:
        raise checkpoints.CheckpointError(f"{config.modeldir} holds no checkpoints; train first "
                                          f"or pass --modeldir.")
    return found[-1]


def config_from_checkpoint(config: Config, explicit, number) -> Config:
    """The configuration with the network and data set checkpoint ``number`` was trained with,
    and the test-time augmentation it stores (its recipe's) unless --tta is given; a flag among
    ``explicit`` (those the command line gave) that disagrees is refused."""
    path = checkpoints.find_checkpoint(config.modeldir, number)
    saved = checkpoints.read_checkpoint(path)["config"]
    changes = {}
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
    if "tta" not in explicit and saved.get("tta", "off") != config.tta:
        changes["tta"] = saved["tta"]  # the test-time augmentation its recipe relies on
        print(f"--tta {saved['tta']}: the default for {path}, which its --recipe "
              f"{saved.get('recipe', 'course')} trained for; pass --tta off to compare without.")
    return dataclasses.replace(config, **changes) if changes else config
