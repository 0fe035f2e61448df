"""Comparing runs: reading several model folders and labelling each run by what sets it apart.

A run is read from its folder: ``metrics.csv`` (plots.read_metrics), ``config.json`` (the
``"config"`` entry records.write_config writes) and, where there is one, a test report written by
``--mode test --json PATH`` into the folder. Each run is labelled by the run-defining keys
(configure.RUN_DEFINING_KEYS, plus max_epoch) whose values differ among the runs compared, e.g.
``activation=swish, l1=1e-05``; where none differs the label is the folder's name. The summary
of each run is a row of ``compare.csv``. Drawing is plots.py's job; this module draws nothing.
"""
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from configure import RUN_DEFINING_KEYS
from trainer.reports import plots
from trainer.run import checkpoints
from trainer.storage import atomic

COMPARE_PNG = "compare.png"
COMPARE_CSV = "compare.csv"
CSV_COLUMNS = ("run", "differs", "best_valid_acc", "best_epoch", "final_train_loss", "seconds",
               "test_acc")
# What a label may name: the keys that define what a run computes, and its length.
LABEL_KEYS = list(RUN_DEFINING_KEYS) + ["max_epoch"]
MAX_REPORT_BYTES = 64 * 2 ** 20  # a test report of CIFAR-100 is well under 1 MiB


@dataclass
class Run:
    """One model folder's records: ``rows`` of metrics.csv, ``config`` of config.json (None when
    the folder has none readable) and ``test`` (accuracy, checkpoint name, report file) or None."""
    folder: str
    rows: list
    config: Optional[dict] = None
    test: Optional[tuple] = None
    notes: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The folder's own name (``runs/a/`` -> ``a``)."""
        return os.path.basename(os.path.abspath(self.folder))

    @property
    def validated(self) -> bool:
        """Whether any epoch of the run has a validation accuracy."""
        return any(row["valid_acc"] is not None for row in self.rows)


def read_config(folder: str) -> Optional[dict]:
    """The resolved flags config.json records, or None where the folder has no readable one."""
    try:
        with open(os.path.join(folder, plots.CONFIG), encoding="utf-8") as f:
            config = json.load(f).get("config")
    except (OSError, ValueError, AttributeError):  # a label needs no more than the folder name
        return None
    return config if isinstance(config, dict) else None


def read_run(folder: str) -> Run:
    """The run in ``folder``; a PlotError naming the folder when it is not a model folder or its
    metrics.csv cannot be read."""
    has_metrics = os.path.isfile(os.path.join(folder, plots.METRICS))
    config = read_config(folder)
    if not has_metrics and not os.path.exists(os.path.join(folder, plots.CONFIG)):
        if not os.path.isdir(folder):
            raise plots.PlotError(f"{folder} is not a folder; pass the --modeldir of a trained "
                                  f"run.")
        raise plots.PlotError(f"{folder} is not a model folder (it holds neither "
                              f"{plots.METRICS} nor {plots.CONFIG}).")
    run = Run(folder, plots.read_metrics(os.path.join(folder, plots.METRICS)), config)
    if config is None:
        run.notes.append(f"{folder} has no readable {plots.CONFIG}; labelled by its folder name.")
    run.test = find_test_accuracy(folder)
    return run


def _report_accuracy(report) -> Optional[tuple]:
    """(accuracy, checkpoint) of a --mode test --json report on the test set: that of
    model-best.ckpt where the report has it, else of its latest epoch; None for anything else."""
    if not isinstance(report, dict) or report.get("set") != "test":
        return None
    entries = [e for e in report.get("checkpoints") or [] if isinstance(e, dict)
               and isinstance(e.get("checkpoint"), str) and isinstance(e.get("epoch"), int)
               and isinstance(e.get("accuracy"), (int, float))]
    if not entries:
        return None
    best = [e for e in entries if e["checkpoint"] == checkpoints.BEST]
    chosen = best[0] if best else max(entries, key=lambda e: e["epoch"])
    return float(chosen["accuracy"]), chosen["checkpoint"]


def find_test_accuracy(folder: str) -> Optional[tuple]:
    """(accuracy, checkpoint, file) from the newest test report (by modification time) in folder:
    a ``.json`` file that ``--mode test --json`` wrote on the test set. None where there is none."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # an unreadable folder has no report to show
        return None
    for entry in entries:
        if (not entry.name.endswith(".json") or entry.name == plots.CONFIG
                or not entry.is_file(follow_symlinks=False)):
            continue
        stat = entry.stat(follow_symlinks=False)
        if stat.st_size > MAX_REPORT_BYTES:
            continue
        try:
            with open(entry.path, encoding="utf-8") as f:
                result = _report_accuracy(json.load(f))
        except (OSError, ValueError):  # not a report of ours: other JSON files are the user's
            continue
        if result is not None:
            found.append((stat.st_mtime, entry.name, result))
    if not found:
        return None
    _, name, (accuracy, checkpoint) = max(found)
    return accuracy, checkpoint, name


def load_runs(folders: list) -> tuple:
    """([Run], [note]) of the folders, each once; a folder that cannot be read is left out with a
    note naming it. A PlotError where fewer than two runs remain to compare."""
    runs, reasons, seen = [], [], {}
    for folder in folders:
        real = os.path.realpath(folder)
        if real in seen:
            reasons.append(f"{folder} is given twice (as {seen[real]} before)")
            continue
        seen[real] = folder
        try:
            runs.append(read_run(folder))
        except plots.PlotError as e:
            reasons.append(str(e).rstrip("."))
    if len(runs) < 2:
        raise plots.PlotError(f"comparing needs at least two runs, but only {len(runs)} of the "
                              f"--modeldir folders holds one ({'; '.join(reasons)}).")
    notes = [f"{reason}; left out." if "given twice" not in reason else f"{reason}; compared once."
             for reason in reasons]
    return runs, notes + [note for run in runs for note in run.notes]


def _value(config: dict, key: str):
    """A key's value in a run's config, with the meaning older runs had where it is absent."""
    value = config.get(key, checkpoints.LEGACY_CONFIG.get(key))
    return tuple(value) if isinstance(value, list) else value


def _text(value) -> str:
    """A value as a label shows it (an epoch list joined by commas, as sweep folders name it)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def differing_keys(runs: list) -> list:
    """The LABEL_KEYS whose values are not the same in every run that has a config."""
    configs = [run.config for run in runs if run.config is not None]
    return [key for key in LABEL_KEYS
            if len({repr(_value(config, key)) for config in configs}) > 1]


def labels(runs: list) -> list:
    """One short label per run: ``key=value, ...`` over the differing keys, else the folder name;
    a label two runs share gets the folder name added, so that every line can be told apart."""
    keys = differing_keys(runs)
    texts = [", ".join(f"{key}={_text(_value(run.config, key))}" for key in keys)
             if keys and run.config is not None else run.name for run in runs]
    return [f"{text} ({run.name})" if texts.count(text) > 1 and text != run.name else text
            for text, run in zip(texts, runs)]


def lines_to_draw(runs: list, labels: list) -> tuple:
    """([(label, rows)], validation) for the picture: the runs that have validation, drawn by
    their validation numbers (validation True); where no run has any (all --train_all), every
    run by its training numbers (validation False)."""
    validation = any(run.validated for run in runs)
    return [(label, run.rows) for label, run in zip(labels, runs)
            if run.validated or not validation], validation


def summary(run: Run, label: str) -> dict:
    """The compare.csv row of a run (accuracies as fractions; None where there is no value)."""
    validated = [row for row in run.rows
                 if row["valid_acc"] is not None and math.isfinite(row["valid_acc"])]
    # the first of equals
    best = max(validated, key=lambda row: row["valid_acc"]) if validated else None
    return {"run": run.folder, "differs": label,
            "best_valid_acc": best["valid_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_train_loss": run.rows[-1]["train_loss"],
            "seconds": sum(row["seconds"] for row in run.rows),
            "test_acc": run.test[0] if run.test else None}


def csv_text(rows: list) -> str:
    """compare.csv: a header of CSV_COLUMNS and a row per run, numbers exactly, empty for None."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else str(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_csv(path: str, rows: list) -> str:
    """Write compare.csv to path atomically; return the path."""
    atomic.write_text(path, csv_text(rows), plots.PlotError)
    return path


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(rows: list) -> str:
    """The summaries, aligned, one line per run."""
    header = ["run", "differs", "best valid", "epoch", "final loss", "seconds", "test acc"]
    body = [[row["run"], row["differs"], _percent(row["best_valid_acc"]),
             "-" if row["best_epoch"] is None else str(row["best_epoch"]),
             f"{row['final_train_loss']:.4f}", f"{row['seconds']:.0f}", _percent(row["test_acc"])]
            for row in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header] + body)
