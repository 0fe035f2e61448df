"""--mode plot: <modeldir>/curves.png from its metrics.csv, and the weight magnitudes of its
newest checkpoint (what L1 and L2 do to them); with several --modeldir folders, compare.png and
compare.csv comparing their runs, written beside the first folder (in the folder that holds it)."""
import os

from configure import Config
from trainer.app.console import CommandError, announce
from trainer.reports import compare
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


def comparison_paths(folders: list) -> tuple:
    """(compare.png, compare.csv) of a comparison: in the folder that holds the first run's."""
    where = os.path.dirname(os.path.abspath(folders[0]))
    return os.path.join(where, compare.COMPARE_PNG), os.path.join(where, compare.COMPARE_CSV)


def check_replaceable(path: str, overwrite: bool) -> None:
    """A file already at path is not this command's: it is replaced only with --overwrite, and a
    folder or link in the way never is."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        raise CommandError(f"{path} is in the way and is not a plain file; move it away.")
    if os.path.exists(path) and not overwrite:
        raise CommandError(f"{path} already exists and this command did not make it; pass "
                           f"--overwrite to replace it, or move it away.")


def compare_runs(folders: list, overwrite: bool = False) -> None:
    """Compare the runs of several model folders: print a table, write compare.csv and draw
    compare.png (validation accuracy and loss, one line per run, labelled by what differs).

    Runs without validation (--train_all) are in the table and compare.csv only, unless no run
    has validation: then every run's training accuracy and loss are drawn instead.
    """
    try:
        plots.require_matplotlib()  # the missing extra is said before anything else
        png, csv_path = comparison_paths(folders)
        for path in (png, csv_path):
            check_replaceable(path, overwrite)
        runs, notes = compare.load_runs(folders)
        labels = compare.labels(runs)
        lines, validation = compare.lines_to_draw(runs, labels)
        for run in runs:
            if validation and not run.validated:
                notes.append(f"{run.folder} has no validation (--train_all); it is in "
                             f"{compare.COMPARE_CSV} only.")
            if run.test:
                notes.append(f"{run.folder}: test_acc is that of {run.test[1]} in {run.test[2]}.")
        if not validation:
            notes.append("no run has validation (--train_all): compare.png shows training "
                         "accuracy and loss.")
        rows = [compare.summary(run, label) for label, run in zip(labels, runs)]
        for note in notes:
            print(f"note: {note}")
        print(compare.format_table(rows))
        print(f"wrote {compare.write_csv(csv_path, rows)}")
        print(f"wrote {plots.draw_comparison(png, lines, validation)}")
    except plots.PlotError as e:
        raise CommandError(str(e)) from None
