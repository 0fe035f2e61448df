"""What a training run leaves to look at besides its checkpoints: metrics.csv and config.json.

``<modeldir>/metrics.csv`` has one row per finished epoch, flushed to disk as each epoch ends, so a
killed run keeps its rows up to its last finished epoch. On resume the file is rewritten from the
checkpoint's own history before new rows are added, so it holds each epoch exactly once whatever
happened to it since. ``<modeldir>/config.json`` records what the run was: its resolved flags, the
device, the versions and the data.
"""
import csv
import io
import json
import os
import platform

import torch

from trainer.run import checkpoints
from trainer.storage import atomic

METRICS = "metrics.csv"
CONFIG = "config.json"
COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds",
           "images_per_second")  # accuracies are fractions in [0, 1]; losses mean cross-entropy


def _cell(value) -> str:
    if value is None:
        return ""  # no validation this epoch
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _row(metrics: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_cell(metrics.get(c)) for c in COLUMNS])
    return buffer.getvalue()


def _header() -> str:
    return ",".join(COLUMNS) + "\n"


class MetricsFile:
    """``<modeldir>/metrics.csv``, written as training goes."""

    def __init__(self, modeldir: str):
        self.path = os.path.join(modeldir, METRICS)

    def start(self, history: list) -> None:
        """Rewrite the file (atomically) to hold exactly the epochs of history, one row each."""
        text = _header() + "".join(_row(m) for m in history)
        atomic.write_text(self.path, text, checkpoints.CheckpointError)

    def append(self, metrics: dict) -> None:
        """Add one finished epoch's row and push it to disk."""
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(_row(metrics))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise checkpoints.CheckpointError(
                f"could not write {self.path} ({e.strerror}); free some space or choose another "
                f"--modeldir.") from None


def write_config(modeldir: str, config_dict: dict, device, data: dict) -> str:
    """Write ``<modeldir>/config.json`` atomically; return its path.

    ``data`` names the data set and its sizes, e.g. {"dataset": "cifar10", "train": 45000, ...}.
    """
    path = os.path.join(modeldir, CONFIG)
    record = {
        "config": config_dict,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "data": data,
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic.write_text(path, text, checkpoints.CheckpointError)
    return path
