"""The `config:` line every mode starts with: the recipe's name and only what differs from the
defaults (issue 19, item 5). The full set stays in config.json and the checkpoints."""
import dataclasses
import json
import os

import numpy as np

from cifar_files import write_cifar
from cli_tools import TINY, run_main
from configure import ARCHITECTURE_KEYS, RECIPE_FAST, Config
from trainer.app.console import TrainedWith, announce, start_line


def listed(line: str) -> dict:
    """The key=value pairs of a start line, as {key: value text}."""
    body = line.split(";")[0]
    return dict(word.split("=", 1) for word in body.split() if "=" in word)


def flag_values(flags: list) -> dict:
    """{key: value text} of a command line's flags: --key value, --flag (True), --no_flag (False)."""
    values = {}
    for i, word in enumerate(flags):
        if not word.startswith("--"):
            continue
        given = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        if given:
            values[word[2:]] = flags[i + 1]
        elif word.startswith("--no_"):
            values[word[5:]] = "False"
        else:
            values[word[2:]] = "True"
    return values


def test_a_run_with_all_defaults_says_so_in_one_short_line(capsys):
    announce(Config().apply_recipe(), writes_record=True)
    out = capsys.readouterr().out
    assert out == "config: course recipe, all defaults; full set in ./model_v1/config.json\n"
    assert len(out) < 200


def test_test_and_predict_do_not_point_at_a_config_json(capsys):
    announce(Config().apply_recipe())
    assert capsys.readouterr().out == "config: course recipe, all defaults\n"


def test_a_non_default_flag_is_listed_as_key_value_and_defaults_are_not():
    config = Config(learning_rate=0.05, max_epoch=3, lr_decay_epochs=(2,), data_dir="data/mine",
                    momentum=0.9, weight_decay=2e-4).apply_recipe()  # the last two: defaults
    line = start_line(config)
    assert line.startswith("config: course recipe with ")
    assert listed(line) == {"learning_rate": "0.05", "max_epoch": "3", "lr_decay_epochs": "2",
                            "data_dir": "data/mine"}


def test_values_that_follow_the_data_set_are_not_listed():
    # num_classes and download_url are resolved from --dataset; only the data set is news.
    assert listed(start_line(Config(dataset="cifar100").apply_recipe())) == {"dataset": "cifar100"}
    coarse = Config(dataset="cifar100", label_mode="coarse").apply_recipe()
    assert listed(start_line(coarse)) == {"dataset": "cifar100", "label_mode": "coarse"}
    # A number of classes other than the data set's is a choice, and is listed.
    odd = Config(dataset="cifar100", num_classes=10).apply_recipe()
    assert listed(start_line(odd)) == {"dataset": "cifar100", "num_classes": "10"}


def test_a_recipe_is_named_and_its_values_are_not_listed_one_by_one():
    line = start_line(Config(recipe="fast").apply_recipe())
    assert line == "config: fast recipe, all else default"
    line = start_line(Config(recipe="fast", seed=3).apply_recipe())
    assert line.startswith("config: fast recipe with ") and listed(line) == {"seed": "3"}
    assert not set(RECIPE_FAST) & set(listed(line))


def test_an_explicit_override_of_a_recipe_value_is_listed():
    config = Config(recipe="fast", learning_rate=0.05, max_epoch=15)
    config.apply_recipe(explicit={"learning_rate", "max_epoch"})
    # max_epoch 15 is what the recipe sets anyway: nothing to say about it.
    assert listed(start_line(config)) == {"learning_rate": "0.05"}


def test_the_recipe_still_stands_for_its_values_in_a_copy_of_the_config():
    # test and predict replace the network keys from the checkpoint (dataclasses.replace), which
    # forgets which keys the recipe set; its values must still go by the recipe's name.
    config = Config(recipe="fast").apply_recipe()
    copy = dataclasses.replace(config, resnet_size=5)
    assert listed(start_line(copy)) == {"resnet_size": "5"}


def test_the_command_line_prints_the_short_line_and_config_json_keeps_the_full_set(tmp_path):
    data_dir, modeldir = str(tmp_path / "data"), str(tmp_path / "m")
    write_cifar(data_dir, n_per_batch=8, n_test=8)
    r = run_main(["--mode", "train", "--data_dir", data_dir, "--modeldir", modeldir, *TINY,
                  "--split_index", "32", "--max_epoch", "1", "--learning_rate", "0.1"])
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("config: course recipe with "), first
    assert first.endswith(f"; full set in {os.path.join(modeldir, 'config.json')}"), first
    # Exactly the flags given that differ from the defaults (--learning_rate 0.1 is the default;
    # every flag of TINY differs from its default).
    assert listed(first) == {**flag_values(TINY), "data_dir": data_dir, "modeldir": modeldir,
                             "split_index": "32", "max_epoch": "1"}
    with open(os.path.join(modeldir, "config.json")) as f:
        saved = json.load(f)["config"]
    assert set(saved) == {f.name for f in dataclasses.fields(Config)}
    assert saved["learning_rate"] == 0.1 and saved["momentum"] == 0.9

    r = run_main(["--mode", "test", "--data_dir", data_dir, "--modeldir", modeldir, *TINY])
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("config: course recipe with ") and "full set" not in first, first


def test_test_and_predict_name_the_recipe_their_checkpoint_was_trained_with():
    # test and predict run with the command line's values (here the course recipe's) and the
    # network and test-time augmentation of the checkpoint, whose recipe the line names.
    speed = Config(recipe="speed").apply_recipe()
    config = dataclasses.replace(Config().apply_recipe(), data_dir="data/mine", tta="six",
                                 **{key: getattr(speed, key) for key in ARCHITECTURE_KEYS})
    config.width_scale = 0.5  # the width the recipe chose for its budget
    trained = TrainedWith("model-10.ckpt", "speed", tuple(ARCHITECTURE_KEYS) + ("tta",))
    line = start_line(config, trained_with=trained)
    assert line.startswith("config: speed recipe with ")
    assert line.endswith("; network from model-10.ckpt")
    assert listed(line) == {"width_scale": "0.5", "data_dir": "data/mine"}
    # --tta off given for a checkpoint whose recipe tests with six views is news
    assert listed(start_line(dataclasses.replace(config, tta="off"), trained_with=trained)) == \
        {"width_scale": "0.5", "data_dir": "data/mine", "tta": "off"}
    course = dataclasses.replace(Config().apply_recipe(), resnet_size=1)
    line = start_line(course, trained_with=TrainedWith("model-3.ckpt", "course", ("resnet_size",)))
    assert line == "config: course recipe with resnet_size=1; network from model-3.ckpt"


def test_the_start_line_of_test_and_predict_on_a_speed_checkpoint(tmp_path):
    data_dir, modeldir = str(tmp_path / "data"), str(tmp_path / "m")
    write_cifar(data_dir, n_per_batch=8, n_test=8)
    common = ["--data_dir", data_dir, "--modeldir", modeldir, "--device", "cpu", "--no_download",
              "--amp", "off", "--quiet"]
    r = run_main(["--mode", "train", "--recipe", "speed", "--width_scale", "0.25", "--batch_size",
                  "16", "--max_epoch", "1", "--split_index", "32", *common])
    assert r.returncode == 0, r.stderr
    private = str(tmp_path / "private.npy")
    np.save(private, np.zeros((2, 32, 32, 3), np.uint8))
    for mode in (["--mode", "test"],
                 ["--mode", "predict", "--private_data", private, "--output",
                  str(tmp_path / "p.npy")]):
        r = run_main([*mode, *common])
        assert r.returncode == 0, r.stderr
        first, second = r.stdout.splitlines()[:2]
        assert first.startswith("config: speed recipe with "), first
        assert first.endswith("; network from model-1.ckpt"), first
        assert listed(first) == {"width_scale": "0.25", "data_dir": data_dir,
                                 "modeldir": modeldir, "device": "cpu", "download": "False",
                                 "amp": "off", "quiet": "True"}
        assert second.startswith("--tta six: the default for "), second  # after the start line
