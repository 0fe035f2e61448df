"""Comparing runs: reading several model folders and labelling each run by what sets it apart.

A run is read from its folder: ``metrics.csv`` (plots.read_metrics), ``config.json`` (the
``"config"`` entry records.write_config writes) and, where there is one, a test report written
into the folder by ``--mode test --json PATH`` or by ``--mode train --test`` (test_report.json).
Each run is labelled by what its user chose that differs among the runs compared: its --recipe
and --budget_minutes, then the run-defining keys (configure.RUN_DEFINING_KEYS, plus max_epoch)
where some run holds a value of its own, e.g. ``activation=swish, l1=1e-05``. A value its
recipe set, or that its budget planned, is not the user's; where nothing differs the label is the
folder's name. The summary of each run is a row of ``compare.csv``; its ``train_seconds`` is
the sum of metrics.csv's ``seconds``, the time each epoch spent training (validation, checkpoints
and the start-up not included). Drawing is plots.py's job; this module draws nothing.

A test report counts for a run only while the checkpoint it tested is in the folder as it was:
the report records each checkpoint's SHA-256 (reports.file_digest), so a report left from a run
that --overwrite replaced, or of a model-best.ckpt that training has since moved on, is not
taken for this run's test accuracy.
"""
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from configure import RECIPES, RUN_DEFINING_KEYS, Config, applies
from trainer.reports import plots, reports
from trainer.run import checkpoints
from trainer.storage import atomic

COMPARE_PNG = "compare.png"
COMPARE_CSV = "compare.csv"
CSV_COLUMNS = ("run", "differs", "best_valid_acc", "best_epoch", "final_train_loss",
               "train_seconds", "test_acc")
# What a label may name: how the run was started (its recipe and time budget), the keys that
# define what it computes, and its length.
CHOICE_KEYS = ["recipe", "budget_minutes"]
LABEL_KEYS = CHOICE_KEYS + list(RUN_DEFINING_KEYS) + ["max_epoch"]
# The values a --budget_minutes run plans itself from its measured speed
# (budget_plan.planned_changes; a resume adopts them, with plan_anchor, run/state.py): the
# budget's, not the user's. plan_anchor is no run-defining key, so no label names it anyway.
BUDGET_PLANNED = ("max_epoch", "final_epoch_share", "lr_decay_epochs", "warmup_epochs")
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
    run.test, stale = test_reports(folder)
    if stale:
        names = ", ".join(stale)
        run.notes.append(f"{folder}: {names} did not test the checkpoints now in the folder "
                         f"(a run --overwrite replaced, training since, or a report from before "
                         f"reports recorded what they tested), so its test_acc is not used; run "
                         f"--mode test --json again.")
    return run


def _test_entries(report) -> list:
    """The checkpoint entries of a --mode test --json report on the test set ([] for another
    set, or a JSON file that is no such report)."""
    if not isinstance(report, dict) or report.get("set") != "test":
        return []
    return [e for e in report.get("checkpoints") or [] if isinstance(e, dict)
            and isinstance(e.get("checkpoint"), str) and isinstance(e.get("epoch"), int)
            and isinstance(e.get("accuracy"), (int, float))]


def _tested_here(folder: str, entry: dict, digests: dict) -> bool:
    """Whether the report entry tested the checkpoint of that name in folder as it is now: the
    file is there and its SHA-256 is the one the report recorded. ``digests``: those computed so
    far, by name (each file is read once)."""
    name = entry["checkpoint"]
    if not isinstance(entry.get("sha256"), str) or not checkpoints.is_checkpoint_name(name):
        return False  # a name that is no checkpoint of this folder (../x, a path) is not read
    if name not in digests:
        path = os.path.join(folder, name)
        try:
            digests[name] = reports.file_digest(path) \
                if os.path.isfile(path) and not os.path.islink(path) else None
        except OSError:  # unreadable: nothing to tie the report to
            digests[name] = None
    return digests[name] == entry["sha256"]


def test_reports(folder: str) -> tuple:
    """((accuracy, checkpoint, file) or None, [stale report]) of the test reports in folder (the
    ``.json`` files ``--mode test --json`` wrote on the test set): the newest report (by
    modification time) that tested a checkpoint now in the folder gives the accuracy of
    model-best.ckpt where it tested the one there, else of its latest such checkpoint. Reports
    newer than that one which tested none of them are stale."""
    try:
        entries = list(os.scandir(folder))
    except OSError:  # an unreadable folder has no report to show
        return None, []
    found, digests = [], {}
    for entry in entries:
        if (not entry.name.endswith(".json") or entry.name == plots.CONFIG
                or not entry.is_file(follow_symlinks=False)):
            continue
        stat = entry.stat(follow_symlinks=False)
        if stat.st_size > MAX_REPORT_BYTES:
            continue
        try:
            with open(entry.path, encoding="utf-8") as f:
                tested = _test_entries(json.load(f))
        except (OSError, ValueError):  # not a report of ours: other JSON files are the user's
            continue
        if tested:
            found.append((stat.st_mtime, entry.name,
                          [e for e in tested if _tested_here(folder, e, digests)]))
    stale = []
    for _, name, here in sorted(found, reverse=True):
        if not here:
            stale.append(name)
            continue
        best = [e for e in here if e["checkpoint"] == checkpoints.BEST]
        chosen = best[0] if best else max(here, key=lambda e: e["epoch"])
        return (float(chosen["accuracy"]), chosen["checkpoint"], name), stale
    return None, stale


def find_test_accuracy(folder: str) -> Optional[tuple]:
    """(accuracy, checkpoint, file) of the run in folder from its newest test report of the
    checkpoints now there (test_reports); None where there is none."""
    return test_reports(folder)[0]


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


def _applies(config: dict, key: str) -> bool:
    """Whether key shapes the run's network (resnet_size means nothing to airbench)."""
    network = _value(config, "network")
    return not isinstance(network, str) or applies(key, network)


def _defaults(config: dict) -> dict:
    """What each key holds in a run unless its user or its recipe chose otherwise: configure's
    defaults, with the number of classes of the run's data set."""
    try:
        follows = Config(dataset=_value(config, "dataset"), label_mode=_value(config, "label_mode"))
    except (TypeError, ValueError):  # a config.json edited by hand: the plain defaults
        follows = Config()
    return {key: tuple(v) if isinstance(v, list) else v for key, v in follows.to_dict().items()}


def own_choice(config: dict, key: str) -> bool:
    """Whether the run's value of key is its user's choice: its recipe and budget always are;
    another key is when its value is neither its recipe's nor the default, nor one the run
    planned itself (a budget's epochs, the width the speed recipe chooses: width_scale 0)."""
    if key in CHOICE_KEYS:
        return True
    recipe = RECIPES.get(_value(config, "recipe"), {})
    if _value(config, "budget_minutes") and key in BUDGET_PLANNED:
        return False
    if key == "width_scale" and recipe.get("width_scale") == 0:
        return False  # chosen for the budget (trainer/training/sizing.py), or 1 without one
    reference = recipe[key] if key in recipe else _defaults(config).get(key)
    return repr(_value(config, key)) != repr(tuple(reference) if isinstance(reference, list)
                                             else reference)


def differing_keys(runs: list) -> list:
    """The LABEL_KEYS whose values are not the same in every run that has a config (and whose
    network the key shapes), where at least one of those runs chose its value itself."""
    configs = [run.config for run in runs if run.config is not None]
    keys = []
    for key in LABEL_KEYS:
        shaped = [config for config in configs if _applies(config, key)]
        if len({repr(_value(config, key)) for config in shaped}) > 1 and \
                any(own_choice(config, key) for config in shaped):
            keys.append(key)
    return keys


def _label(run: Run, keys: list) -> str:
    """``key=value, ...`` of the keys that shape the run's network; the folder name without."""
    if run.config is None:
        return run.name
    shown = [f"{key}={_text(_value(run.config, key))}" for key in keys
             if _applies(run.config, key)]
    return ", ".join(shown) or run.name


def labels(runs: list) -> list:
    """One short label per run: ``key=value, ...`` over the differing keys, else the folder name;
    a label two runs share gets the folder name added, so that every line can be told apart."""
    keys = differing_keys(runs)
    texts = [_label(run, keys) for run in runs]
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
            "train_seconds": sum(row["seconds"] for row in run.rows),
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
    header = ["run", "differs", "best valid", "epoch", "final loss", "train s", "test acc"]
    body = [[row["run"], row["differs"], _percent(row["best_valid_acc"]),
             "-" if row["best_epoch"] is None else str(row["best_epoch"]),
             f"{row['final_train_loss']:.4f}", f"{row['train_seconds']:.0f}",
             _percent(row["test_acc"])]
            for row in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header] + body)
