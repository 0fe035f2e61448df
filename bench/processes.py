"""One process against several: the same training run as ``python main.py`` and under
``torchrun --standalone --nproc_per_node N``. A script that prints figures, not a test.

    python bench/processes.py --data_dir D [--nproc 2] [--repeats 3] [--max_epoch 1]
                              [-- extra main.py flags]

Each repeat runs both commands (alternating, one first then the other) into fresh model folders and
reports, as median and spread over the repeats: the wall time of the whole process (start, data
loading, training, validation, checkpoint) and the training images per second of the last epoch
(from metrics.csv). Under torchrun each process gets 1/N of the machine's threads, as torchrun sets
OMP_NUM_THREADS=1 unless told otherwise; on a CPU this is a fair fight only if the one-process run
may use all cores, which it does here.
"""
import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def device_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def run(cmd, modeldir: str):
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    with open(os.path.join(modeldir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return wall, float(rows[-1]["images_per_second"])


def summary(values) -> str:
    return f"{statistics.median(values):9.1f}  ({min(values):.1f} to {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_epoch", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more main.py flags (after --)")
    args = parser.parse_args()

    flags = ["--mode", "train", "--data_dir", args.data_dir, "--max_epoch", str(args.max_epoch),
             "--quiet", *args.extra]
    results = {"1 process": ([], []), f"{args.nproc} processes": ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in (list(results) if i % 2 == 0 else list(results)[::-1]):
                modeldir = os.path.join(tmp, f"{name.replace(' ', '_')}_{i}")
                main = [os.path.join(ROOT, "main.py"), *flags, "--modeldir", modeldir]
                cmd = [sys.executable, *main] if name == "1 process" else \
                    [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={args.nproc}", *main]
                wall, rate = run(cmd, modeldir)
                results[name][0].append(wall)
                results[name][1].append(rate)
                print(f"  repeat {i + 1}, {name}: {wall:.1f} s, {rate:.0f} img/s", flush=True)
    print(f"\n{device_name()}; {args.repeats} repeats; main.py {' '.join(flags[2:])}")
    print(f"{'':14}{'wall s (median, range)':>30}{'train img/s (median, range)':>34}")
    for name, (walls, rates) in results.items():
        print(f"{name:14}{summary(walls):>30}{summary(rates):>34}")


if __name__ == "__main__":
    main()
