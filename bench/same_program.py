"""Is it the same program? Fingerprints of what a few short fixed-seed runs compute, to compare
before and after a change that should change nothing (a restructuring, say).

    python bench/same_program.py record before.json    # on the old code
    python bench/same_program.py record after.json     # on the new code, same machine
    python bench/same_program.py compare before.json after.json

Each run trains a small ResNet on made-up images in the official CIFAR-10 format (3 epochs,
validation, model-best), tests three checkpoints with --json and predicts a private set, once
with the course recipe and once with the fast one (EMA, label smoothing, onecycle, bf16 on CPU).
The fingerprints are SHA-256 digests of metrics.csv without its timing columns, of every tensor
in every checkpoint (weights, optimizer, EMA, torch's random states), of the test report without timings
and of the predicted probabilities. Floating-point kernels differ between CPUs, so compare
fingerprints taken on one machine only.
"""
import csv
import hashlib
import json
import platform
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from cifar_files import make_batch, write_cifar  # noqa: E402  (the tests' official-format writer)

COMMON = ["--resnet_size", "1", "--first_num_filters", "8", "--batch_size", "32", "--device",
          "cpu", "--no_download", "--eval_batch_size", "100", "--save_interval", "1", "--seed", "7",
          "--split_index", "800", "--quiet"]
RUNS = {"course": ["--max_epoch", "3", "--lr_decay_epochs", "2"],
        "fast": ["--recipe", "fast", "--max_epoch", "3", "--warmup_epochs", "1", "--ema", "0.9",
                 "--amp", "bf16"]}  # pinned: --amp auto would time bf16 against fp32
TIMINGS = ("seconds", "images_per_second")


def _main(args) -> str:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"main.py {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensors(obj, prefix=""):
    """(name, tensor) of every tensor inside nested dicts and lists, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{i}")


def _checkpoint(path: str) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # numpy's global generator is never seeded (nothing here draws from it): its state is the
    # process's, not the program's.
    ckpt.get("rng", {}).pop("numpy", None)
    out = {name: _digest(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
           for name, t in _tensors({k: v for k, v in ckpt.items() if k != "metrics"})}
    out["epoch"], out["step"] = ckpt["epoch"], ckpt["step"]
    out["metrics"] = [{k: v for k, v in m.items() if k not in TIMINGS} for m in ckpt["metrics"]]
    return out


def _untimed_csv(path: str) -> list:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def record(out_path: str) -> None:
    fingerprints = {}
    with tempfile.TemporaryDirectory() as root:
        data_dir = os.path.join(root, "data")
        write_cifar(data_dir, n_per_batch=200, n_test=200, seed=3)
        private = os.path.join(root, "private.npy")
        np.save(private, make_batch(50, np.random.default_rng(5))[0])
        for name, extra in RUNS.items():
            modeldir = os.path.join(root, name)
            flags = COMMON + ["--data_dir", data_dir, "--modeldir", modeldir] + extra
            _main(["--mode", "train"] + flags)
            report = os.path.join(root, f"{name}-report.json")
            _main(["--mode", "test", "--checkpoints", "1", "3", "best", "--json", report] + flags)
            probabilities = os.path.join(root, f"{name}-probabilities.npy")
            _main(["--mode", "predict", "--private_data", private, "--output", probabilities]
                  + flags)
            with open(report) as f:
                test_report = json.load(f)
            files = sorted(n for n in os.listdir(modeldir) if n.endswith(".ckpt"))
            fingerprints[name] = {
                "metrics.csv": _untimed_csv(os.path.join(modeldir, "metrics.csv")),
                "checkpoints": {n: _checkpoint(os.path.join(modeldir, n)) for n in files},
                "report": _digest(json.dumps(test_report, sort_keys=True).encode()),
                "probabilities": _digest(np.load(probabilities).tobytes()),
            }
    fingerprints["machine"] = {"torch": torch.__version__, "cpu": _cpu_name()}
    with open(out_path, "w") as f:
        json.dump(fingerprints, f, indent=1, sort_keys=True)
    print(f"wrote {out_path}: {sum(len(v['checkpoints']) for k, v in fingerprints.items() if k in RUNS)} "
          f"checkpoints of {len(RUNS)} runs fingerprinted on {fingerprints['machine']['cpu']}")


def _cpu_name() -> str:
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or platform.machine()


def _differences(a, b, where=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}/{key}: only in {'the second' if key in b else 'the first'}"
            else:
                yield from _differences(a[key], b[key], f"{where}/{key}")
    elif a != b:
        yield f"{where}: {str(a)[:60]} != {str(b)[:60]}"


def compare(first: str, second: str) -> int:
    with open(first) as f:
        a = json.load(f)
    with open(second) as f:
        b = json.load(f)
    if a.get("machine") != b.get("machine"):
        print(f"warning: taken on different machines or torch versions: {a.get('machine')} and "
              f"{b.get('machine')}; kernels may differ")
    found = list(_differences({k: v for k, v in a.items() if k != "machine"},
                              {k: v for k, v in b.items() if k != "machine"}))
    if found:
        print(f"{len(found)} difference(s):")
        print("\n".join(found[:40]))
        return 1
    print("the same program: every fingerprint matches")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
