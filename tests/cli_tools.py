"""Running ``main.py`` as a user does (a subprocess in the repository root), and small helpers."""
import hashlib
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
TIMEOUT = 300  # seconds; generous, the runs below take a few seconds each

# A ResNet-8 with 4 filters on CPU: a few seconds per run, import of torch included.
TINY = ["--resnet_size", "1", "--first_num_filters", "4", "--batch_size", "8", "--device", "cpu",
        "--no_download", "--eval_batch_size", "64", "--amp", "off"]


def main_cmd(args):
    return [sys.executable, MAIN, *map(str, args)]


def run_main(args, timeout: int = TIMEOUT, env: dict = None) -> subprocess.CompletedProcess:
    """``python main.py args`` to the end; stdout and stderr as text."""
    return subprocess.run(main_cmd(args), cwd=ROOT, env=dict(ENV, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def start_main(args, env: dict = None) -> subprocess.Popen:
    return subprocess.Popen(main_cmd(args), cwd=ROOT, env=dict(ENV, **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_file(proc: subprocess.Popen, path: str, timeout: float = TIMEOUT) -> None:
    """Poll until path exists; fail (with the process's output) if the process ends first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {path} appeared:\n"
                                 f"{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def snapshot(root: str) -> dict:
    """Every folder and file under root (relative path -> None for folders, sha256 for files).

    The run lock (``.lock``, which holds the process id of the last run to take it) is left out:
    taking the lock is what a refused run is expected to do first.
    """
    found = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(folder, d), root)] = None
        for f in files:
            if f == ".lock":
                continue
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


TIMING_KEYS = ("seconds", "images_per_second")


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical weights, buffers and optimizer state, and the same
    metrics (timings aside)."""
    assert a["epoch"] == b["epoch"]
    untimed = [[{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in c["metrics"]]
               for c in (a, b)]
    assert untimed[0] == untimed[1]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), \
            f"momentum buffer {k} differs"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
