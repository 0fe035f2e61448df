"""Command line: train, test checkpoints, or predict a private image set.

    python main.py --mode train [--data_dir D] [--modeldir M] [--resume [N]] [...]
    python main.py --mode test --checkpoints 160 170 [--eval_set test|valid]
    python main.py --mode predict [--checkpoint N] [--private_data P] [--output O]

    python main.py --mode plot | --mode sweep --sweep KEY VALUE [VALUE ...]

Every field of ``configure.Config`` is a flag of the same name; ``--help`` lists them with defaults.
This file parses the command line and dispatches; the work of each mode is a service in
trainer/app/ (train, evaluate, predict, plot, sweep).
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

import torch
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use; here, under the guard)

import Model
from configure import Config, ConfigError
from trainer.app import evaluate, plot, predict, sweep, train
from trainer.app.console import USER_ERRORS, announce
from trainer.parallel import cores, distributed, launch
from trainer.run import checkpoints

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# Flags that mean something in one mode only; given in another they are refused, not ignored.
MODE_FLAGS = {"resume": ("train", "sweep"), "overwrite": ("train", "sweep"), "sweep": ("sweep",),
              "test": ("train",),
              "checkpoints": ("test",), "eval_set": ("test",), "json": ("test",),
              "checkpoint": ("predict",), "private_data": ("predict",), "output": ("predict",)}
# Configuration fields of the same kind: they always have a value, so only one given is refused.
MODE_FIELDS = {"tta": ("test", "predict"), "tensorboard": ("train", "sweep")}
# --help in sections, each titled with the pages of the manual that tell more, so that --help reads
# as the manual's index. A flag that none of them names lands in OTHER_SECTION, which
# tests/test_docs.py keeps empty.
HELP_SECTIONS = {
    "runs: what to do, and where (README.md, docs/model-folder.md, docs/experiments.md)":
        ("mode", "sweep", "resume", "overwrite", "test", "modeldir"),
    "data (docs/data.md)":
        ("dataset", "label_mode", "data_dir", "download", "download_url", "split_index",
         "train_all", "normalize"),
    "network (docs/networks.md, docs/experiments.md)":
        ("network", "resnet_version", "resnet_size", "first_num_filters", "num_classes",
         "batch_norm", "downsample", "shortcut", "activation", "width_scale", "pretrained",
         "pretrained_file", "input_size", "freeze_epochs"),
    "training (docs/training.md)":
        ("batch_size", "learning_rate", "momentum", "weight_decay", "l1", "lr_schedule",
         "lr_decay_epochs", "lr_decay_factor", "warmup_epochs", "nesterov", "no_decay_bn_bias",
         "label_smoothing", "ema", "muon_lr", "muon_momentum", "max_epoch", "save_interval",
         "seed"),
    "recipes and budget (docs/training.md)":
        ("recipe", "budget_minutes", "final_epoch_share"),
    "speed techniques of airbench94 (docs/training.md)":
        ("whiten", "whiten_bias_share", "decoupled", "bias_lr_scale", "lookahead",
         "lookahead_decay", "lookahead_every", "translate", "pad_mode", "flip"),
    "evaluation and outputs (docs/reports.md, docs/data.md)":
        ("checkpoints", "eval_set", "json", "checkpoint", "private_data", "output", "tta",
         "eval_batch_size", "quiet", "tensorboard"),
    "hardware (docs/hardware.md, docs/torchrun.md)":
        ("device", "cpu_processes", "channels_last", "amp", "compile", "cudnn_benchmark",
         "sync_bn", "dist_timeout"),
}
OTHER_SECTION = "other flags"


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


class _Folders(argparse.Action):
    """--modeldir F [F ...]: the first folder is the configuration's modeldir (a string, as every
    mode uses it); all of them, for --mode plot to compare, go to ``modeldirs``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0])
        namespace.modeldirs = list(values)


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line. With suppress_defaults, parsing yields only the flags actually given."""
    parser = argparse.ArgumentParser(
        description="ResNets on CIFAR-10: train, test checkpoints, predict a private set.",
        formatter_class=_HelpFormatter)
    groups = {title: parser.add_argument_group(title) for title in (*HELP_SECTIONS, OTHER_SECTION)}
    named = {name: groups[title] for title, names in HELP_SECTIONS.items() for name in names}

    def section(name: str):
        return named.get(name, groups[OTHER_SECTION])

    def add(name: str, **kwargs):
        section(name).add_argument(f"--{name}", **kwargs)

    add("mode", choices=("train", "test", "predict", "plot", "sweep"), default="train",
        help="train a network, test saved checkpoints, predict a private set, plot "
             "<modeldir>/curves.png from its metrics.csv (compare.png of several --modeldir), or "
             "train once per value of --sweep")
    add("sweep", nargs="+", action="append", metavar="KEY_OR_VALUE",
        help="sweep: a configuration key and its values, e.g. --sweep learning_rate 0.1 0.01; "
             "give it twice for a grid")
    add("resume", nargs="?", const="latest", default=None, metavar="N", type=_resume_value,
        help="train: continue from checkpoint N, or from the newest valid one in modeldir when N "
             "is left out")
    add("overwrite", action="store_true", default=None,
        help="train: delete the checkpoints of an earlier run in modeldir and start anew (without "
             "it such a folder is refused); plot with several --modeldir: replace an existing "
             "compare.png and compare.csv")
    add("test", action="store_true", default=None,
        help="train: then test the run's newest checkpoint on the test set, as --mode test "
             "would, and write the report to <modeldir>/test_report.json")
    add("checkpoints", type=_checkpoint_value, nargs="+", metavar="N",
        help="test: checkpoint numbers to evaluate, or best (default: the newest)")
    add("json", metavar="PATH",
        help="test: also write the report (table, per-class accuracy, confusion matrix) as JSON "
             "to PATH")
    add("eval_set", choices=("test", "valid"),
        help="test: evaluate on the test set or on the validation split the checkpoint was "
             "trained beside (default: test)")
    add("checkpoint", type=_checkpoint_value, metavar="N",
        help="predict: checkpoint number to use, or best (default: the newest)")
    add("private_data", metavar="P",
        help="predict: .npy of private images, or a PNG/JPEG file or folder of them (default: "
             "<data_dir>/private_test_images.npy)")
    add("output", metavar="O",
        help="predict: where to write probabilities, an (N, classes) .npy, or a .csv of id,label "
             "(file,label,class_name,probability for image files) (default: "
             "<modeldir>/predictions.npy)")

    # Each section lists its flags in the order HELP_SECTIONS gives, the flags above first.
    order = {name: i for i, name in enumerate(n for names in HELP_SECTIONS.values() for n in names)}
    for f in sorted(FLAG_FIELDS, key=lambda f: order.get(f.name, len(order))):
        meta, cfg = f.metadata, section(f.name)
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
        several = f.name == "modeldir"  # --mode plot compares several runs
        cfg.add_argument(f"--{f.name}", type=kind, action=_Folders if several else "store",
                         help=meta["help"] + ("; --mode plot takes several, to compare their "
                                              "runs in compare.png" if several else ""),
                         default=argparse.SUPPRESS if suppress_defaults else f.default,
                         choices=meta.get("choices"), nargs="+" if several else meta.get("nargs"),
                         metavar=None if meta.get("choices") else f.name.upper())
    return parser


# The configuration fields the command line sets: all but those a run sets itself (a budget's
# replan records plan_anchor).
FLAG_FIELDS = [f for f in dataclasses.fields(Config) if not f.metadata.get("internal")]


def explicit_flags(argv) -> set:
    """The configuration fields a command line sets itself (not left at their defaults)."""
    parsed, _ = build_parser(suppress_defaults=True).parse_known_args(argv)
    return {f.name for f in FLAG_FIELDS} & set(vars(parsed))


def _modeldirs(args) -> list:
    """The --modeldir folders given, or the one of args.modeldir (its default) when none was."""
    return getattr(args, "modeldirs", None) or [args.modeldir]


def config_from_args(args) -> Config:
    return Config(**{f.name: getattr(args, f.name) for f in FLAG_FIELDS})


def run_train(config: Config, args) -> int:
    if args.overwrite and args.resume == "latest":
        raise ConfigError("--overwrite with --resume alone has nothing to overwrite: give --resume "
                          "N --overwrite to train again from checkpoint N, dropping the later "
                          "ones, or drop --overwrite.")
    test = None
    if args.test:  # before anything settles values in config
        config, test = evaluate.plan_test(config, args.explicit)
    started = launch.started_at(STARTED)  # a worker's run counts from its launcher's start
    if not launch.launched():  # the launcher said it
        announce(config, writes_record=True)
    for key, value in launch.decided().items():  # what the launcher settled: the run's, not
        setattr(config, key, value)              # the user's (the test's config is the user's)
    workers = train.use_cores(config, args.resume, bool(args.overwrite), args.context)
    if workers:  # --cpu_processes N: this command again in N processes, which train
        return launch.run([sys.executable, os.path.abspath(__file__), *args.argv],
                          workers.count, workers.cores, started, decided=workers.decided)
    train.train_run(config, args.resume, bool(args.overwrite), started=started,
                    context=args.context, test=test)
    return 0


def run_test(config: Config, args) -> int:
    evaluate.evaluate_run(config, args.checkpoints, args.eval_set, args.json, args.explicit,
                          args.context)
    return 0


def run_predict(config: Config, args) -> int:
    private = args.private_data or os.path.join(config.data_dir, "private_test_images.npy")
    output = args.output or os.path.join(config.modeldir, checkpoints.PREDICTIONS)
    if args.context.is_main:  # under torchrun, rank 0 checks, predicts and writes alone
        predict.predict_run(config, args.checkpoint, private, output, args.explicit)
    return 0


def run_sweep(config: Config, args) -> int:
    if isinstance(args.resume, int):
        raise ConfigError(f"--resume {args.resume}: a sweep continues each run from its own newest "
                          f"checkpoint; pass --resume without a number.")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--overwrite with --resume: a sweep either continues its runs (--resume) "
                          "or starts each anew (--overwrite); give one of them.")
    sweeps = sweep.parse(args.sweep)
    # Each run is configured afresh from the command line's values, as its own command line would.
    rows = sweep.run(vars(args), args.explicit, sweeps, resume=args.resume is not None,
                     overwrite=bool(args.overwrite), train=train.sweep_train)
    print(sweep.format_table([k for k, _ in sweeps], rows))
    print(f"wrote {os.path.join(config.modeldir, sweep.SWEEP_CSV)}")
    return 0


def run_plot(config: Config, args) -> int:
    if len(args.modeldirs) > 1:
        plot.compare_runs(args.modeldirs, overwrite=bool(args.overwrite))
    else:
        plot.plot_run(config)
    return 0


def _check_mode_flags(args) -> None:
    comparing = args.mode == "plot" and len(args.modeldirs) > 1
    for name, modes in {**MODE_FLAGS, **MODE_FIELDS}.items():
        given = name in args.explicit if name in MODE_FIELDS else getattr(args, name) is not None
        if name == "overwrite" and comparing:
            continue  # it replaces compare.png and compare.csv
        if name == "tta" and args.mode == "train":
            if given and not args.test:
                raise ConfigError("--tta applies to --mode test or predict, or to the test of "
                                  "--mode train --test; drop it or pass --test.")
            continue
        if given and args.mode not in modes:
            raise ConfigError(f"--{name} applies to --mode {' or '.join(modes)} only; drop it or "
                              f"use --mode {modes[0]}.")
    if len(args.modeldirs) > 1 and args.mode != "plot":
        raise ConfigError(f"--modeldir takes several folders with --mode plot only (to compare "
                          f"their runs); give --mode {args.mode} one folder.")
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
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.explicit = explicit_flags(args.argv)
    args.modeldirs = _modeldirs(args)
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
        if device.type == "cpu" and not context.distributed:  # a quota counts too (cores.py)
            torch.set_num_threads(cores.usable().count)
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
