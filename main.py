"""Command line: train, test checkpoints, or predict a private image set.

    python main.py --mode train [--data_dir D] [--modeldir M] [--resume [N]] [...]
    python main.py --mode test --checkpoints 160 170 [--eval_set test|valid]
    python main.py --mode predict [--checkpoint N] [--private_data P] [--output O]

Every field of ``configure.Config`` is a flag of the same name; ``--help`` lists them with defaults.
"""
import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time

STARTED = time.monotonic()  # --budget_minutes counts from here


def _quit_while_starting(signum, frame):
    # A KeyboardInterrupt raised inside torch's import can cross C++ code and abort the process
    # with a core dump or a traceback; nothing has been done yet, so leave at once instead.
    os.write(2, b"interrupted while starting; nothing was done.\n")
    os._exit(130)


if __name__ == "__main__":  # importing torch takes seconds: a Ctrl-C meanwhile ends quietly
    signal.signal(signal.SIGINT, _quit_while_starting)

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use; here, under the guard)

import DataReader
import Model
from trainer.run import checkpoints
from trainer.storage import atomic
from trainer.parallel import distributed
from trainer.reports import plots
from trainer.reports import reports
from trainer.app import sweep
from trainer.reports import tensorboard_log
from configure import ARCHITECTURE_KEYS, Config, ConfigError, applies, flag

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# Flags that mean something in one mode only; given in another they are refused, not ignored.
MODE_FLAGS = {"resume": ("train", "sweep"), "overwrite": ("train", "sweep"), "sweep": ("sweep",),
              "checkpoints": ("test",), "eval_set": ("test",), "json": ("test",),
              "checkpoint": ("predict",), "private_data": ("predict",), "output": ("predict",)}
# Configuration fields of the same kind: they always have a value, so only one given is refused.
MODE_FIELDS = {"tta": ("test", "predict"), "tensorboard": ("train", "sweep")}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where a flag has a default of its own to show."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _number_or(word: str, expected: str):
    """An argparse type: a checkpoint number, or the one word that names a checkpoint otherwise."""
    def parse(text: str):
        if text == word:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None
    return parse


# --resume N (the flag alone means "latest", the newest); --checkpoint(s) N or best.
_resume_value = _number_or("latest", "a checkpoint number")
_checkpoint_value = _number_or("best", "a checkpoint number or best")


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line. With suppress_defaults, parsing yields only the flags actually given."""
    parser = argparse.ArgumentParser(
        description="ResNets on CIFAR-10: train, test checkpoints, predict a private set.",
        formatter_class=_HelpFormatter)
    run = parser.add_argument_group("what to do")
    run.add_argument("--mode", choices=("train", "test", "predict", "plot", "sweep"),
                     default="train",
                     help="train a network, test saved checkpoints, predict a private set, plot "
                          "<modeldir>/curves.png from its metrics.csv, or train once per value "
                          "of --sweep")
    run.add_argument("--sweep", nargs="+", action="append", metavar="KEY_OR_VALUE",
                     help="sweep: a configuration key and its values, e.g. --sweep learning_rate "
                          "0.1 0.01; give it twice for a grid")
    run.add_argument("--resume", nargs="?", const="latest", default=None, metavar="N",
                     type=_resume_value,
                     help="train: continue from checkpoint N, or from the newest valid one in "
                          "modeldir when N is left out")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="train: delete the checkpoints of an earlier run in modeldir and start "
                          "anew (without it such a folder is refused)")
    run.add_argument("--checkpoints", type=_checkpoint_value, nargs="+", metavar="N",
                     help="test: checkpoint numbers to evaluate, or best (default: the newest)")
    run.add_argument("--json", metavar="PATH",
                     help="test: also write the report (table, per-class accuracy, confusion "
                          "matrix) as JSON to PATH")
    run.add_argument("--eval_set", choices=("test", "valid"),
                     help="test: evaluate on the test set or on the validation split the "
                          "checkpoint was trained beside (default: test)")
    run.add_argument("--checkpoint", type=_checkpoint_value, metavar="N",
                     help="predict: checkpoint number to use, or best (default: the newest)")
    run.add_argument("--private_data", metavar="P",
                     help="predict: .npy of private images (default: <data_dir>/private_test_images.npy)")
    run.add_argument("--output", metavar="O",
                     help="predict: where to write probabilities, an (N, classes) .npy, or a .csv "
                          "of id,label (default: <modeldir>/predictions.npy)")

    cfg = parser.add_argument_group("configuration (configure.py)")
    for f in dataclasses.fields(Config):
        meta = f.metadata
        if f.type is bool or isinstance(f.default, bool):
            group = cfg.add_mutually_exclusive_group()
            group.add_argument(f"--{f.name}", dest=f.name, action="store_true",
                               default=argparse.SUPPRESS if suppress_defaults else f.default,
                               help=meta["help"])
            # SUPPRESS: the default is the field's, set (and shown) by the flag above. A flag that
            # is a "no_" already (--no_decay_bn_bias) gets no --no_no_ twin.
            if not f.name.startswith("no_"):
                group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                                   default=argparse.SUPPRESS, help=f"turn {f.name} off")
            continue
        kind = type(f.default) if not isinstance(f.default, tuple) else int
        cfg.add_argument(f"--{f.name}", type=kind, help=meta["help"],
                         default=argparse.SUPPRESS if suppress_defaults else f.default,
                         choices=meta.get("choices"), nargs=meta.get("nargs"),
                         metavar=None if meta.get("choices") else f.name.upper())
    return parser


def explicit_flags(argv) -> set:
    """The configuration fields a command line sets itself (not left at their defaults)."""
    parsed, _ = build_parser(suppress_defaults=True).parse_known_args(argv)
    return {f.name for f in dataclasses.fields(Config)} & set(vars(parsed))


class _CliError(Exception):
    pass


# Errors a user can cause, besides ConfigError: said in one sentence, without a traceback.
USER_ERRORS = (DataReader.DataError, checkpoints.CheckpointError, Model.TrainingError, _CliError,
               plots.PlotError, tensorboard_log.TensorBoardError)


def config_from_args(args) -> Config:
    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


def _ensure_data(config: Config) -> None:
    # The data set's files, else its official archive in data_dir (MD5 checked), else the download
    # from download_url (checked against the official MD5 too).
    DataReader.ensure_dataset(config.data_dir, config.dataset, config.download, config.download_url)


def _load(config: Config):
    """The data set of config: (x_train, y_train, x_test, y_test), rows of 3072 uint8 values and
    labels in [0, num_classes) of its label_mode."""
    return DataReader.load_data(config.data_dir, config.num_classes, config.dataset,
                                config.label_mode)


def _check_modeldir(config: Config, resume, overwrite: bool) -> None:
    """What can be refused about --modeldir before any data is read."""
    modeldir = config.modeldir
    if os.path.exists(modeldir) and not os.path.isdir(modeldir):
        raise checkpoints.CheckpointError(f"--modeldir {modeldir} is a file, not a folder; choose "
                                    f"another --modeldir.")
    if isinstance(resume, int) and not os.path.isdir(modeldir):
        raise checkpoints.CheckpointError(f"--modeldir {modeldir} does not exist, so there is no "
                                          f"checkpoint {resume} to resume from; check --modeldir.")
    if resume is None and not overwrite:  # --overwrite deletes only once training starts
        checkpoints.check_fresh_start(modeldir, overwrite=False)


def _make_modeldir(modeldir: str) -> None:
    try:
        os.makedirs(modeldir, exist_ok=True)
    except OSError as e:
        raise checkpoints.CheckpointError(f"cannot create --modeldir {modeldir} ({e.strerror}); choose "
                                    f"a folder you can write to.") from None


class _TensorBoard:
    """Logs each epoch's metrics; the writer opens at the first epoch this process trains, so a
    resumed run replaces what the log holds from that epoch on (as metrics.csv does)."""

    def __init__(self, logdir: str, closer: contextlib.ExitStack):
        self.logdir, self.closer, self.writer = logdir, closer, None

    def __call__(self, metrics: dict) -> None:
        if self.writer is None:
            self.writer = tensorboard_log.open_writer(self.logdir, purge_step=metrics["epoch"])
            self.closer.callback(self.writer.close)
        tensorboard_log.log_epoch(self.writer, metrics)


def run_train(config: Config, args) -> int:
    if args.overwrite and args.resume == "latest":
        raise ConfigError("--overwrite with --resume alone has nothing to overwrite: give --resume "
                          "N --overwrite to train again from checkpoint N, dropping the later "
                          "ones, or drop --overwrite.")
    _announce(config)
    train_run(config, args.resume, bool(args.overwrite), context=args.context)
    return 0


def train_run(config: Config, resume=None, overwrite: bool = False, started: float = None,
              context: distributed.Context = distributed.SINGLE) -> list:
    """One training run as the command line makes it (lock, checks, data, training, curves);
    return its metrics, one dict per epoch. A --budget_minutes counts from ``started``
    (time.monotonic(); default: when this process began). Under torchrun every rank runs this;
    rank 0 alone takes the lock and writes files."""
    main_rank = context.is_main
    with contextlib.ExitStack() as held:
        # Under torchrun a refusal on one rank (rank 0 alone takes the lock) stops every rank
        # here, and rank 0 says it: the others would otherwise report losing contact.
        with distributed.all_or_none(ConfigError, *USER_ERRORS):
            if config.tensorboard:  # an optional extra: checked before anything else happens
                tensorboard_log.require_tensorboard()
                if main_rank:
                    tensorboard_log.check_logdir(config.tensorboard)
            # One run per folder: an existing folder is locked (and checked) before the data is
            # read, so a second run is refused at once; a new one is made once the data is usable.
            if main_rank and os.path.isdir(config.modeldir):
                held.enter_context(checkpoints.RunLock(config.modeldir))
            _check_modeldir(config, resume, overwrite)
            if resume is not None and os.path.isdir(config.modeldir):  # before any download
                Model.MyModel(config, log=lambda *a: None, context=context).check_resumable(
                    resume, overwrite)
            if context.local_rank == 0:  # one download per machine, which the others wait for
                _ensure_data(config)
        with distributed.all_or_none(ConfigError, *USER_ERRORS):
            x_train, y_train, _, _ = _load(config)
            x_valid = y_valid = None
            if not config.train_all:
                x_train, y_train, x_valid, y_valid = DataReader.train_valid_split(
                    x_train, y_train, config.split_index)
            config.validate(n_train=len(x_train), world_size=context.world_size)
            if main_rank and not os.path.isdir(config.modeldir):
                _make_modeldir(config.modeldir)
                held.enter_context(checkpoints.RunLock(config.modeldir))
        model = Model.MyModel(config, context=context)
        model.started = STARTED if started is None else started
        print(f"training {_network_name(config)} on {len(x_train)} images"
              + (f", validating on {len(x_valid)}" if x_valid is not None else "")
              + f", device {model.device}"
              + (f", {context.describe()}" if context.distributed else ""), flush=True)
        if config.tensorboard:
            model.epoch_callbacks.append(_TensorBoard(config.tensorboard, held))
        history = model.train(x_train, y_train, x_valid, y_valid, resume=resume,
                              overwrite=overwrite)
    # A bonus: without matplotlib, no curves.png; nothing trained, nothing redrawn.
    if main_rank and model.epochs_trained and plots.matplotlib_available():
        try:
            print(f"wrote {plots.draw_curves(config.modeldir)}")
        except plots.PlotError as e:
            print(f"warning: no curves: {e}", file=sys.stderr)
    return history


def _network_name(config: Config) -> str:
    return Model.describe(config.to_dict())


def _newest(config: Config) -> int:
    found = checkpoints.list_checkpoints(config.modeldir)
    if not found:
        raise checkpoints.CheckpointError(f"{config.modeldir} holds no checkpoints; train first or "
                                    f"pass --modeldir.")
    return found[-1]


def _validation_split(model, numbers, x_train, y_train):
    """The validation images the listed checkpoints were trained beside, as each one records it:
    the split of the command line could overlap the images a model was trained on."""
    config = model.config
    split = None
    for number in numbers:
        path = model.checkpoint_file(number)
        ckpt = checkpoints.read_checkpoint(path)
        saved = ckpt["config"]
        if saved.get("train_all"):
            raise _CliError(f"{path} was trained on all {len(x_train)} training images "
                            f"(--train_all), so no validation split is left; use --eval_set test.")
        index = saved.get("split_index")
        if not isinstance(index, int) or not 0 < index < len(x_train):
            raise _CliError(f"{path} records no usable split_index ({index!r}) for the "
                            f"{len(x_train)} training images in {config.data_dir}; use --eval_set test.")
        if ckpt.get("data") != DataReader.fingerprint(x_train[:index], y_train[:index]):
            raise _CliError(f"{path} was trained on other images than the first {index} of "
                            f"{config.data_dir}; validate it with the --data_dir it was trained on.")
        if split is not None and index != split:
            raise _CliError(f"the listed checkpoints were trained with different splits "
                            f"(split_index {split} and {index}); validate them one at a time.")
        split = index
    if split != config.split_index:
        print(f"validating on the split the checkpoints were trained with: images {split} to "
              f"{len(x_train) - 1} (split_index {split}).")
    return x_train[split:], y_train[split:]


def _from_checkpoint(config: Config, args, number) -> Config:
    """The configuration with the network and data set a checkpoint was trained with, so test and
    predict need no network flags; one given explicitly that disagrees is refused."""
    path = checkpoints.find_checkpoint(config.modeldir, number)
    saved = checkpoints.read_checkpoint(path)["config"]
    changes = {}
    network = saved.get("network", config.network)
    for key in ARCHITECTURE_KEYS:
        if key in args.explicit and not applies(key, network):
            raise _CliError(f"--{key} does not apply to the {network} network of {path}; drop it.")
        if key not in saved or saved[key] == getattr(config, key):
            continue
        if key in args.explicit:
            given = flag(key, getattr(config, key))
            raise _CliError(f"{path} holds a network trained with {key} {saved[key]}, but "
                            f"{given} was given; drop {given.split()[0]} or pass "
                            f"{flag(key, saved[key])}.")
        changes[key] = saved[key]
    return dataclasses.replace(config, **changes) if changes else config


def _announce(config: Config) -> None:
    print("config: " + " ".join(f"{k}={v}" for k, v in config.to_dict().items()), flush=True)


def _is_run_file(name: str) -> bool:
    """A file of a model folder that a run writes or reads (checkpoints, records, lock)."""
    return (name.startswith("model-") and name.endswith(".ckpt")) or \
        name in (checkpoints.INTERRUPTED, checkpoints.LOCK, sweep.SWEEP_CSV) + checkpoints.RECORDS


def _check_output(path: str, option: str, modeldir: str, inputs) -> None:
    """Refuse an output path that is not a plain file of the user's to replace: a link, a folder,
    a device or pipe, a file of the run in modeldir, or one of the command's inputs (paths, present
    or not). Links and ./ are resolved, so another name for the same file is caught too."""
    if os.path.islink(path):
        raise _CliError(f"{option} {path} is a symbolic link, which is not replaced; name a file "
                        f"that is not a link.")
    if os.path.isdir(path):
        raise _CliError(f"{option} {path} is a folder; name a file, for example "
                        f"{os.path.join(path, checkpoints.PREDICTIONS)}.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise _CliError(f"{option} {path} is not a regular file (a device, pipe or socket); name a "
                        f"file to write.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _CliError(f"{option} {path}: folder {folder} does not exist; create it or choose "
                        f"another path.")
    real = os.path.realpath(path)
    if os.path.dirname(real) == os.path.realpath(modeldir) and _is_run_file(os.path.basename(real)):
        raise _CliError(f"{option} {path} would replace {os.path.basename(real)} of the run in "
                        f"{modeldir}; choose another path.")
    for source in inputs:
        if real == os.path.realpath(source) or (
                os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)):
            raise _CliError(f"{option} {path} is {source}, which this command reads; choose "
                            f"another path.")


def run_test(config: Config, args) -> int:
    # Under torchrun every rank checks; a refusal stops them all and rank 0 alone says it.
    with distributed.all_or_none(ConfigError, *USER_ERRORS):
        numbers = list(dict.fromkeys(args.checkpoints or [_newest(config)]))  # each once, in order
        # Every number is checked, and --json with it, before anything is read or evaluated.
        sources = [checkpoints.find_checkpoint(config.modeldir, number) for number in numbers]
        if args.json is not None:
            _check_output(args.json, "--json", config.modeldir,
                          sources + DataReader.data_files(config.data_dir))
        config = _from_checkpoint(config, args, numbers[0])
        _announce(config)
        model = Model.MyModel(config, context=args.context)
        names = DataReader.class_names(config.data_dir, config.dataset, config.label_mode)
        x_train, y_train, x_test, y_test = _load(config)
        set_name = args.eval_set or "test"
        if set_name == "valid":
            x_test, y_test = _validation_split(model, numbers, x_train, y_train)
        if len(y_test) == 0:  # the validation split never is: split_index leaves images on each side
            test_file = DataReader.DATASETS[config.dataset].test
            raise _CliError(f"the test set in {config.data_dir} ({test_file}) holds no images; put "
                            f"the official {test_file} there, or use --eval_set valid.")
    results = model.evaluate_checkpoints(x_test, y_test, numbers)
    report = reports.build(results, y_test, names, config.num_classes, set_name)
    print(reports.format_text(report))
    if args.json and args.context.is_main:
        reports.write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def run_predict(config: Config, args) -> int:
    private = args.private_data or os.path.join(config.data_dir, "private_test_images.npy")
    output = args.output or os.path.join(config.modeldir, checkpoints.PREDICTIONS)
    if not args.context.is_main:  # under torchrun, rank 0 checks, predicts and writes alone
        return 0
    number = args.checkpoint if args.checkpoint is not None else _newest(config)
    source = checkpoints.find_checkpoint(config.modeldir, number)
    # Say what is wrong with --output before spending time on the predictions.
    _check_output(output, "--output", config.modeldir,
                  [private, source] + DataReader.data_files(config.data_dir))
    config = _from_checkpoint(config, args, number)
    _announce(config)
    model = Model.MyModel(config)
    x = DataReader.load_testing_images(private)
    model.load(number)
    probabilities = model.predict_prob(x)
    source = os.path.basename(source)
    if output.lower().endswith(".csv"):  # the hand-in format: a predicted class per image
        labels = probabilities.argmax(axis=1)
        text = "id,label\n" + "".join(f"{i},{int(c)}\n" for i, c in enumerate(labels))
        atomic.write_text(output, text, checkpoints.CheckpointError, flag="--output")
        print(f"wrote {output}: the predicted class of {len(labels)} images from {source}")
        return 0
    atomic.write(output, probabilities, lambda a, f: np.save(f, a, allow_pickle=False),
                 checkpoints.CheckpointError, flag="--output")
    print(f"wrote {output}: {probabilities.shape[0]} x {probabilities.shape[1]} probabilities "
          f"from {source}")
    return 0


def run_sweep(config: Config, args) -> int:
    if isinstance(args.resume, int):
        raise ConfigError(f"--resume {args.resume}: a sweep continues each run from its own newest "
                          f"checkpoint; pass --resume without a number.")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--overwrite with --resume: a sweep either continues its runs (--resume) "
                          "or starts each anew (--overwrite); give one of them.")
    sweeps = sweep.parse(args.sweep)

    def train_one(run_config: Config, resume, overwrite: bool) -> list:
        _announce(run_config)  # each run's own configuration: recipe and derived values resolved
        # each run of a sweep has the whole --budget_minutes, from its own start
        return train_run(run_config, resume, overwrite, started=time.monotonic())

    # Each run is configured afresh from the command line's values, as its own command line would.
    rows = sweep.run(vars(args), args.explicit, sweeps, resume=args.resume is not None,
                     overwrite=bool(args.overwrite), train=train_one)
    print(sweep.format_table([k for k, _ in sweeps], rows))
    print(f"wrote {os.path.join(config.modeldir, sweep.SWEEP_CSV)}")
    return 0


def run_plot(config: Config, args) -> int:
    _announce(config)
    try:
        print(f"wrote {plots.draw_curves(config.modeldir)}")
        found = checkpoints.list_checkpoints(config.modeldir)
        if found:  # the weights of the newest checkpoint: what L1 and L2 do to them
            ckpt = checkpoints.read_checkpoint(checkpoints.find_checkpoint(config.modeldir, found[-1]))
            magnitudes = reports.weight_magnitudes(ckpt["model"])
            print(f"wrote {plots.draw_weights(config.modeldir, magnitudes, f'model-{found[-1]}.ckpt')}")
    except plots.PlotError as e:
        raise _CliError(str(e)) from None
    return 0


def _check_mode_flags(args) -> None:
    for name, modes in {**MODE_FLAGS, **MODE_FIELDS}.items():
        given = name in args.explicit if name in MODE_FIELDS else getattr(args, name) is not None
        if given and args.mode not in modes:
            raise ConfigError(f"--{name} applies to --mode {' or '.join(modes)} only; drop it or "
                              f"use --mode {modes[0]}.")
    for name in ("json", "output", "private_data"):
        if getattr(args, name) == "":
            raise ConfigError(f"--{name} is empty; give it the path of a file, or drop it.")
    if "budget_minutes" in args.explicit and "max_epoch" in args.explicit:
        raise ConfigError("--budget_minutes sets the number of epochs itself; give it or "
                          "--max_epoch, not both.")
    if args.mode == "sweep" and not args.sweep:
        raise ConfigError("--mode sweep needs --sweep KEY VALUE [VALUE ...], for example "
                          "--sweep learning_rate 0.1 0.01.")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_flags(sys.argv[1:] if argv is None else argv)
    config = config_from_args(args)

    args.context = distributed.SINGLE
    try:
        _check_mode_flags(args)
        config.apply_recipe(args.explicit)
        if args.mode == "train":  # test and predict take the network from the checkpoint
            config.check_applicable(args.explicit)
        context = args.context = distributed.from_environment()
        if context.distributed and args.mode in ("plot", "sweep"):
            raise ConfigError(f"--mode {args.mode} runs in one process; start it with python, "
                              f"not torchrun.")
        config.device = distributed.device_for(context, config.device)
        # Only training splits --batch_size among the processes; test and predict do not use it.
        if args.mode != "sweep":  # a sweep configures and checks each of its runs itself
            config.validate(world_size=context.world_size if args.mode == "train" else 1)
        device = Model.select_device(config.device)  # fail before any download or data loading
        args.context = distributed.start(context, device, config.dist_timeout)
        modes = {"train": run_train, "test": run_test, "predict": run_predict, "plot": run_plot,
                 "sweep": run_sweep}
        with _silent_unless(args.context.is_main):
            return modes[args.mode](config, args)
    except ConfigError as e:
        if not args.context.is_main:  # the flags are the same on every rank: rank 0 says it
            return 0  # and answers for the run (distributed.StandDown says why 0)
        parser.exit(2, f"error: {e}\n")
    except distributed.StandDown:
        return 0
    except distributed.PeerRefused as e:
        print(f"error (rank {e.rank}): {e}", file=sys.stderr)
        return 1
    except distributed.DistributedError as e:  # about this rank: every rank says its own
        print(f"error: {e}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        if args.context.is_main:  # the same on every rank: said once
            print(f"error: {e}", file=sys.stderr)
        elif args.context.local_rank == 0:  # once per other machine: its files may differ
            print(f"error (rank {args.context.rank}): {e}", file=sys.stderr)
        return 1
    except OUT_OF_MEMORY:
        print(f"error: the device ran out of memory in --mode {args.mode}; lower --batch_size or "
              f"--eval_batch_size (evaluation gives the same results in smaller batches).",
              file=sys.stderr)
        return 1
    except Model.TrainingStopped as e:
        if args.context.is_main:
            print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted; nothing more was saved.", file=sys.stderr)
        return 130
    finally:
        distributed.stop()


@contextlib.contextmanager
def _silent_unless(speaking: bool):
    """Under torchrun only rank 0 prints: the others' standard output goes nowhere."""
    if speaking:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        yield


if __name__ == "__main__":
    sys.exit(main())
