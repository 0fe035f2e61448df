"""Sweeps: one training run per value (or, with several --sweep, per combination of values).

Each run trains in its own folder ``<modeldir>/<key>=<value>[,<key>=<value>]/`` with its own
checkpoints and metrics, exactly as ``--mode train`` would with the swept values given as flags:
the recipe, the number of classes and every other derived value are resolved per run. Every value
is checked before anything trains. A run that fails (a loss that diverges, a batch larger than the
data, say) is recorded as failed with its reason and the sweep goes on. With ``--resume`` finished
runs are skipped and an interrupted one continues; a folder trained with other flags is refused,
so that one table never mixes runs. At the end a table is printed and written to
``<modeldir>/sweep.csv``, each value written exactly as its folder names it.
"""
import copy
import csv
import dataclasses
import io
import itertools
import os

import checkpoints
from configure import Config, ConfigError

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
    fields = {f.name: f for f in dataclasses.fields(Config)}
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
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def folder_name(combo: dict) -> str:
    return ",".join(f"{k}={_text(v)}" for k, v in combo.items())


def _summary(history: list) -> dict:
    validated = [m for m in history if "valid_acc" in m]
    best = max(validated, key=lambda m: m["valid_acc"]) if validated else None
    return {"best_valid_acc": best["valid_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "seconds": sum(m["seconds"] for m in history)}


def _finished_history(config: Config):
    """The metrics of a run that already reached max_epoch in its folder, or None."""
    found = checkpoints.list_checkpoints(config.modeldir)
    if not found or found[-1] < config.max_epoch:
        return None
    path = checkpoints.checkpoint_path(config.modeldir, found[-1])
    return checkpoints.read_checkpoint(path)["metrics"]


def run(config: Config, sweeps, resume: bool, overwrite: bool, train, log=print) -> list:
    """Train every combination with ``train(config, resume, overwrite) -> history``; return the
    result rows (dicts of the swept values and RESULT_COLUMNS) and write sweep.csv."""
    from Model import TrainingError  # training's own failures are a run's, not the sweep's

    runs = []
    for combo in combinations(sweeps):
        run_config = dataclasses.replace(config, **combo,
                                         modeldir=os.path.join(config.modeldir, folder_name(combo)))
        runs.append((combo, run_config.validate()))
    if not resume and not overwrite:
        for _, run_config in runs:
            checkpoints.check_fresh_start(run_config.modeldir, overwrite=False)
    rows = []
    for combo, run_config in runs:
        name = folder_name(combo)
        history = _finished_history(run_config) if resume else None
        if history is not None:
            log(f"sweep: {name} already finished; skipped")
            rows.append(dict(combo, status="done", **_summary(history)))
            continue
        log(f"sweep: {name}")
        has_run = bool(checkpoints.run_files(run_config.modeldir))
        try:
            history = train(run_config, "latest" if resume and has_run else None, overwrite)
            rows.append(dict(combo, status="done", **_summary(history)))
        except TrainingError as e:
            log(f"sweep: {name} failed: {e}")
            rows.append(dict(combo, status=f"failed: {e}", best_valid_acc=None, best_epoch=None,
                             final_train_loss=None, seconds=None))
    _write(config.modeldir, [k for k, _ in sweeps], rows)
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else _text(value)


def _write(modeldir: str, keys: list, rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys + list(RESULT_COLUMNS))
    for row in rows:
        writer.writerow([_cell(row[k]) for k in keys + list(RESULT_COLUMNS)])
    os.makedirs(modeldir, exist_ok=True)
    checkpoints.atomic_save(buffer.getvalue(), os.path.join(modeldir, SWEEP_CSV),
                            writer=lambda t, f: f.write(t.encode()))


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
