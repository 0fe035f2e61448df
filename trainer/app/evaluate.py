"""--mode test: evaluate checkpoints on the test set or on the validation split they were trained
beside, print the report and write it as JSON on request."""
import os

import DataReader
import Model
from configure import Config, ConfigError
from trainer.app import checkpoint_config, dataset
from trainer.app.console import USER_ERRORS, CommandError, announce
from trainer.app.outputs import check_output
from trainer.parallel import distributed
from trainer.reports import reports
from trainer.run import checkpoints


def validation_split(model, numbers, x_train, y_train):
    """The validation images the listed checkpoints were trained beside, as each one records it:
    the split of the command line could overlap the images a model was trained on."""
    config = model.config
    split = None
    for number in numbers:
        path = model.checkpoint_file(number)
        ckpt = checkpoints.read_checkpoint(path)
        saved = ckpt["config"]
        if saved.get("train_all"):
            raise CommandError(f"{path} was trained on all {len(x_train)} training images "
                               f"(--train_all), so no validation split is left; use --eval_set "
                               f"test.")
        index = saved.get("split_index")
        if not isinstance(index, int) or not 0 < index < len(x_train):
            raise CommandError(f"{path} records no usable split_index ({index!r}) for the "
                               f"{len(x_train)} training images in {config.data_dir}; use "
                               f"--eval_set test.")
        if ckpt.get("data") != DataReader.fingerprint(x_train[:index], y_train[:index]):
            raise CommandError(f"{path} was trained on other images than the first {index} of "
                               f"{config.data_dir}; validate it with the --data_dir it was "
                               f"trained on.")
        if split is not None and index != split:
            raise CommandError(f"the listed checkpoints were trained with different splits "
                               f"(split_index {split} and {index}); validate them one at a time.")
        split = index
    if split != config.split_index:
        print(f"validating on the split the checkpoints were trained with: images {split} to "
              f"{len(x_train) - 1} (split_index {split}).")
    return x_train[split:], y_train[split:]


def checkpoint_digests(paths) -> dict:
    """{file name: SHA-256} of the checkpoints at paths, for the --json report to name what it
    tested; CommandError naming a file that cannot be read."""
    digests = {}
    for path in paths:
        try:
            digests[os.path.basename(path)] = reports.file_digest(path)
        except OSError as e:
            raise CommandError(f"{path} cannot be read ({e.strerror}); check its permissions.") \
                from None
    return digests


def evaluate_run(config: Config, numbers, eval_set, json_path, explicit,
             context: distributed.Context = distributed.SINGLE) -> None:
    """Evaluate checkpoints ``numbers`` (default: the newest) on ``eval_set`` ("test", the default,
    or "valid"), print the report and, with ``json_path``, write it there. ``explicit``: the
    configuration flags the command line gave. Under torchrun every rank runs this; rank 0 alone
    prints and writes."""
    # Under torchrun every rank checks; a refusal stops them all and rank 0 alone says it.
    with distributed.all_or_none(ConfigError, *USER_ERRORS):
        # each number once, in the order given
        numbers = list(dict.fromkeys(numbers or [checkpoint_config.newest(config)]))
        # Every number is checked, and --json with it, before anything is read or evaluated.
        sources = [checkpoints.find_checkpoint(config.modeldir, number) for number in numbers]
        if json_path is not None:
            check_output(json_path, "--json", config.modeldir,
                         sources + DataReader.data_files(config.data_dir))
        config, trained = checkpoint_config.config_from_checkpoint(config, explicit,
                                                                   numbers[0])
        announce(config, trained_with=trained)
        model = Model.MyModel(config, context=context)
        names = DataReader.class_names(config.data_dir, config.dataset, config.label_mode)
        x_train, y_train, x_test, y_test = dataset.load(config)
        set_name = eval_set or "test"
        if set_name == "valid":
            x_test, y_test = validation_split(model, numbers, x_train, y_train)
        # The validation split never is empty: split_index leaves images on each side.
        if len(y_test) == 0:
            test_file = DataReader.DATASETS[config.dataset].test
            raise CommandError(f"the test set in {config.data_dir} ({test_file}) holds no images; "
                               f"put the official {test_file} there, or use --eval_set valid.")
        # Read before the checkpoints are: a file that changes while it is tested then no
        # longer matches its digest, so the report is not taken for the run's (compare.py).
        digests = checkpoint_digests(sources) if json_path and context.is_main else None
    results = model.evaluate_checkpoints(x_test, y_test, numbers)
    report = reports.build(results, y_test, names, config.num_classes, set_name, digests)
    print(reports.format_text(report))
    if json_path and context.is_main:
        reports.write_json(report, json_path)
        print(f"wrote {json_path}")
