"""bench/usual_pipeline.py: the baseline's DataLoader workers augment independently.
bench/gpu_check.sh: without CUDA it says so and writes nothing; a missing output folder and an
existing output file are refused; on the CPU (GPU_CHECK_DEVICE=cpu) every step runs, in one table.
bench/ablation.py: each variant trained and tested, the full run reused where it can be."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import usual_pipeline  # noqa: E402


def test_workers_draw_different_augmentations():
    # Eight copies of one image: each worker takes a whole batch of four, so the two batches
    # differ only if the workers' crops and flips differ.
    image = np.random.default_rng(0).integers(0, 256, 3072).astype(np.uint8)
    x, y = np.tile(image, (8, 1)), np.zeros(8, np.int64)
    torch.manual_seed(0)  # fixes the workers' base seed, so the test gives the same answer each run
    loader = usual_pipeline.train_loader(x, y, batch_size=4, num_workers=2)
    first, second = [batch for batch, _ in loader]
    assert not torch.equal(first, second)
    # Within a worker, too, the images are augmented differently (the generator moves on).
    assert len({first[i].numpy().tobytes() for i in range(4)}) > 1


GPU_CHECK = os.path.join(ROOT, "bench", "gpu_check.sh")


def test_gpu_check_is_valid_bash_throughout():
    # Only the no-CUDA branch runs on this machine; bash -n parses the CUDA branch too.
    r = subprocess.run(["bash", "-n", GPU_CHECK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    output = tmp_path / "figures.txt"
    r = subprocess.run(["bash", GPU_CHECK, str(output)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "gpu_check: no CUDA device on this machine; nothing to check\n"
    assert os.listdir(tmp_path) == []  # neither figures.txt nor the default gpu_check.txt


def run_gpu_check(tmp_path, *args, device="cpu", timeout=60, **env):
    """bench/gpu_check.sh with GPU_CHECK_DEVICE=device (None: unset, the GPU machine's way)."""
    env = {**os.environ, **env}
    env.pop("GPU_CHECK_DEVICE", None)
    if device:
        env["GPU_CHECK_DEVICE"] = device
    return subprocess.run(["bash", GPU_CHECK, *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("device", ["cpu", None])
def test_gpu_check_refuses_a_missing_output_folder_and_writes_nowhere(tmp_path, device):
    # Issue 24, item 13: a missing folder made the path "/" + the file's name, which was truncated.
    name = f"gpu-check-{os.getpid()}-{device}.txt"
    output = tmp_path / "missing" / name
    stray = os.path.join("/", name)
    try:  # no python: were the folder not refused, every step would end at once, not train
        r = run_gpu_check(tmp_path, output, device=device, PYTHON=str(tmp_path / "no-python"))
        assert not os.path.exists(stray)
    finally:
        if os.path.exists(stray):
            os.remove(stray)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"gpu_check: the folder of OUTPUT {output} does not exist; create it or "
                        "give a file in an existing folder.\n")
    assert os.listdir(tmp_path) == []


def test_gpu_check_refuses_an_existing_output_and_a_folder(tmp_path):
    output = tmp_path / "figures.txt"
    output.write_text("an earlier check\n")
    r = run_gpu_check(tmp_path, output, PYTHON=str(tmp_path / "no-python"))  # no steps, were it run
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"gpu_check: OUTPUT {output} exists already; give another file name or "
                        "add --overwrite.\n")
    assert output.read_text() == "an earlier check\n"
    r = run_gpu_check(tmp_path, tmp_path, "--overwrite", PYTHON=str(tmp_path / "no-python"))
    assert r.returncode == 2 and r.stderr == (f"gpu_check: OUTPUT {tmp_path} is a folder; give a "
                                              f"file name such as {tmp_path}/gpu_check.txt.\n")
    assert os.listdir(tmp_path) == ["figures.txt"]


GPU_CHECK_FIGURES = {  # each step of the check, and the figure its row gives on the CPU
    "device": r"torch \S+ CUDA .*",
    "cuda_tests": r"\d+/\d+ tests collected \(\d+ deselected\) in [\d.]+s",  # they skip here
    "nccl_test": r"0 CUDA device\(s\), the test needs two",
    "data": r"40 training and validation, 16 test images",
    "weights": r"25,557,032 parameters",
    "speed_train": r"width [\d.]+, [\d.]+ epochs planned; \d+ epochs?: [\d.]+ s.*, \d+ img/s",
    "speed_test": r"test acc \d+\.\d\d% \(six-view TTA\)",
    "resnet50_frozen": r"1 epoch: [\d.]+ s, \d+ img/s",
    "airbench_fp16": r"1 epoch: [\d.]+ s, \d+ img/s",
    "fp16_state": r"loss scale \d+; 1 of \d+ groups at rate 0",
    "airbench_compile": r"2 epochs: [\d.]+ s, last [\d.]+ s, \d+ img/s",
    "resnet20_off": r"1 epoch: [\d.]+ s, \d+ img/s",
    "resnet20_bf16": r"1 epoch: [\d.]+ s, \d+ img/s",
    "resnet20_fp16": r"1 epoch: [\d.]+ s, \d+ img/s",
}


def test_gpu_check_runs_every_step_on_the_cpu_and_prints_one_table(tmp_path):
    # GPU_CHECK_DEVICE=cpu: every step's command on the CPU with tiny data, so that each flag and
    # combination is known to be accepted before a GPU runs it. TORCH_COMPILE_DISABLE leaves
    # --compile's path in place but compiles nothing: compiling is the GPU's part of the check.
    output = tmp_path / "figures.txt"
    output.write_text("an earlier check\n")
    (tmp_path / "tmp").mkdir()
    r = run_gpu_check(tmp_path, output, "--overwrite", timeout=900, TORCH_COMPILE_DISABLE="1",
                      TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1")  # 1: steps take seconds
                      # on a shared CPU, not minutes of threads that wait for each other
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert table[:2] == ["| step | what it ran | seconds | figure | result |", "|---|---|---|---|---|"]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table[2:]]
    assert [row[0] for row in rows] == list(GPU_CHECK_FIGURES)
    for step, what, seconds, figure, result in rows:
        assert what and seconds.isdigit(), step
        assert re.fullmatch(GPU_CHECK_FIGURES[step], figure), (step, figure)
        assert result == ("not run" if step == "nccl_test" else "ok"), (step, result)
    assert "all steps passed." in r.stdout and "--device cpu" in r.stdout
    written = output.read_text()
    assert "an earlier check" not in written and "\n".join(table) in written
    assert os.listdir(tmp_path) == ["figures.txt", "tmp"]
    assert [n for n in os.listdir(tmp_path / "tmp") if n.startswith("tmp.")] == []  # its work folder


ABLATION = os.path.join(ROOT, "bench", "ablation.py")


def test_the_ablation_tests_each_variant_and_reuses_the_full_run_for_no_tta(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from cifar_files import write_cifar
    data_dir = tmp_path / "data"
    write_cifar(str(data_dir), n_per_batch=24, n_test=20)
    tiny = ["--batch_size", "16", "--eval_batch_size", "64", "--device", "cpu", "--no_download",
            "--amp", "off", "--width_scale", "0.25"]
    command = [sys.executable, ABLATION, "--data_dir", str(data_dir), "--out", str(tmp_path / "ab"),
               "--budget_minutes", "0.2", "--seeds", "3", "--variants", "full", "no_tta",
               "random_flip", "--", *tiny]
    r = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")][1:]  # no header
    assert [row.split(" | ")[0] for row in rows] == ["| full", "| no_tta", "| random_flip"]
    for row in rows:
        accuracy = float(row.split(" | ")[1].rstrip("%"))
        assert 0 <= accuracy <= 100
    # the epochs each run fitted into the budget, from its config.json; no_tta's run is full's
    epochs = {row.split(" | ")[0]: row.split(" | ")[4].rstrip(" |") for row in rows}
    saved = json.loads((tmp_path / "ab" / "full-s3" / "config.json").read_text())["config"]
    assert epochs["| full"] == epochs["| no_tta"] == \
        f"{saved['max_epoch'] - 1 + saved['final_epoch_share']:.2f}"
    assert float(epochs["| random_flip"]) > 0
    # no_tta tests the full run's checkpoint: one training folder each for full and random_flip
    assert sorted(os.listdir(tmp_path / "ab")) == ["full-s3", "random_flip-s3"]
    assert sorted(f for f in os.listdir(tmp_path / "ab" / "full-s3") if f.endswith(".json")
                  and f.startswith("ablation")) == ["ablation_test_off.json", "ablation_test_six.json"]
    flipped = json.loads((tmp_path / "ab" / "random_flip-s3" / "config.json").read_text())
    assert flipped["config"]["flip"] == "random" and flipped["config"]["seed"] == 3
    # Run again, nothing is trained anew: the reports are reused.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == r.stdout
