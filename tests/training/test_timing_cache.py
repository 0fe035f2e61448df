"""Step times remembered per machine (trainer.training.timing_cache): a second speed run on the
same machine takes its precision, its use of the cores and its width from the file, not from
timing; the file can be turned off, and a file that is not the trainer's is left alone."""
import json

import pytest
import torch

from cifar_files import write_cifar
from cli_tools import run_main
from configure import Config
from test_speed_recipe import speed_flags
from trainer.training import timing_cache


def test_the_key_holds_what_times_a_step_and_nothing_else():
    cpu = torch.device("cpu")
    base = timing_cache.key(Config(recipe="speed").apply_recipe(), cpu, 1, 2)
    for untimed in (dict(learning_rate=1.0), dict(seed=3), dict(budget_minutes=7.0),
                    dict(modeldir="elsewhere"), dict(max_epoch=3), dict(cpu_processes=2),
                    dict(device="cpu"),  # "auto" on a CPU, as a launcher's worker names it
                    dict(muon_lr=0.24), dict(muon_momentum=0.9)):
        config = Config(recipe="speed").apply_recipe()
        for k, v in untimed.items():
            setattr(config, k, v)
        assert timing_cache.key(config, cpu, 1, 2) == base, untimed
    for timed in (dict(width_scale=0.5), dict(amp="bf16"), dict(batch_size=512),
                  dict(translate=0), dict(lookahead=False), dict(channels_last="off"),
                  dict(muon_lr=0.0)):
        config = Config(recipe="speed").apply_recipe()
        for k, v in timed.items():
            setattr(config, k, v)
        assert timing_cache.key(config, cpu, 1, 2) != base, timed
    config = Config(recipe="speed").apply_recipe()
    assert len({timing_cache.key(config, cpu, p, t) for p, t in ((1, 2), (2, 1), (1, 1))}) == 3


def test_the_path_follows_the_environment(tmp_path):
    assert timing_cache.path({"RESNET_CIFAR_TIMINGS": "off"}) is None
    assert timing_cache.path({"RESNET_CIFAR_TIMINGS": "/x/t.json"}) == "/x/t.json"
    assert timing_cache.path({"XDG_CACHE_HOME": "/c"}) == "/c/resnet-cifar/step-times.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cache") / "data"
    write_cifar(data_dir, n_per_batch=24, n_test=20)
    return data_dir


def speed_run(data, modeldir, cache, *extra):
    return run_main(["--mode", "train", "--recipe", "speed", "--budget_minutes", "0.5",
                     "--data_dir", data, "--modeldir", modeldir, "--quiet", "--split_index",
                     "100", *speed_flags(), *extra], env={"RESNET_CIFAR_TIMINGS": str(cache)})


def lines_of(result, *starts):
    return [line for line in result.stdout.splitlines() if line.startswith(starts)]


@pytest.mark.parametrize("processes", ["1", "0"])
def test_a_second_run_takes_its_times_from_the_file(data, tmp_path, processes):
    cache = tmp_path / "times.json"
    first = speed_run(data, tmp_path / "a", cache, "--cpu_processes", processes)
    assert first.returncode == 0, first.stdout + first.stderr
    # timed (the width chooser may take the time the --cpu_processes choice made just before)
    assert not any("remembered" in line for line in lines_of(first, "amp auto:", "cores:"))
    saved = json.loads(cache.read_text())
    assert saved["format"] == timing_cache.FORMAT and saved["seconds_per_image"]
    second = speed_run(data, tmp_path / "b", cache, "--cpu_processes", processes)
    assert second.returncode == 0, second.stdout + second.stderr
    said = lines_of(second, "amp auto:", "width for", "cores:")
    assert said and all(f"remembered in {cache}" in line for line in said
                        if not line.startswith("cores:") or "img/s" in line), said
    config = [json.loads((tmp_path / d / "config.json").read_text())["config"] for d in "ab"]
    for key in ("amp", "cpu_processes"):  # the width may differ: more of the budget is left
        assert config[0][key] == config[1][key], key


def test_off_remembers_nothing(data, tmp_path):
    result = speed_run(data, tmp_path / "a", "off", "--cpu_processes", "1")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]
    assert "remembered" not in result.stdout


def test_a_file_that_is_not_the_trainers_is_left_alone(data, tmp_path):
    cache = tmp_path / "notes.json"
    cache.write_text('{"my": "notes"}\n')
    result = speed_run(data, tmp_path / "a", cache, "--cpu_processes", "1")
    assert result.returncode == 0, result.stderr
    assert cache.read_text() == '{"my": "notes"}\n'
    warnings = [line for line in result.stdout.splitlines() if "is not this trainer's" in line]
    assert len(warnings) == 1 and "Traceback" not in result.stdout + result.stderr  # said once


def test_the_warning_about_a_foreign_file_is_said_once_however_many_caches_read_it(tmp_path):
    cache = tmp_path / "notes.json"
    cache.write_text('{"my": "notes"}\n')
    said = []
    for _ in range(3):  # the cores, the width chooser and the budget each make one
        timing_cache.TimingCache(str(cache), log=said.append).put({"k": 1.0})
    assert len(said) == 1 and "is not this trainer's" in said[0]
    assert cache.read_text() == '{"my": "notes"}\n'
