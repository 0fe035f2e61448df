"""What a command says to its user: a short line on its configuration first, and the errors a
user can cause, which main.py says in one sentence without a traceback."""
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


def start_line(config: Config, saved_in: str = None) -> str:
    """The short line every mode starts with: the recipe's name, then only the keys whose value
    differs from the defaults and the recipe's (a recipe's own values go by its name), and where
    the full set is written (``saved_in``), if anywhere."""
    reference = reference_values(config)
    changed = [f"{key}={_shown(value)}" for key, value in config.to_dict().items()
               if key != "recipe" and not config.from_recipe(key) and value != reference.get(key)]
    if changed:
        line = f"config: {config.recipe} recipe with " + " ".join(changed)
    elif config.recipe == "course":
        line = "config: course recipe, all defaults"
    else:
        line = f"config: {config.recipe} recipe, all else default"
    return line + (f"; full set in {saved_in}" if saved_in else "")


def announce(config: Config, writes_record: bool = False) -> None:
    """Print the start line of every mode (start_line). ``writes_record``: the mode writes the
    whole resolved configuration to <modeldir>/config.json (train, and each run of a sweep), and
    the line says so; test and predict take theirs from the checkpoint."""
    saved_in = os.path.join(config.modeldir, records.CONFIG) if writes_record else None
    print(start_line(config, saved_in), flush=True)
