"""--mode plot: <modeldir>/curves.png from its metrics.csv, and the weight magnitudes of its
newest checkpoint (what L1 and L2 do to them)."""
from configure import Config
from trainer.app.console import CommandError, announce
from trainer.reports import plots
from trainer.reports import reports
from trainer.run import checkpoints


def plot_run(config: Config) -> None:
    """Draw the curves of config.modeldir and, where it holds checkpoints, the weights of the
    newest; a PlotError (no metrics, no matplotlib) is the user's, as a CommandError."""
    announce(config)
    try:
        print(f"wrote {plots.draw_curves(config.modeldir)}")
        found = checkpoints.list_checkpoints(config.modeldir)
        if found:
            print(f"wrote {draw_checkpoint_weights(config.modeldir, found[-1])}")
    except plots.PlotError as e:
        raise CommandError(str(e)) from None


def draw_checkpoint_weights(modeldir: str, number: int) -> str:
    """Draw the weight magnitudes of checkpoint ``number`` in modeldir; return the picture's path."""
    ckpt = checkpoints.read_checkpoint(checkpoints.find_checkpoint(modeldir, number))
    magnitudes = reports.weight_magnitudes(ckpt["model"])
    return plots.draw_weights(modeldir, magnitudes, f"model-{number}.ckpt")
