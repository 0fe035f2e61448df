"""Optional TensorBoard logging (``--tensorboard DIR``): the per-epoch numbers of metrics.csv.

The ``tensorboard`` package is an optional extra: without it ``open_writer`` raises
``TensorBoardMissing``, one line saying how to install it, so a run can stop before training.
``EpochLogger`` is the epoch callback a training run appends to log each finished epoch.
"""
import importlib.util
import os

INSTALL_HINT = "pip install tensorboard (or pip install -r requirements-dev.txt)"
# metrics.csv column -> TensorBoard tag; the tag's first part groups train and validation.
TAGS = {"lr": "lr",
        "train_loss": "loss/train", "valid_loss": "loss/valid",
        "train_acc": "accuracy/train", "valid_acc": "accuracy/valid",  # fractions in [0, 1]
        "seconds": "time/seconds", "images_per_second": "time/images_per_second"}


class TensorBoardError(RuntimeError):
    """TensorBoard logging cannot start; one sentence saying why and what to do."""


class TensorBoardMissing(TensorBoardError):
    """The tensorboard package, an optional extra, is not installed (or does not import)."""


def require_tensorboard() -> None:
    """TensorBoardMissing unless torch.utils.tensorboard can be imported."""
    if importlib.util.find_spec("tensorboard") is None:
        raise TensorBoardMissing(f"--tensorboard needs the tensorboard package, an optional "
                                 f"extra that is not installed; install it: {INSTALL_HINT}.")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise TensorBoardMissing(f"tensorboard is installed but torch.utils.tensorboard does not "
                                 f"import ({e}); reinstall it: {INSTALL_HINT}.") from None


def check_logdir(logdir: str) -> None:
    """TensorBoardError unless logdir is a folder that exists or can be made; called before
    training, so that a bad --tensorboard is not found out only after the first epoch."""
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise TensorBoardError(f"--tensorboard {logdir} is a file; name a folder (it is made if "
                               f"needed).")
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise TensorBoardError(f"cannot make the --tensorboard folder {logdir} ({e.strerror}); "
                               f"choose a folder you can write to.") from None


def open_writer(logdir: str, purge_step: int = None):
    """A torch.utils.tensorboard.SummaryWriter writing into logdir (made if needed).

    ``purge_step``: on --resume, the first epoch this run trains; TensorBoard then hides what an
    earlier run logged from that epoch on, as metrics.csv drops its rows past the checkpoint.
    TensorBoardMissing without the tensorboard package; TensorBoardError if logdir cannot be
    written. Close the writer when training ends.
    """
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter
    check_logdir(logdir)
    try:
        return SummaryWriter(log_dir=logdir, purge_step=purge_step)
    except OSError as e:
        raise TensorBoardError(f"cannot write TensorBoard logs to {logdir} ({e.strerror}); "
                               f"choose a folder you can write to with --tensorboard.") from None


def log_epoch(writer, metrics: dict) -> None:
    """Log one finished epoch's numbers (a metrics.csv row as a dict) at step = its epoch.

    Absent or None entries (no validation) are skipped; the writer is flushed, so a killed run
    keeps every finished epoch.
    """
    step = int(metrics["epoch"])
    for column, tag in TAGS.items():
        value = metrics.get(column)
        if value is not None:
            writer.add_scalar(tag, float(value), step)
    writer.flush()


class EpochLogger:
    """An epoch callback: logs each finished epoch's metrics into logdir. The writer opens at the
    first epoch this process trains, so a resumed run replaces what the log holds from that epoch
    on (as metrics.csv does); ``closer`` (a contextlib.ExitStack) closes it when training ends."""

    def __init__(self, logdir: str, closer):
        self.logdir, self.closer, self.writer = logdir, closer, None

    def __call__(self, metrics: dict) -> None:
        if self.writer is None:
            self.writer = open_writer(self.logdir, purge_step=metrics["epoch"])
            self.closer.callback(self.writer.close)
        log_epoch(self.writer, metrics)
