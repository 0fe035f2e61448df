"""Command line: train, test checkpoints, or predict a private image set.

    python main.py --mode train [--data_dir D] [--modeldir M] [--resume [N]] [...]
    python main.py --mode test --checkpoints 160 170 [--eval_set test|valid]
    python main.py --mode predict [--checkpoint N] [--private_data P] [--output O]

Every field of ``configure.Config`` is a flag of the same name; ``--help`` lists them with defaults.
"""
import argparse
import dataclasses
import os
import sys

import numpy as np

import DataReader
import Model
from configure import Config, ConfigError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where a flag has a default of its own to show."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _resume_value(text: str):
    """--resume N: a checkpoint number; "latest" (the flag alone) means the newest."""
    if text == "latest":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a checkpoint number, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="ResNets on CIFAR-10: train, test checkpoints, predict a private set.",
        formatter_class=_HelpFormatter)
    run = parser.add_argument_group("what to do")
    run.add_argument("--mode", choices=("train", "test", "predict"), default="train",
                     help="train a network, test saved checkpoints, or predict a private set")
    run.add_argument("--resume", nargs="?", const="latest", default=None, metavar="N",
                     type=_resume_value,
                     help="train: continue from checkpoint N, or from the newest valid one in "
                          "modeldir when N is left out")
    run.add_argument("--checkpoints", type=int, nargs="+", metavar="N",
                     help="test: checkpoint numbers to evaluate (default: the newest)")
    run.add_argument("--eval_set", choices=("test", "valid"), default="test",
                     help="test: evaluate on the test set or on the validation split")
    run.add_argument("--checkpoint", type=int, metavar="N",
                     help="predict: checkpoint number to use (default: the newest)")
    run.add_argument("--private_data", metavar="P",
                     help="predict: .npy of private images (default: <data_dir>/private_test_images.npy)")
    run.add_argument("--output", metavar="O",
                     help="predict: where to write probabilities (default: <modeldir>/predictions.npy)")

    cfg = parser.add_argument_group("configuration (configure.py)")
    for f in dataclasses.fields(Config):
        meta = f.metadata
        if f.type is bool or isinstance(f.default, bool):
            group = cfg.add_mutually_exclusive_group()
            group.add_argument(f"--{f.name}", dest=f.name, action="store_true", default=f.default,
                               help=meta["help"])
            # SUPPRESS: the default is the field's, set (and shown) by the flag above.
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                               default=argparse.SUPPRESS, help=f"turn {f.name} off")
            continue
        kind = type(f.default) if not isinstance(f.default, tuple) else int
        cfg.add_argument(f"--{f.name}", type=kind, default=f.default, help=meta["help"],
                         choices=meta.get("choices"), nargs=meta.get("nargs"),
                         metavar=None if meta.get("choices") else f.name.upper())
    return parser


class _CliError(Exception):
    pass


def config_from_args(args) -> Config:
    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


def _ensure_data(config: Config) -> None:
    if DataReader.has_cifar10(config.data_dir):
        return
    if not config.download:
        raise DataReader.DataError(
            f"{config.data_dir} holds no CIFAR-10; put the contents of cifar-10-python.tar.gz "
            f"(cifar-10-batches-py/) there, or drop --no_download to fetch it.")
    print(f"CIFAR-10 not found in {config.data_dir}; downloading {config.download_url}",
          file=sys.stderr)
    DataReader.download_cifar10(config.data_dir, config.download_url)


def _check_modeldir_writable(modeldir: str) -> None:
    try:
        os.makedirs(modeldir, exist_ok=True)
    except OSError as e:
        raise Model.CheckpointError(f"cannot create --modeldir {modeldir} ({e.strerror}); choose "
                                    f"a folder you can write to.") from None
    if not os.access(modeldir, os.W_OK | os.X_OK):
        raise Model.CheckpointError(f"--modeldir {modeldir} is not writable; choose a folder you "
                                    f"can write to.")


def run_train(config: Config, args) -> int:
    _ensure_data(config)
    x_train, y_train, _, _ = DataReader.load_data(config.data_dir, config.num_classes)
    x_valid = y_valid = None
    if not config.train_all:
        x_train, y_train, x_valid, y_valid = DataReader.train_valid_split(
            x_train, y_train, config.split_index)
    config.validate(n_train=len(x_train))
    _check_modeldir_writable(config.modeldir)
    model = Model.MyModel(config)
    print(f"training {_network_name(config)} on {len(x_train)} images"
          + (f", validating on {len(x_valid)}" if x_valid is not None else "")
          + f", device {model.device}", flush=True)
    model.train(x_train, y_train, x_valid, y_valid, resume=args.resume)
    return 0


def _network_name(config: Config) -> str:
    return Model.describe(config.to_dict())


def _newest(config: Config) -> int:
    found = Model.list_checkpoints(config.modeldir)
    if not found:
        raise Model.CheckpointError(f"{config.modeldir} holds no checkpoints; train first or "
                                    f"pass --modeldir.")
    return found[-1]


def run_test(config: Config, args) -> int:
    checkpoints = args.checkpoints or [_newest(config)]
    x_train, y_train, x_test, y_test = DataReader.load_data(config.data_dir, config.num_classes)
    if args.eval_set == "valid":
        _, _, x_test, y_test = DataReader.train_valid_split(x_train, y_train, config.split_index)
    Model.MyModel(config).test_or_validate(x_test, y_test, checkpoints, args.eval_set)
    return 0


def run_predict(config: Config, args) -> int:
    private = args.private_data or os.path.join(config.data_dir, "private_test_images.npy")
    output = args.output or os.path.join(config.modeldir, "predictions.npy")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):  # say so before spending time on the predictions
        raise _CliError(f"--output {output}: folder {folder} does not exist; create it or choose "
                        f"another path.")
    number = args.checkpoint if args.checkpoint is not None else _newest(config)
    x = DataReader.load_testing_images(private)
    model = Model.MyModel(config)
    model.load(number)
    probabilities = model.predict_prob(x)
    Model.atomic_save(probabilities, output, writer=lambda a, f: np.save(f, a, allow_pickle=False))
    print(f"wrote {output}: {probabilities.shape[0]} x {probabilities.shape[1]} probabilities "
          f"from model-{number}.ckpt")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)

    try:
        config.validate()
        Model.select_device(config.device)  # fail before any download or data loading
        print("config: " + " ".join(f"{k}={v}" for k, v in config.to_dict().items()), flush=True)
        return {"train": run_train, "test": run_test, "predict": run_predict}[args.mode](config, args)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    except (DataReader.DataError, Model.CheckpointError, Model.TrainingError, _CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Model.TrainingStopped as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted; nothing more was saved.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
