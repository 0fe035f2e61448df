"""Sweeps: one training run per value (or, with several --sweep, per combination of values).

Each run trains in its own folder ``<modeldir>/<key>=<value>[,<key>=<value>]/`` with its own
checkpoints and metrics, exactly as ``--mode train`` would with the swept values given as flags:
the recipe, the number of classes and every other derived value are resolved per run. Every value
is checked before anything trains. A run that fails (a loss that diverges, a batch larger than the
data, say) is recorded as failed with its reason and the sweep goes on. With ``--resume`` finished
runs are skipped and an interrupted one continues; a folder trained with other flags is refused,
so that one table never mixes runs. At the end a table is printed and written to
``<modeldir>/sweep.csv``, each value written exactly as its folder names it, and, with matplotlib,
``<modeldir>/compare.png`` draws every value's validation accuracy and loss.
"""
import copy
import csv
import dataclasses
import io
import itertools
import os

import DataReader
import Model
from configure import Config, ConfigError
from trainer.reports import compare
from trainer.reports import plots
from trainer.run import checkpoints
from trainer.storage import atomic

SWEEP_CSV = "sweep.csv"
RESULT_COLUMNS = ("status", "best_valid_acc", "best_epoch", "final_train_loss", "seconds")
MAX_NAME_BYTES = 255  # the longest file name of common file systems (ext4, APFS, NTFS)

# Keys a sweep cannot vary meaningfully, and why. What a sweep compares is what is trained (and
# how fast: amp, channels_last, compile, eval_batch_size stay sweepable); these change neither.
_WHERE = "it says where or how the sweep runs, not what is trained; give --{key} once for all runs"
NOT_SWEPT = {
    **dict.fromkeys(("modeldir", "data_dir", "download", "download_url", "device", "quiet",
                     "tensorboard"), _WHERE),
    # Every run keeps its last epoch's checkpoint whatever the interval, and that is all the table
    # and --resume read.
    "save_interval": "it changes only which epochs keep a checkpoint, not what is trained; give "
                     "--save_interval once for all runs",
    "tta": "it applies to --mode test and predict, not to training; test a run's folder with "
           "--mode test --tta flip",
    **dict.fromkeys(("sync_bn", "dist_timeout"), "it applies under torchrun only, and a sweep "
                                                 "runs in one process"),
}


def parse(specs) -> list:
    """[[key, value, ...], ...] from the command line -> [(key, [typed values])], each value
    checked as its flag would be (type and choices); a value given twice is refused."""
    fields = {f.name: f for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
    sweeps = []
    for spec in specs:
        key, texts = spec[0], spec[1:]
        if key in NOT_SWEPT:
            raise ConfigError(f"--sweep {key} cannot be swept: {NOT_SWEPT[key].format(key=key)}.")
        if key not in fields:
            raise ConfigError(f"--sweep {key}: not a configuration value that can be swept; use "
                              f"a flag name of configure.py, such as learning_rate.")
        if not texts:
            raise ConfigError(f"--sweep {key} needs at least one value.")
        if key in (k for k, _ in sweeps):
            raise ConfigError(f"--sweep {key} is given twice; list all its values once.")
        values = [_typed(fields[key], key, t) for t in texts]
        for i, value in enumerate(values):
            if value in values[:i]:  # one folder for both (0.1 and 0.10, 0.0 and -0.0)
                raise ConfigError(f"--sweep {key}: {texts[i]!r} is the same value as "
                                  f"{texts[values.index(value)]!r}; list each value once.")
        sweeps.append((key, values))
    return sweeps


def _typed(field, key: str, text: str):
    """The value of one --sweep text, as the flag's argparse type and choices would take it."""
    default = field.default
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value = text.lower() in ("true", "1")
        elif isinstance(default, tuple):
            value = tuple(int(v) for v in text.split(",") if v)
        else:
            value = type(default)(text)
    except ValueError:
        raise ConfigError(f"--sweep {key}: {text!r} is not a value of {key}.") from None
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"--sweep {key}: {text!r} is not one of "
                          f"{', '.join(map(str, choices))}.")
    return value


def combinations(sweeps) -> list:
    """Every combination of the swept values, as dicts, in the order given."""
    keys = [k for k, _ in sweeps]
    return [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in sweeps))]


def _text(value) -> str:
    """A value as its folder name and sweep.csv write it: exactly (a float's shortest text that
    reads back as the same float, an epoch list joined by commas)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def folder_name(combo: dict) -> str:
    # parse admits only numbers, switches, epoch lists and listed choices, so no value holds a
    # path separator and the name stays inside --modeldir; plan checks its length.
    return ",".join(f"{k}={_text(v)}" for k, v in combo.items())


def plan(cli: dict, explicit, sweeps) -> list:
    """[(combo, Config)] of every combination, each configured as its own command line would be.

    ``cli`` holds the command line's configuration values as parsed (before the recipe and the
    derived values), ``explicit`` the configuration flags it gave. A run's Config is made afresh
    from them with the swept values given as flags: __post_init__ derives num_classes and
    download_url from its dataset and label_mode, its recipe sets all but the explicit and swept
    keys, and it is checked as the flags would be. ConfigError names the first run refused.
    """
    given = set(explicit) | {k for k, _ in sweeps}
    if {"budget_minutes", "max_epoch"} <= given:
        raise ConfigError("--budget_minutes sets the number of epochs itself; sweep or give it "
                          "or --max_epoch, not both.")
    names = [f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")]
    runs = []
    for combo in combinations(sweeps):
        name = folder_name(combo)
        size = len(os.fsencode(name))
        if size > MAX_NAME_BYTES:
            raise ConfigError(f"--sweep: the folder name {name[:40]}... is {size} bytes, too long "
                              f"for a folder name (at most {MAX_NAME_BYTES}); sweep fewer or "
                              f"shorter values.")
        values = dict({k: cli[k] for k in names}, **combo,
                      modeldir=os.path.join(cli["modeldir"], name))
        if cli["tensorboard"]:  # one TensorBoard run per value, side by side
            values["tensorboard"] = os.path.join(cli["tensorboard"], name)
        try:
            run_config = Config(**values).apply_recipe(given).check_applicable(given).validate()
        except ConfigError as e:
            raise ConfigError(f"sweep value {name}: {e}") from None
        runs.append((combo, run_config))
    return runs


def _summary(history: list) -> dict:
    validated = [m for m in history if "valid_acc" in m]
    best = max(validated, key=lambda m: m["valid_acc"]) if validated else None
    return {"best_valid_acc": best["valid_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "seconds": sum(m["seconds"] for m in history)}


def _finished_history(run_config: Config, name: str, log):
    """With --resume: the metrics of the run in a value's folder if it reached max_epoch there,
    else None (a run to continue, or none yet). What resuming it would refuse (a run trained with
    other flags, nothing to resume from) and a run trained past max_epoch are refused here, before
    any value trains, so that sweep.csv never mixes runs."""
    if not checkpoints.run_files(run_config.modeldir):
        return None
    # A copy: it adopts a budget run's own plan.
    model = Model.MyModel(copy.copy(run_config), log=log)
    try:
        ckpt = model.check_resumable("latest")
    except checkpoints.CheckpointError as e:
        raise checkpoints.CheckpointError(f"sweep value {name}: {e}") from None
    max_epoch = model.config.max_epoch
    if ckpt["epoch"] > max_epoch:
        raise checkpoints.CheckpointError(
            f"sweep value {name}: {run_config.modeldir} holds {ckpt['epoch']} epochs, more than "
            f"--max_epoch {max_epoch}, so its results are not this sweep's; pass --max_epoch "
            f"{ckpt['epoch']} to resume the sweep, or choose another --modeldir.")
    if ckpt["epoch"] < max_epoch:
        return None
    return ckpt["metrics"]


def _check_table(modeldir: str, resume: bool, overwrite: bool) -> None:
    """A new sweep does not replace another sweep's table unasked."""
    if not resume and not overwrite and os.path.lexists(os.path.join(modeldir, SWEEP_CSV)):
        raise checkpoints.CheckpointError(
            f"--modeldir {modeldir} already holds a sweep's {SWEEP_CSV}; pass --resume to "
            f"continue that sweep, choose another --modeldir, or pass --overwrite to replace it.")


def run(cli: dict, explicit, sweeps, resume: bool, overwrite: bool, train, log=print) -> list:
    """Train every combination with ``train(config, resume, overwrite) -> history``; return the
    result rows (dicts of the swept values and RESULT_COLUMNS) and write sweep.csv.

    ``cli`` and ``explicit``: the command line's values and flags (see plan). Whatever can be
    refused without the data is refused before the first run trains; a run refused later (its
    batch larger than the data, say) or failing is recorded as failed, and the sweep goes on.
    """
    runs = plan(cli, explicit, sweeps)
    _check_table(cli["modeldir"], resume, overwrite)
    finished = [_finished_history(run_config, folder_name(combo), log) if resume else None
                for combo, run_config in runs]
    if not resume and not overwrite:
        for _, run_config in runs:
            checkpoints.check_fresh_start(run_config.modeldir, overwrite=False)
    rows = []
    for (combo, run_config), history in zip(runs, finished):
        name = folder_name(combo)
        if history is not None:
            log(f"sweep: {name} already finished; skipped")
            rows.append(dict(combo, status="done", **_summary(history)))
            continue
        log(f"sweep: {name}")
        # With --resume a run continues from its newest checkpoint; one that left none (it failed,
        # or was stopped in its first epoch) starts anew over the records of that attempt.
        continues = resume and bool(checkpoints.run_files(run_config.modeldir))
        try:
            if continues:
                history = train(run_config, "latest", overwrite)
            else:
                history = train(run_config, None, overwrite or resume)
            rows.append(dict(combo, status="done", **_summary(history)))
        except (Model.TrainingError, ConfigError, DataReader.DataError) as e:
            # training's own failures and refusals are a run's, not the sweep's
            log(f"sweep: {name} failed: {e}")
            rows.append(dict(combo, status=f"failed: {e}", best_valid_acc=None, best_epoch=None,
                             final_train_loss=None, seconds=None))
    _write(cli["modeldir"], [k for k, _ in sweeps], rows)
    draw_comparison(cli["modeldir"], [run_config.modeldir for _, run_config in runs],
                    [folder_name(combo) for combo, _ in runs], resume or overwrite, log)
    return rows


def draw_comparison(modeldir: str, folders: list, labels: list, replace: bool, log=print) -> None:
    """Draw ``<modeldir>/compare.png``: each value's validation accuracy and loss, labelled
    key=value. Never a failure of the sweep: without matplotlib, values with no finished epoch, a
    compare.png not this sweep's (kept unless ``replace``: --resume or --overwrite) or a picture
    that cannot be written, it logs one note and draws what it can."""
    path = os.path.join(modeldir, compare.COMPARE_PNG)
    if not plots.matplotlib_available():
        log(f"note: {compare.COMPARE_PNG} not drawn: matplotlib is not installed "
            f"({plots.INSTALL_HINT}).")
        return
    if os.path.lexists(path) and not replace:
        log(f"note: {path} already exists and is not this sweep's; left as it is.")
        return
    runs, drawn_labels = [], []
    for folder, label in zip(folders, labels):
        try:
            runs.append(compare.read_run(folder))
        except plots.PlotError:  # a value that failed before its first epoch has nothing to draw
            continue
        drawn_labels.append(label)
    if not runs:
        log(f"note: {compare.COMPARE_PNG} not drawn: no value finished an epoch.")
        return
    try:
        log(f"wrote {plots.draw_comparison(path, *compare.lines_to_draw(runs, drawn_labels))}")
    except plots.PlotError as e:
        log(f"note: {compare.COMPARE_PNG} not drawn: {e}")


def _cell(value) -> str:
    return "" if value is None else _text(value)  # exact: read back, a value is the one written


def _write(modeldir: str, keys: list, rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys + list(RESULT_COLUMNS))
    for row in rows:
        writer.writerow([_cell(row[k]) for k in keys + list(RESULT_COLUMNS)])
    os.makedirs(modeldir, exist_ok=True)
    atomic.write_text(os.path.join(modeldir, SWEEP_CSV), buffer.getvalue(),
                      checkpoints.CheckpointError)


def format_table(keys: list, rows: list) -> str:
    """The sweep's results, aligned, one row per run."""
    header = keys + ["best valid", "epoch", "final loss", "seconds", "status"]
    body = [[_text(r[k]) for k in keys]
            + ["-" if r["best_valid_acc"] is None else f"{100 * r['best_valid_acc']:.2f}%",
               "-" if r["best_epoch"] is None else str(r["best_epoch"]),
               "-" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}",
               "-" if r["seconds"] is None else f"{r['seconds']:.0f}",
               r["status"] if len(r["status"]) <= 60 else r["status"][:57] + "..."]
            for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header] + body)
