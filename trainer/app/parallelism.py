"""--cpu_processes on a CPU: how a training run uses the cores it may use (trainer.parallel.cores).

One process with a thread per core, or one process per core with a thread each, the gradients
averaged over torch.distributed's gloo (trainer.parallel.launch starts them as torchrun would).
Which trains faster depends on the network, the batch and the CPU: measured on the 2-core
development machine (BENCHMARKS.md), airbench at width 0.375 in bf16 at batch 1024 trained 1,243
images a second as two threads and 1,737 as two processes, since a thread's share of a convolution
over a 32x32 image is small, while a process has half the batch to itself. So ``--cpu_processes 0``
(the speed recipe's) times the run's own step both ways at the start, as --amp auto times its
precisions (and settles --amp auto first, on the same network), and keeps the faster; a positive
value pins the count: 1 is one process with every core as threads.

The decision is one line with the flag that pins it; the count is what config.json and the
checkpoints record, and a resumed run keeps its checkpoint's count (a different count would not
resume bit for bit).
"""
import json
import os
import signal
import sys
import tempfile
from typing import NamedTuple, Optional

import torch

import Model
from configure import Config
from trainer.parallel import cores as machine_cores
from trainer.app import probe
from trainer.parallel import launch
from trainer.training import precision, sizing, timing_cache

# Processes are kept only when a step takes at most 1/1.1 of the threads' time: they start an
# interpreter each and hold the data once each, which a near tie does not pay for.
PROCESSES_MARGIN = 1.1
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
# Variables that may hold a path relative to the user's folder: the probe runs in ROOT, so it is
# given them absolute (its step times then go to the file this run reads).
PATH_VARIABLES = (timing_cache.CACHE_ENV, "XDG_CACHE_HOME", "HOME", "TORCH_HOME")


class Decision(NamedTuple):
    """How the run uses the machine: ``processes`` (1: one process of ``threads`` threads), the
    resolved --amp where this decision settled it (else None), and the seconds per image timed
    each way (None where not timed)."""
    processes: int
    threads: int
    cores: tuple
    amp: Optional[str] = None
    threads_seconds: Optional[float] = None
    processes_seconds: Optional[float] = None


def pick(threads_seconds: float, processes_seconds: Optional[float]) -> bool:
    """Whether processes are clearly faster than threads (None: they could not be timed)."""
    return processes_seconds is not None and \
        processes_seconds * PROCESSES_MARGIN <= threads_seconds


def time_threads(config: Config, count: int, cache) -> tuple:
    """(resolved --amp or None, seconds per image, precision.Choice or None) of the run's step as
    one process of ``count`` threads; --amp auto is settled here, on the same network
    (precision.choose). ``cache``: the timing_cache.TimingCache asked first."""
    torch.set_num_threads(count)
    model = Model.MyModel(config, log=lambda *a: None)
    images, labels = probe.random_batch(config, precision.TIMED_STEPS, 1)
    if config.amp == "auto":
        choice = precision.choose(model, images, labels, cache=cache)
        return choice.amp, choice.seconds / config.batch_size, choice
    return None, sizing.seconds_per_image(model, images, labels, cache=cache), None


def probe_environment() -> dict:
    """What the probe's processes add to their environment: the repository on PYTHONPATH, and
    PATH_VARIABLES made absolute."""
    added = {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    for name in PATH_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and value.lower() != "off" and not os.path.isabs(value):
            added[name] = os.path.abspath(value)
    return added


def time_processes(config: Config, found: machine_cores.Cores, cache) -> Optional[float]:
    """Seconds per image of the run's step as ``found.count`` processes (trainer.app.probe,
    which remembers it in ``cache``'s file), or None where they failed (said on the standard
    error by the processes themselves)."""
    remembered = cache.get(timing_cache.key(config, torch.device("cpu"), found.count, 1))
    if remembered:
        cache.hits += 1
        return remembered
    with tempfile.TemporaryDirectory(prefix="resnet-cifar-probe-") as folder:
        config_path, out_path = os.path.join(folder, "config.json"), os.path.join(folder, "out")
        values = config.to_dict()
        if values.get("pretrained_file"):  # the probe runs in the repository's folder
            values["pretrained_file"] = os.path.abspath(values["pretrained_file"])
        with open(config_path, "w") as f:
            json.dump(values, f)
        command = [sys.executable, "-m", "trainer.app.probe", config_path, out_path]
        received = []
        status = launch.run(command, found.count, found.ids, signals=received, cwd=ROOT,
                            environ=probe_environment())
        if received:  # Ctrl-C or SIGTERM during the timing: the user wants the run to stop
            if received[0] != signal.SIGTERM:
                raise KeyboardInterrupt
            print("SIGTERM received while the cores were timed: stopped before training; "
                  "nothing was saved.", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGTERM)
        if status != 0 or not os.path.isfile(out_path):
            return None
        with open(out_path) as f:
            return float(json.load(f)["seconds_per_image"])


def decide(config: Config, found: machine_cores.Cores, log=print) -> Decision:
    """How a fresh run on a CPU uses ``found`` cores: config.cpu_processes when it is positive,
    else whichever of threads and processes trains faster (timed on the network the run, or the
    width chooser, builds first). Logs one line."""
    count = found.count
    if config.cpu_processes > 0 or count == 1:
        processes = config.cpu_processes or 1
        decision = Decision(processes, max(1, count // processes), found.ids)
        log(describe(decision, found))
        return decision
    if config.batch_size % count:
        decision = Decision(1, count, found.ids)
        log(describe(decision, found) + f"; --batch_size {config.batch_size} does not divide "
            f"among {count} processes")
        return decision
    reference = sizing.reference_config(config)
    cache = timing_cache.TimingCache(log=log)
    amp, threads_seconds, choice = time_threads(reference, count, cache)
    if choice is not None:
        log(precision.describe(choice) + (cache.said() if choice.remembered else ""))
    timed = Config.from_dict(reference.to_dict())
    timed.amp = amp or reference.amp
    timed.cpu_processes = count
    processes_seconds = time_processes(timed, found, cache)
    if processes_seconds is None:
        log(f"warning: {count} processes could not be timed (see above); training as threads")
    processes = count if pick(threads_seconds, processes_seconds) else 1
    decision = Decision(processes, 1 if processes > 1 else count, found.ids, amp,
                        threads_seconds, processes_seconds)
    log(describe(decision, found) + cache.said())
    return decision


def describe(decision: Decision, found: machine_cores.Cores) -> str:
    """The line a run logs about its use of the cores, with the flag that pins it."""
    how = f"{decision.processes} processes of 1 thread" if decision.processes > 1 else \
        f"1 process of {decision.threads} thread" + ("s" if decision.threads > 1 else "")
    timed = ""
    if decision.threads_seconds is not None:
        timed = f": {1 / decision.threads_seconds:.0f} img/s as threads, " + \
            (f"{1 / decision.processes_seconds:.0f} as processes"
             if decision.processes_seconds else "processes not timed")
    return (f"cores: {found.count} usable ({found.limited_by}){timed} -> {how} "
            f"(--cpu_processes {decision.processes})")
