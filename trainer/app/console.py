"""What a command says to its user: the resolved configuration first, and the errors a user can
cause, which main.py says in one sentence without a traceback."""
import DataReader
import Model
from configure import Config
from trainer.reports import plots
from trainer.reports import tensorboard_log
from trainer.run import checkpoints


class CommandError(Exception):
    """A command line that cannot be carried out as given (a bad --output, an unusable split)."""


# Errors a user can cause, besides ConfigError: said in one sentence, without a traceback.
USER_ERRORS = (DataReader.DataError, checkpoints.CheckpointError, Model.TrainingError,
               CommandError, plots.PlotError, tensorboard_log.TensorBoardError)


def announce(config: Config) -> None:
    """Print the resolved configuration, one key=value per field, as every mode starts."""
    print("config: " + " ".join(f"{k}={v}" for k, v in config.to_dict().items()), flush=True)
