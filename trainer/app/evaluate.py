"""--mode test: evaluate checkpoints on the test set or on the validation split they were trained
beside, print the report and write it as JSON on request; and the test of --mode train --test,
the same evaluation of the run's newest checkpoint once it has trained."""
import copy
import dataclasses
import os
import time

import DataReader
import Model
from configure import ARCHITECTURE_KEYS, Config, ConfigError
from trainer.app import checkpoint_config, dataset
from trainer.app.console import USER_ERRORS, CommandError, announce, reference_values
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


def check_test_set(config: Config, y_test, instead: str) -> None:
    """CommandError, one sentence ending with what to do ``instead``, when the test set of
    config's data set holds no images."""
    if len(y_test) == 0:
        test_file = DataReader.DATASETS[config.dataset].test
        raise CommandError(f"the test set in {config.data_dir} ({test_file}) holds no images; put "
                           f"the official {test_file} there, or {instead}.")


def evaluate_run(config: Config, numbers, eval_set, json_path, explicit,
                 context: distributed.Context = distributed.SINGLE, test_set=None,
                 report_path: str = None) -> dict:
    """Evaluate checkpoints ``numbers`` (default: the newest) on ``eval_set`` ("test", the default,
    or "valid"), print the report and, with ``json_path``, write it there; return it.
    ``explicit``: the configuration flags the command line gave. ``test_set``: (x_test, y_test)
    already read from config's data set (--mode train --test), for eval_set "test" only; else the
    data set is read here. ``report_path``: the run's own report file (checkpoints.TEST_REPORT),
    written like --json but not checked as a path the user gave is. Under torchrun every rank
    runs this; rank 0 alone prints and writes."""
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
        set_name = eval_set or "test"
        if test_set is not None and set_name == "test":
            x_test, y_test = test_set
        else:
            x_train, y_train, x_test, y_test = dataset.load(config)
        if set_name == "valid":
            x_test, y_test = validation_split(model, numbers, x_train, y_train)
        # The validation split never is empty: split_index leaves images on each side.
        check_test_set(config, y_test, "use --eval_set valid")
        # Read before the checkpoints are: a file that changes while it is tested then no
        # longer matches its digest, so the report is not taken for the run's (compare.py).
        digests = checkpoint_digests(sources) if (json_path or report_path) and context.is_main \
            else None
    results = model.evaluate_checkpoints(x_test, y_test, numbers)
    report = reports.build(results, y_test, names, config.num_classes, set_name, digests)
    print(reports.format_text(report))
    for path, flag in ((json_path, "--json"), (report_path, "--modeldir")):
        if path and context.is_main:
            reports.write_json(report, path, flag)
            print(f"wrote {path}")
    return report


@dataclasses.dataclass(frozen=True)
class TestAfterTraining:
    """What --mode train --test tests with: the configuration --mode test takes from the same
    command line, and the flags it gave, the network's left out (the network is the run's own,
    and a flag training resolves, --width_scale 0, would disagree with its checkpoint)."""
    config: Config
    explicit: frozenset


def plan_test(config: Config, explicit) -> tuple:
    """--mode train --test: (the configuration to train with, TestAfterTraining). The test's is
    a copy taken before training settles --amp auto, a width or a budget's epochs in its own; a
    --tta given is the test's, while the training run keeps its recipe's, which its checkpoints
    store as the default of later tests."""
    test = TestAfterTraining(copy.copy(config), frozenset(explicit) - set(ARCHITECTURE_KEYS))
    if "tta" not in explicit:
        return config, test
    train_config = copy.copy(config)  # copy keeps what apply_recipe set (Config.from_recipe)
    train_config.tta = reference_values(config)["tta"]
    return train_config, test


def in_precision(test: TestAfterTraining, amp: str) -> TestAfterTraining:
    """The test in the precision its training settled on (``amp``: with --amp auto on a CPU, the
    faster of bf16 and fp32 as measured at the start; a budget timed the test in it), where
    --mode test would take --amp auto on a CPU as fp32."""
    config = copy.copy(test.config)  # keeps what the recipe set
    config.amp = amp
    return dataclasses.replace(test, config=config)


def test_trained_run(test: TestAfterTraining, test_set,
                     context: distributed.Context = distributed.SINGLE) -> dict:
    """The test of --mode train --test, once the run has trained: its newest checkpoint on the
    test set, as --mode test --modeldir would test it given the run's --amp (the same report;
    the test-time augmentation the checkpoint stores unless --tta was given), on ``test_set``
    (x_test, y_test) that the run read already, and the report written to
    <modeldir>/test_report.json. Its wall time and accuracy close the output. Under torchrun every rank takes part; rank 0 alone prints
    and writes. Return the report."""
    began = time.monotonic()
    path = os.path.join(test.config.modeldir, checkpoints.TEST_REPORT)
    report = evaluate_run(test.config, None, "test", None, test.explicit, context,
                          test_set=test_set, report_path=path)
    tested = report["checkpoints"][0]
    print(f"tested {tested['checkpoint']}: {100 * tested['accuracy']:.2f}% of {tested['images']} "
          f"test images in {time.monotonic() - began:.1f} s")
    return report
