"""The CPU cores this process may use: the ones it may run on (``taskset``, a container's cpuset),
as many of them as a container's CPU quota pays for (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us``), and no more than ``OMP_NUM_THREADS`` when the user sets it.

torch's own default counts only the first of these: under a quota of 2 CPUs on a 16-core machine
it starts 16 threads, which then wait on each other. ``usable()`` counts all three, and the
training run uses that many cores, as threads or as processes (trainer.app.parallelism).
"""
import math
import os
from typing import NamedTuple, Optional

CGROUP_ROOT = "/sys/fs/cgroup"


class Cores(NamedTuple):
    """The cores a run may use: ``ids`` to pin processes to (the first ``count`` of those it may
    run on), and what limited the count, in words."""
    count: int
    ids: tuple
    limited_by: str


def allowed_ids() -> tuple:
    """The cores this process may run on (taskset, cpuset); every core where that is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def quota(root: str = CGROUP_ROOT) -> Optional[float]:
    """The CPUs a cgroup quota pays for (2.5 for 250 ms per 100 ms), or None without one:
    cgroup v2's cpu.max ("max 100000" or "250000 100000"), else v1's cfs quota and period."""
    text = _read(os.path.join(root, "cpu.max"))
    if text:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return int(parts[0]) / int(parts[1])
            except (ValueError, ZeroDivisionError):
                return None
        return None
    limit = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    try:
        limit, period = int(limit), int(period)
    except (TypeError, ValueError):
        return None
    return limit / period if limit > 0 and period > 0 else None


def omp_threads(environ=None) -> Optional[int]:
    """OMP_NUM_THREADS as a positive whole number, or None where it is unset or not one."""
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def usable(environ=None, root: str = CGROUP_ROOT, ids: tuple = None) -> Cores:
    """How many cores this process may use, and which: the smallest of the cores it may run on,
    the CPU quota (rounded up: 2.5 CPUs keep three threads busy most of the time) and
    OMP_NUM_THREADS."""
    ids = allowed_ids() if ids is None else tuple(ids)
    limits = [(len(ids), "the cores this process may run on")]
    paid = quota(root)
    if paid is not None:
        limits.append((max(1, math.ceil(paid - 1e-9)), f"a CPU quota of {paid:g}"))
    threads = omp_threads(environ)
    if threads is not None:
        limits.append((threads, f"OMP_NUM_THREADS={threads}"))
    count, why = min(limits, key=lambda limit: limit[0])
    return Cores(count, ids[:count], why)
