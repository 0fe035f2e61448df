"""Training curves: ``<modeldir>/curves.png`` drawn from ``<modeldir>/metrics.csv``, and a
run comparison (``compare.png``, one line per run; trainer.reports.compare reads the runs).

Two panels: loss against epoch and accuracy (in percent) against epoch, train and validation
(validation only where the run had some), with a dashed line where a step schedule decays the
learning rate, labelled with the new rate (config.json says which schedule the run had).
matplotlib is an optional extra, imported only when drawing: without it ``MatplotlibMissing``
says how to install it. Drawing goes through matplotlib's object-oriented API (``Figure`` + the
Agg canvas), so pyplot's global state and the interactive backend are never touched.
"""
import csv
import json
import math
import os

from trainer.storage import atomic

METRICS = "metrics.csv"
CURVES = "curves.png"
CONFIG = "config.json"
# The header records.py writes. Accuracies are fractions in [0, 1]; valid_* are empty cells
# when the run has no validation.
COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds",
           "images_per_second")
OPTIONAL = ("valid_loss", "valid_acc")
FIGSIZE = (11, 4)  # inches: two panels side by side
DPI = 100  # so the picture is 1100 x 400 pixels
INSTALL_HINT = "pip install matplotlib (or pip install -r requirements-dev.txt)"
# Losses are float32 cross-entropies: a finite one above float32's largest value was not recorded
# by training (and a range that wide cannot be drawn).
MAX_LOSS = 3.4028234663852886e38
MAX_EPOCH = 2 ** 53  # past it a float no longer holds every whole number


class PlotError(ValueError):
    """A metrics file that cannot be drawn, or a picture that cannot be written; one sentence."""


class MatplotlibMissing(PlotError):
    """matplotlib, an optional extra, cannot be imported."""


def matplotlib_available() -> bool:
    """Whether matplotlib and the parts draw_curves uses import, i.e. whether it can draw."""
    try:
        _matplotlib()
    except MatplotlibMissing:
        return False
    return True


def require_matplotlib() -> None:
    """MatplotlibMissing, saying how to install it, unless matplotlib can draw."""
    _matplotlib()


def _matplotlib():
    """(Figure, FigureCanvasAgg), or MatplotlibMissing with how to install matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MatplotlibMissing(f"drawing curves needs matplotlib, an optional extra that is not "
                                f"installed; install it: {INSTALL_HINT}.") from None
    try:  # a broken install (a missing dependency, say) fails here
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MatplotlibMissing(f"matplotlib is installed but does not import ({e}); reinstall "
                                f"it: {INSTALL_HINT}.") from None
    return Figure, FigureCanvasAgg


# --------------------------------------------------------------------------------------------
# Reading metrics.csv

def _number(path: str, line: int, column: str, cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise PlotError(f"{path}, line {line}: {column} is {cell!r}, not a number; the file is "
                        f"damaged, and training with --resume rewrites it from the checkpoints."
                        ) from None


def _parse_row(path: str, line: int, row: dict) -> dict:
    if None in row or any(row[c] is None for c in COLUMNS):  # too many or too few cells
        raise PlotError(f"{path}, line {line}: expected {len(COLUMNS)} cells; the file is damaged, "
                        f"and training with --resume rewrites it from the checkpoints.")
    values = {}
    for column in COLUMNS:
        cell = row[column].strip()
        if column in OPTIONAL and cell == "":
            values[column] = None  # no validation this epoch
        else:
            values[column] = _number(path, line, column, cell)
    epoch = values["epoch"]
    if not (epoch.is_integer() and 1 <= epoch < MAX_EPOCH):
        raise PlotError(f"{path}, line {line}: epoch is {row['epoch']!r}, not a positive whole "
                        f"number; the file is damaged, and training with --resume rewrites it.")
    values["epoch"] = int(epoch)
    for column in ("train_acc", "valid_acc"):
        acc = values[column]
        if acc is not None and math.isfinite(acc) and not 0 <= acc <= 1:
            raise PlotError(f"{path}, line {line}: {column} is {acc:g}, outside [0, 1] (accuracies "
                            f"are fractions); the file is damaged or not this trainer's.")
    for column in ("train_loss", "valid_loss"):  # an infinite or NaN loss is drawn as a gap
        loss = values[column]
        if loss is not None and math.isfinite(loss) and not 0 <= loss <= MAX_LOSS:
            raise PlotError(f"{path}, line {line}: {column} is {loss:g}, outside "
                            f"[0, {MAX_LOSS:.3g}] (losses are float32 cross-entropies); the file "
                            f"is damaged or not this trainer's.")
    if not (math.isfinite(values["lr"]) and values["lr"] >= 0):
        raise PlotError(f"{path}, line {line}: lr is {values['lr']:g}, not a learning rate (a "
                        f"finite number, zero or more); the file is damaged or not this "
                        f"trainer's.")
    return values


def read_metrics(path: str) -> list:
    """The rows of a metrics.csv, oldest first: one dict per epoch with the keys of COLUMNS.

    ``epoch`` is an int, the rest floats; ``valid_loss`` and ``valid_acc`` are None where the run
    had no validation. A missing, empty, unreadable or damaged file is a PlotError naming it.
    """
    if not os.path.exists(path):
        raise PlotError(f"{os.path.dirname(path) or '.'} holds no {os.path.basename(path)}; train "
                        f"first (python main.py --mode train), or pass the --modeldir of a "
                        f"trained run.")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if header is None:
                raise PlotError(f"{path} is empty; it gets its header when training starts, so "
                                f"train first or pass the --modeldir of a trained run.")
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise PlotError(f"{path} lacks the column(s) {', '.join(missing)}; it is not a "
                                f"metrics.csv of this trainer (whose header is "
                                f"{','.join(COLUMNS)}).")
            rows = [_parse_row(path, reader.line_num, row) for row in reader]
    except OSError as e:
        raise PlotError(f"cannot read {path} ({e.strerror}); check the file and its "
                        f"permissions.") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise PlotError(f"{path} is not a readable CSV file ({e}); the file is damaged, and "
                        f"training with --resume rewrites it from the checkpoints.") from None
    if not rows:
        raise PlotError(f"{path} holds no finished epoch yet; draw the curves once the first "
                        f"epoch has ended.")
    for before, row in zip(rows, rows[1:]):
        if row["epoch"] <= before["epoch"]:
            raise PlotError(f"{path}: epoch {row['epoch']} comes after epoch {before['epoch']}; "
                            f"the file is damaged, and training with --resume rewrites it.")
    return rows


# --------------------------------------------------------------------------------------------
# Drawing

def recorded_schedule(modeldir: str) -> str:
    """The --lr_schedule of the run, as its config.json records it; "step" (the default, and the
    schedule of runs older than the others) where no readable config.json says."""
    try:
        with open(os.path.join(modeldir, CONFIG), encoding="utf-8") as f:
            schedule = json.load(f)["config"]["lr_schedule"]
    except (OSError, ValueError, KeyError, TypeError):  # a picture needs no more than a default
        return "step"
    return schedule if isinstance(schedule, str) else "step"


def lr_changes(rows: list, schedule: str = "step") -> list:
    """[(epoch, lr)]: the decays of a step schedule, each epoch whose learning rate is below the
    one before, and its rate. A warm-up's rise is no decay, and a cosine or one-cycle rate
    changes at every epoch, so nothing is marked for them."""
    if schedule != "step":
        return []
    return [(row["epoch"], row["lr"]) for before, row in zip(rows, rows[1:])
            if row["lr"] < before["lr"] and not math.isclose(row["lr"], before["lr"],
                                                              rel_tol=1e-6)]


def _series(rows: list, column: str, scale: float = 1.0) -> list:
    return [math.nan if row[column] is None else scale * row[column] for row in rows]


def _title(name: str, rows: list) -> str:
    epochs = f"{len(rows)} epoch" + ("s" if len(rows) != 1 else "")
    validated = [row for row in rows if row["valid_acc"] is not None]
    if validated:
        best = max(validated, key=lambda row: row["valid_acc"])  # the first of equals
        return (f"{name}: {epochs}, best validation accuracy {100 * best['valid_acc']:.2f}% "
                f"(epoch {best['epoch']})")
    return (f"{name}: {epochs}, no validation, final training accuracy "
            f"{100 * rows[-1]['train_acc']:.2f}%")


def curves_figure(rows: list, name: str, schedule: str = "step"):
    """The two-panel matplotlib Figure of read_metrics' rows; ``name`` goes into the title, and
    the decays of a ``schedule`` "step" are marked."""
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, acc_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in rows]
    marker = "o" if len(rows) <= 30 else None  # single points stay visible in short runs
    has_valid = any(row["valid_loss"] is not None or row["valid_acc"] is not None for row in rows)

    for axes, column, scale, ylabel in ((loss_axes, "loss", 1.0, "loss (cross-entropy)"),
                                        (acc_axes, "acc", 100.0, "accuracy (%)")):
        axes.plot(epochs, _series(rows, f"train_{column}", scale), marker=marker, markersize=3,
                  label="train")
        if has_valid:
            axes.plot(epochs, _series(rows, f"valid_{column}", scale), marker=marker,
                      markersize=3, label="validation")
        for epoch, lr in lr_changes(rows, schedule):
            x = epoch - 0.5  # between the last epoch at the old rate and the first at the new
            axes.axvline(x, linestyle="--", linewidth=0.8, color="0.5")
            axes.text(x, 0.98, f"lr {lr:g} ", transform=axes.get_xaxis_transform(), rotation=90,
                      ha="right", va="top", fontsize=8, color="0.35",
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
    figure.suptitle(_title(name, rows))
    return figure


def draw_curves(modeldir: str) -> str:
    """Draw ``<modeldir>/curves.png`` from ``<modeldir>/metrics.csv``; return its path.

    The picture is written to a temporary file in modeldir and renamed, so curves.png is always
    a whole picture. MatplotlibMissing without matplotlib; PlotError for a missing or damaged
    metrics.csv or a picture that cannot be written.
    """
    _matplotlib()  # the missing extra is named before anything else
    rows = read_metrics(os.path.join(modeldir, METRICS))
    name = os.path.basename(os.path.abspath(modeldir))
    figure = curves_figure(rows, name, recorded_schedule(modeldir))
    return _save_png(figure, os.path.join(modeldir, CURVES))


WEIGHTS = "weights.png"


def weights_figure(magnitudes, name: str):
    """A histogram of log10 |w| over all parameters, 1e-3 and 1e-2 marked (L1 against L2)."""
    import numpy as np
    from matplotlib.figure import Figure

    logs = np.log10(np.maximum(np.asarray(magnitudes, dtype=np.float64), 1e-12))
    figure = Figure(figsize=(FIGSIZE[0] / 2, FIGSIZE[1]), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.hist(logs, bins=80, color="tab:blue")
    for row, edge in enumerate((-3, -2)):
        axes.axvline(edge, color="gray", linestyle="--", linewidth=0.8)
        below = float((logs < edge).mean())
        axes.text(0.02, 0.95 - 0.07 * row, f"{100 * below:.1f}% of |w| below 1e{edge}",
                  transform=axes.transAxes, fontsize=8, va="top")
    axes.set_xlabel("log10 |w|")
    axes.set_ylabel("parameters")
    axes.set_title(f"{name}: {len(logs):,} parameters")
    return figure


def draw_weights(modeldir: str, magnitudes, checkpoint_name: str) -> str:
    """Draw ``<modeldir>/weights.png`` from the |w| of a checkpoint's parameters; return its path."""
    _matplotlib()
    return _save_png(weights_figure(magnitudes, checkpoint_name), os.path.join(modeldir, WEIGHTS))


def _save_png(figure, path: str) -> str:
    atomic.write(path, figure, lambda fig, f: fig.savefig(f, format="png"), PlotError)
    return path


def comparison_figure(lines: list, validation: bool = True):
    """Two panels, accuracy (in percent) and loss against epoch, one line per run: ``lines`` is
    [(label, read_metrics' rows)]. Validation numbers, or with ``validation`` False the training
    ones; each run over its own epochs."""
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import MaxNLocator
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    acc_axes, loss_axes = figure.subplots(1, 2)
    split = "valid" if validation else "train"
    words = "validation" if validation else "training"
    for label, rows in lines:
        epochs = [row["epoch"] for row in rows]
        marker = "o" if len(rows) <= 30 else None
        acc_axes.plot(epochs, _series(rows, f"{split}_acc", 100.0), marker=marker, markersize=3,
                      label=label)
        loss_axes.plot(epochs, _series(rows, f"{split}_loss"), marker=marker, markersize=3,
                       label=label)
    for axes, ylabel in ((acc_axes, f"{words} accuracy (%)"),
                         (loss_axes, f"{words} loss (cross-entropy)")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize=8)
    figure.suptitle(f"{len(lines)} runs compared: {words} accuracy and loss")
    return figure


def draw_comparison(path: str, lines: list, validation: bool = True) -> str:
    """Draw comparison_figure(lines, validation) to path (a PNG, written atomically); return it."""
    _matplotlib()
    return _save_png(comparison_figure(lines, validation), path)
