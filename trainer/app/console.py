"""What a command says to its user: a short line on its configuration first, and the errors a
user can cause, which main.py says in one sentence without a traceback."""
import dataclasses
import os

import DataReader
import Model
from configure import RECIPES, Config
from trainer.reports import plots
from trainer.reports import tensorboard_log
from trainer.run import checkpoints, records


class CommandError(Exception):
    """A command line that cannot be carried out as given (a bad --output, an unusable split)."""


# Errors a user can cause, besides ConfigError: said in one sentence, without a traceback.
USER_ERRORS = (DataReader.DataError, checkpoints.CheckpointError, Model.TrainingError,
               CommandError, plots.PlotError, tensorboard_log.TensorBoardError)


@dataclasses.dataclass(frozen=True)
class TrainedWith:
    """For test and predict: the checkpoint whose network a configuration holds, the recipe it
    was trained with, and the keys the configuration takes from it (compared on the start line
    with that recipe's values, not the command line's); ``notes``: what to say after the line."""
    checkpoint: str  # its file name, e.g. model-10.ckpt
    recipe: str
    keys: tuple
    notes: tuple = ()


def reference_values(config: Config) -> dict:
    """What each key of ``config`` holds unless someone chose otherwise: the defaults of
    configure.Config, with num_classes and download_url as they follow config's data set, and the
    values of config's recipe."""
    reference = Config().to_dict()
    follows = Config(dataset=config.dataset, label_mode=config.label_mode)
    reference.update(num_classes=follows.num_classes, download_url=follows.download_url)
    reference.update(RECIPES.get(config.recipe, {}))
    return reference


def _shown(value) -> str:
    """A value as the start line shows it: lists joined by commas, text with spaces quoted."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    text = str(value)
    return repr(text) if not text or any(c.isspace() for c in text) else text


def start_line(config: Config, saved_in: str = None, trained_with: TrainedWith = None) -> str:
    """The short line every mode starts with: the recipe's name, then only the keys whose value
    differs from the defaults and the recipe's (a recipe's own values go by its name), and where
    the full set is written (``saved_in``), if anywhere. For test and predict, ``trained_with``:
    the line names the checkpoint's recipe, and the keys taken from the checkpoint are compared
    with that recipe's values (a speed checkpoint's network=airbench is no news)."""
    recipe, reference = config.recipe, reference_values(config)
    if trained_with is not None:
        recipe = trained_with.recipe
        trained = reference_values(dataclasses.replace(config, recipe=recipe))
        reference.update({key: trained[key] for key in trained_with.keys})
    changed = [f"{key}={_shown(value)}" for key, value in config.to_dict().items()
               if key != "recipe" and not config.from_recipe(key) and value != reference.get(key)]
    if changed:
        line = f"config: {recipe} recipe with " + " ".join(changed)
    elif recipe == "course":
        line = "config: course recipe, all defaults"
    else:
        line = f"config: {recipe} recipe, all else default"
    if trained_with is not None:
        line += f"; network from {trained_with.checkpoint}"
    return line + (f"; full set in {saved_in}" if saved_in else "")


def announce(config: Config, writes_record: bool = False,
             trained_with: TrainedWith = None) -> None:
    """Print the start line of every mode (start_line). ``writes_record``: the mode writes the
    whole resolved configuration to <modeldir>/config.json (train, and each run of a sweep), and
    the line says so; test and predict take theirs from the checkpoint (``trained_with``, whose
    notes follow the line)."""
    saved_in = os.path.join(config.modeldir, records.CONFIG) if writes_record else None
    print(start_line(config, saved_in, trained_with), flush=True)
    for note in trained_with.notes if trained_with is not None else ():
        print(note, flush=True)
