"""Data-parallel training and evaluation under torchrun: two gloo processes on CPU, launched as a
user launches them (``python -m torch.distributed.run --standalone --nproc_per_node 2 main.py``)."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.run import checkpoints
from trainer.parallel import distributed
from trainer.reports import compare, plots
from cifar_files import make_batch, write_cifar
from cli_tools import ENV, MAIN, ROOT, TINY, assert_same_training_state, load, run_main
from configure import Config
from Model import MyModel
from trainer.training.batches import batch_slices, global_batch_sizes

TIMEOUT = 240
FLAGS = [*TINY, "--split_index", "32", "--quiet", "--save_interval", "1"]


def torchrun_cmd(args, nproc: int = 2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", MAIN, *map(str, args)]


def torchrun(args, nproc: int = 2, env: dict = None, timeout: int = TIMEOUT):
    return subprocess.run(torchrun_cmd(args, nproc), cwd=ROOT, env=dict(ENV, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def start_torchrun(args, env: dict = None) -> subprocess.Popen:
    return subprocess.Popen(torchrun_cmd(args), cwd=ROOT, env=dict(ENV, **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def paused_pid(proc: subprocess.Popen, timeout: float = TIMEOUT) -> int:
    """The pid a paused rank reports on stderr (the pause hook's line)."""
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        found = re.search(r"paused before step \d+ of epoch \d+ \(pid (\d+)", line)
        if found:
            return int(found.group(1))
        assert time.monotonic() < deadline, "no rank paused"
    proc.wait()
    raise AssertionError(f"torchrun ended (rc {proc.returncode}) before a rank paused")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """40 training images (32 train, 8 valid) and 1,001 test images: an odd number, so that
    two ranks evaluate unequal parts."""
    data_dir = str(tmp_path_factory.mktemp("dist") / "data")
    write_cifar(data_dir, n_per_batch=8, n_test=1001)
    return data_dir


@pytest.fixture(scope="module")
def two_process_run(cifar, tmp_path_factory):
    modeldir = str(tmp_path_factory.mktemp("dist") / "ddp")
    r = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir,
                  "--max_epoch", "2", *FLAGS])
    assert r.returncode == 0, r.stdout + r.stderr
    return modeldir, r


# --------------------------------------------------------------------------------------------
# Pure parts

@pytest.mark.parametrize("n, batch_size, world", [(10, 4, 2), (9, 4, 2), (1001, 64, 2),
                                                  (12, 6, 3), (13, 6, 3), (20, 8, 1)])
def test_each_step_is_one_global_batch_split_between_the_ranks(n, batch_size, world):
    shares = [batch_slices(n, batch_size, rank, world) for rank in range(world)]
    sizes = global_batch_sizes(n, batch_size, world)
    assert all(len(s) == len(sizes) for s in shares)  # every rank takes every step
    for step, size in enumerate(sizes):
        together = sorted(torch.cat([s[step] for s in shares]).tolist())
        assert together == list(range(step * batch_size, step * batch_size + size))
        assert all(len(s[step]) > 0 for s in shares)
    covered = sum(sizes)
    # Only a last batch smaller than the number of processes is left out.
    assert n - covered == (0 if world == 1 or n % batch_size == 0 or n % batch_size >= world
                           else n % batch_size)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 1001])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shares_count_every_image_once(n, world):
    parts = [distributed.share(n, rank, world) for rank in range(world)]
    covered = [i for p in parts for i in range(n)[p]]
    assert covered == list(range(n))
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_the_environment_is_read_as_torchrun_sets_it():
    assert distributed.from_environment({}) == distributed.SINGLE
    ctx = distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (1, 2, 1, False)
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}):
        with pytest.raises(distributed.DistributedError, match="torchrun"):
            distributed.from_environment(bad)


def test_lost_contact_gives_the_backend_reason_in_whole_words():
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] "
                        "Read error [127.0.0.1]:62667: Connection reset by peer. This is typically "
                        "caused by a remote worker hanging or bugs in the application code. "
                        + "More. " * 50)
    said = str(distributed.lost_contact(gloo))
    assert "(Read error [127.0.0.1]:62667: Connection reset by peer);" in said, said
    long = str(distributed.lost_contact(RuntimeError("connection lost " * 40)))
    reason = long[long.index("(") + 1:long.index(")")]
    assert reason.endswith(" ...") and len(reason) <= distributed.MAX_REASON + 4
    assert set(reason[:-4].split()) == {"connection", "lost"}, reason


def test_a_rank_without_a_gpu_of_its_own_says_so_before_choosing_a_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    first = distributed.Context(rank=0, world_size=2, local_rank=0)
    assert distributed.device_for(first, "auto") == "cuda:0"
    second = distributed.Context(rank=1, world_size=2, local_rank=1)
    with pytest.raises(distributed.DistributedError, match="local rank 1 has no GPU of its own"):
        distributed.device_for(second, "cuda")


def _check_on_two_ranks(rank, store_path, refusing, outcomes):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        with distributed.all_or_none(ValueError):
            if rank in refusing:
                raise ValueError(f"rank {rank} refuses")
        outcomes[rank] = "went on"
    except (ValueError, distributed.PeerRefused, distributed.StandDown) as e:
        outcomes[rank] = (type(e).__name__, getattr(e, "rank", None), str(e))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("refusing, expected", [
    ((), ["went on", "went on"]),
    ((0,), [("ValueError", None, "rank 0 refuses"), ("StandDown", None, "")]),
    ((1,), [("PeerRefused", 1, "rank 1 refuses"), ("StandDown", None, "")]),
    ((0, 1), [("ValueError", None, "rank 0 refuses"), ("StandDown", None, "")]),
])
def test_a_refusal_on_any_rank_stops_every_rank_and_rank_0_says_it(tmp_path, refusing, expected):
    outcomes = mp.Manager().dict()
    mp.spawn(_check_on_two_ranks, args=(str(tmp_path / "store"), refusing, outcomes), nprocs=2)
    assert [outcomes[0], outcomes[1]] == expected


@pytest.fixture
def slow_rank_0(tmp_path):
    """An environment in which rank 0 starts 3 s after the others, as on a busy machine: a rank
    that fails first has torchrun stop rank 0, perhaps before it has said why."""
    hook = tmp_path / "slow_rank_0"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import os, time\n"
                                           "if os.environ.get('RANK') == '0':\n"
                                           "    time.sleep(3)\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(cifar, tmp_path,
                                                                      slow_rank_0):
    r = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", str(tmp_path / "m"),
                  *FLAGS, "--batch_size", "7"], env=slow_rank_0)
    assert r.returncode != 0
    said = [line for line in r.stderr.splitlines() if "--batch_size 7" in line]
    assert len(said) == 1 and "multiple of 2" in said[0], r.stderr
    assert not os.path.exists(tmp_path / "m")


# --------------------------------------------------------------------------------------------
# Training and evaluation on two processes

def test_two_processes_train_with_one_voice_and_one_set_of_files(two_process_run):
    modeldir, r = two_process_run
    lines = r.stdout.splitlines()
    assert len([line for line in lines if re.match(r"epoch +\d+/2", line)]) == 2, r.stdout
    starts = [line for line in lines if line.startswith("training ")]
    assert len(starts) == 1 and starts[0].endswith("on 2 processes (gloo)"), r.stdout
    assert len([line for line in lines if line.startswith("config: ")]) == 1
    drawn = ["curves.png"] if plots.matplotlib_available() else []  # an optional extra
    assert sorted(os.listdir(modeldir)) == sorted([".lock", "config.json", "metrics.csv",
                                                   "model-1.ckpt", "model-2.ckpt",
                                                   "model-best.ckpt"] + drawn)
    assert len([line for line in lines if line.endswith("curves.png")]) == len(drawn), r.stdout
    with open(os.path.join(modeldir, "metrics.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    ckpt = load(os.path.join(modeldir, "model-2.ckpt"))
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    # Every image of the 32 is trained on once per epoch, across the two ranks.
    assert ckpt["metrics"][0]["train_acc"] * 32 == pytest.approx(round(ckpt["metrics"][0]["train_acc"] * 32))


def test_the_distributed_checkpoint_gives_the_same_validation_in_one_process(two_process_run,
                                                                             cifar):
    modeldir, _ = two_process_run
    reported = load(os.path.join(modeldir, "model-2.ckpt"))["metrics"][1]["valid_acc"]
    r = run_main(["--mode", "test", "--data_dir", cifar, "--modeldir", modeldir, "--checkpoints",
                  "2", "--eval_set", "valid", "--device", "cpu", "--quiet"])
    assert r.returncode == 0, r.stderr
    row = re.search(r"model-2\.ckpt\s+2\s+([\d.]+)%\s+[\d.]+\s+8\b", r.stdout)
    assert row, r.stdout
    assert float(row.group(1)) == pytest.approx(100 * reported, abs=0.005)


def test_distributed_test_counts_every_image_once(two_process_run, cifar):
    modeldir, _ = two_process_run
    args = ["--mode", "test", "--data_dir", cifar, "--modeldir", modeldir, "--checkpoints", "2",
            "--device", "cpu", "--quiet"]
    single = run_main(args)
    both = torchrun(args)
    assert single.returncode == 0 and both.returncode == 0, single.stderr + both.stderr
    table = re.compile(r"model-2\.ckpt\s+2\s+([\d.]+)%\s+([\d.]+)\s+(\d+)")
    a, b = table.search(single.stdout), table.search(both.stdout)
    assert a and b, single.stdout + both.stdout
    assert b.group(3) == "1001" and a.group(1) == b.group(1)
    assert float(a.group(2)) == pytest.approx(float(b.group(2)), abs=1e-4)
    assert both.stdout.count("confusion matrix") == 1  # one report, from rank 0
    # The same prediction for each image, not only as many right: the ranks' parts in order.
    assert _confusion(both.stdout) == _confusion(single.stdout)


def _confusion(stdout: str) -> list:
    """The confusion matrix a test report prints: (true class, predicted class) -> count."""
    lines = stdout[stdout.index("confusion matrix of"):].splitlines()[2:]
    matrix = [[int(v) for v in line.split()[2:]] for line in lines if line.strip()]
    # More than one class predicted, or the order of the predictions would not show.
    assert len(matrix) == 10 and sum(1 for column in zip(*matrix) if any(column)) > 1, stdout
    return matrix


def test_three_processes_test_and_predict_whatever_the_training_batch(two_process_run, cifar,
                                                                      tmp_path):
    modeldir, _ = two_process_run
    common = ["--data_dir", cifar, "--modeldir", modeldir, *TINY, "--quiet"]  # --batch_size 8
    single = run_main(["--mode", "test", "--checkpoints", "2", *common])
    three = torchrun(["--mode", "test", "--checkpoints", "2", *common], nproc=3)
    assert single.returncode == 0 and three.returncode == 0, single.stderr + three.stderr
    assert _confusion(three.stdout) == _confusion(single.stdout)  # parts of 334, 334 and 333

    private = str(tmp_path / "private.npy")
    np.save(private, np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8))
    output = str(tmp_path / "p.npy")
    r = torchrun(["--mode", "predict", "--private_data", private, "--output", output, *common],
                 nproc=3)
    assert r.returncode == 0, r.stderr
    assert np.load(output).shape == (5, 10)


def test_two_processes_train_then_test_together_and_rank_0_writes(cifar, tmp_path):
    modeldir = str(tmp_path / "t")
    # --dist_timeout: a rank left out of the collective test fails in seconds, not minutes.
    both = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, *FLAGS,
                     "--max_epoch", "2", "--test", "--dist_timeout", "30"])
    assert both.returncode == 0, both.stdout + both.stderr
    assert both.stdout.count("confusion matrix") == 1, both.stdout  # one report, from rank 0
    assert both.stdout.count(checkpoints.TEST_REPORT) == 1, both.stdout
    single = run_main(["--mode", "test", "--data_dir", cifar, "--modeldir", modeldir,
                       "--device", "cpu", "--quiet"])
    assert single.returncode == 0, single.stderr
    written = f"wrote {os.path.join(modeldir, checkpoints.TEST_REPORT)}"
    report = both.stdout[:both.stdout.index(written)]  # the lines after it are no matrix's
    assert _confusion(report) == _confusion(single.stdout)  # all 1001 images, in order
    assert compare.find_test_accuracy(modeldir)[1:] == ("model-2.ckpt", checkpoints.TEST_REPORT)
    assert not [name for name in os.listdir(modeldir) if name.endswith(".part")]


def _one_step(cifar, modeldir, nproc, *extra):
    # 16 training images in one global batch of 16: exactly one step.
    args = ["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, *TINY, "--quiet",
            "--split_index", "16", "--batch_size", "16", "--max_epoch", "1", *extra]
    r = torchrun(args, nproc) if nproc > 1 else run_main(args)
    assert r.returncode == 0, r.stdout + r.stderr
    return load(os.path.join(modeldir, "model-1.ckpt"))["model"]


def _largest_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_sync_bn_makes_two_processes_step_like_one(cifar, tmp_path):
    single = _one_step(cifar, str(tmp_path / "one"), 1)
    synced = _one_step(cifar, str(tmp_path / "sync"), 2, "--sync_bn")
    assert single.keys() == synced.keys()
    assert _largest_difference(single, synced) < 1e-5
    # Without it each rank normalizes by the statistics of its own 8 images: not the same step.
    plain = _one_step(cifar, str(tmp_path / "plain"), 2)
    assert _largest_difference(single, plain) > 1e-4


# --------------------------------------------------------------------------------------------
# --freeze_epochs (ResNet-50) on two processes

@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory):
    """(path, state_dict): a ResNet-50 with random weights in torchvision's format, for
    --pretrained_file (tests never download)."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(123)
    state = tv.models.resnet50().state_dict()
    path = str(tmp_path_factory.mktemp("r50") / "resnet50.pth")
    torch.save(state, path)
    return path, state


def _r50_args(cifar, modeldir, weights, *extra):
    """A ResNet-50 at 32 pixels on 16 training images: two global batches of 8, 4 per rank."""
    return ["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, "--network",
            "resnet50", "--pretrained", "imagenet", "--pretrained_file", weights,
            "--input_size", "32", "--split_index", "16", "--batch_size", "8",
            "--learning_rate", "0.01", "--lr_decay_epochs", "--device", "cpu", "--no_download",
            "--eval_batch_size", "64", "--amp", "off", "--quiet", "--save_interval", "1",
            *map(str, extra)]


def _backbone_unchanged(state: dict, reference: dict) -> bool:
    """Every weight and batch-norm statistic outside the head (fc) as in reference."""
    keys = [k for k in reference if not k.startswith("fc.")]
    assert keys and all(k in state for k in keys)
    return all(torch.equal(state[k], reference[k]) for k in keys)


def test_a_frozen_backbone_trains_on_two_processes_and_resumes_exactly(cifar, resnet50_weights,
                                                                       tmp_path):
    # Epochs 1 and 2 frozen, 3 free. DDP registers the parameters that take a gradient when it
    # wraps the network, so each change of the frozen state needs a wrapper of its own.
    weights, state = resnet50_weights
    straight = str(tmp_path / "straight")
    r = torchrun(_r50_args(cifar, straight, weights, "--freeze_epochs", 2, "--max_epoch", 3))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _backbone_unchanged(load(os.path.join(straight, "model-2.ckpt"))["model"], state)
    assert not _backbone_unchanged(load(os.path.join(straight, "model-3.ckpt"))["model"], state)

    # Resumed into a frozen epoch (2, then the change to 3) ...
    split = str(tmp_path / "split")
    r = torchrun(_r50_args(cifar, split, weights, "--freeze_epochs", 2, "--max_epoch", 1))
    assert r.returncode == 0, r.stdout + r.stderr
    r = torchrun(_r50_args(cifar, split, weights, "--freeze_epochs", 2, "--max_epoch", 3,
                           "--resume"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_training_state(load(os.path.join(straight, "model-3.ckpt")),
                               load(os.path.join(split, "model-3.ckpt")))

    # ... and into a free one (3, from the frozen epoch 2's checkpoint).
    again = str(tmp_path / "again")
    shutil.copytree(straight, again)
    r = torchrun(_r50_args(cifar, again, weights, "--freeze_epochs", 2, "--max_epoch", 3,
                           "--resume", 2, "--overwrite"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_training_state(load(os.path.join(straight, "model-3.ckpt")),
                               load(os.path.join(again, "model-3.ckpt")))


def _frozen_then_free_with_sync_bn(rank, store_path, weights, modeldir, out):
    """One rank of a --sync_bn run: epoch 1 frozen, epoch 2 free; each rank saves its own
    weights and buffers before training and after each epoch (rank 1 writes no checkpoint)."""
    torch.set_num_threads(1)  # as torchrun sets it: two ranks share the cores
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        context = distributed.Context(rank=rank, world_size=2, local_rank=rank, backend="gloo")
        x, y = make_batch(16, np.random.default_rng(0))
        config = Config(network="resnet50", pretrained="imagenet", pretrained_file=weights,
                        input_size=32, freeze_epochs=1, max_epoch=1, batch_size=8,
                        learning_rate=0.01, lr_decay_epochs=(), save_interval=1, device="cpu",
                        amp="off", eval_batch_size=64, modeldir=modeldir, sync_bn=True)
        model = MyModel(config, log=lambda *a: None, context=context)
        assert isinstance(model.network.bn1, torch.nn.modules.batchnorm._BatchNorm)
        assert not isinstance(model.network.bn1, torch.nn.BatchNorm2d)  # synchronized
        torch.save(model.network.state_dict(), os.path.join(out, f"start-{rank}.pt"))
        model.train(x, y)
        torch.save(model.network.state_dict(), os.path.join(out, f"frozen-{rank}.pt"))
        model.config.max_epoch = 2  # the same model trains on: the frozen state changes
        model.train(x, y, resume="latest")
        torch.save(model.network.state_dict(), os.path.join(out, f"free-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_bn_keeps_a_frozen_backbone_fixed_and_both_ranks_train_it_alike(resnet50_weights,
                                                                             tmp_path):
    weights, state = resnet50_weights
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_frozen_then_free_with_sync_bn,
             args=(str(tmp_path / "store"), weights, str(tmp_path / "m"), str(out)), nprocs=2)
    start, frozen, free = ([load(str(out / f"{when}-{rank}.pt")) for rank in (0, 1)]
                           for when in ("start", "frozen", "free"))
    for rank in (0, 1):  # the running statistics as well as the weights
        assert _backbone_unchanged(frozen[rank], state), f"rank {rank}"
        assert not torch.equal(frozen[rank]["fc.weight"], start[rank]["fc.weight"])  # the head
    for key in state:  # the free epoch trains the backbone, on both ranks alike
        assert torch.equal(free[0][key], free[1][key]), key
    for key in ("conv1.weight", "layer4.2.conv3.weight", "bn1.weight", "bn1.running_mean",
                "layer1.0.bn1.running_var"):
        assert not torch.equal(free[0][key], state[key]), key


# --------------------------------------------------------------------------------------------
# Faults

def test_a_signal_to_one_rank_stops_both_and_the_run_resumes_exactly(two_process_run, cifar,
                                                                      tmp_path):
    straight, _ = two_process_run
    modeldir = str(tmp_path / "stopped")
    args = ["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, "--max_epoch", "2",
            *FLAGS]
    proc = start_torchrun(args, env={"RESNET_CIFAR_PAUSE_AT": "1:2:1"})  # rank 1, before step 2
    try:
        os.kill(paused_pid(proc), signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert out.count("stopped by SIGTERM") + err.count("stopped by SIGTERM") == 1, out + err
    interrupted = load(os.path.join(modeldir, "interrupted.ckpt"))
    assert (interrupted["epoch"], interrupted["step"]) == (0, 3)
    assert interrupted["partial"]["seen"] == 24  # three global batches of 8
    other_size = str(tmp_path / "one_process")
    shutil.copytree(modeldir, other_size)

    r = torchrun(args + ["--resume"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_training_state(load(os.path.join(straight, "model-2.ckpt")),
                               load(os.path.join(modeldir, "model-2.ckpt")))

    # At another world size the run goes on from the same step (close, not bit-exact).
    r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", other_size,
                  "--max_epoch", "2", *FLAGS, "--resume"])
    assert r.returncode == 0, r.stderr
    assert "3 steps into epoch 1" in r.stdout
    assert [m["epoch"] for m in load(os.path.join(other_size, "model-2.ckpt"))["metrics"]] == [1, 2]


def test_a_rank_that_dies_ends_the_run_instead_of_hanging(cifar, tmp_path):
    args = ["--mode", "train", "--data_dir", cifar, "--modeldir", str(tmp_path / "m"),
            "--max_epoch", "2", *FLAGS, "--dist_timeout", "20"]
    proc = start_torchrun(args, env={"RESNET_CIFAR_PAUSE_AT": "1:1:1"})
    began = time.monotonic()
    try:
        os.kill(paused_pid(proc), signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - began < 120


def test_a_locked_folder_is_refused_in_one_sentence_by_rank_0_alone(cifar, tmp_path):
    modeldir = tmp_path / "m"
    modeldir.mkdir()
    with checkpoints.RunLock(str(modeldir)):  # another run holds the folder
        r = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, *FLAGS,
                      "--max_epoch", "1"])
    assert r.returncode != 0
    said = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(said) == 1 and f"another training run (process {os.getpid()})" in said[0], r.stderr
    assert "lost contact" not in r.stderr
    assert os.listdir(modeldir) == [".lock"]


def test_torchrun_is_refused_where_one_process_is_meant(cifar, tmp_path):
    r = torchrun(["--mode", "sweep", "--sweep", "learning_rate", "0.1", "--data_dir", cifar,
                  "--modeldir", str(tmp_path / "s"), *FLAGS])
    assert r.returncode != 0
    assert r.stderr.count("--mode sweep runs in one process") == 1, r.stderr


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA devices")
def test_two_gpus_train_with_nccl(cifar, tmp_path):
    r = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", str(tmp_path / "g"),
                  *[f for f in FLAGS if f != "cpu" and f != "--device"], "--max_epoch", "1"])
    assert r.returncode == 0, r.stderr
    assert "on 2 processes (nccl)" in r.stdout
