"""Several processes on this machine, as ``torchrun --standalone`` starts them: the same command
in each, with RANK, WORLD_SIZE, LOCAL_RANK and a free port in its environment, one core and one
thread each (each pinned to its own core where the system allows).

``run`` starts them and waits. A signal the launcher receives (SIGINT, SIGTERM) is passed to every
worker, which stops the run cleanly (trainer.training.stop_requests); a second SIGINT (Ctrl-C
again, at least REPEAT_SECONDS after the first: one Ctrl-C can arrive twice, from the terminal and
from a wrapper that passes it on) kills them at once. A worker that fails makes the launcher stop the others (unless a signal
is already stopping them all: then they have GRACE_SECONDS before they are killed); and where the
system allows (Linux), a worker whose launcher is killed outright gets SIGTERM, so nothing trains
on unseen. The exit status is the first rank's, or the first failure's where the first rank
succeeded.
"""
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

STARTED_ENV = "RESNET_CIFAR_STARTED"  # time.monotonic() when the launching command began
DECIDED_ENV = "RESNET_CIFAR_DECIDED"  # JSON: configuration values the launcher settled
REPEAT_SECONDS = 1.0  # a SIGINT this soon after the first is the same Ctrl-C
GRACE_SECONDS = 30  # after a failure, how long the others have to stop before they are killed
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_environment(rank: int, count: int, port: int, started: float, environ=None) -> dict:
    """The environment of worker ``rank`` of ``count``: torchrun's variables, one thread."""
    env = dict(os.environ if environ is None else environ)
    env.update(RANK=str(rank), WORLD_SIZE=str(count), LOCAL_RANK=str(rank),
               LOCAL_WORLD_SIZE=str(count), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               OMP_NUM_THREADS="1", **{STARTED_ENV: repr(started)})
    return env


def _pinned_to(core):
    """What a worker runs before the command: its own core, and SIGTERM if its launcher dies."""
    def prepare():
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {core})
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return prepare


def run(command: list, count: int, cores: tuple = (), started: float = None,
        environ: dict = None, decided: dict = None, poll_seconds: float = 0.1,
        signals: list = None, cwd: str = None) -> int:
    """Run ``command`` as ``count`` workers (worker i pinned to cores[i] where given; ``environ``
    added to their environment; ``decided``: configuration values for them, see ``decided``; in
    the folder ``cwd``, else this process's) and wait for all of them; return the exit status (see
    the module's docstring). The signals received meanwhile are appended to ``signals``."""
    started = time.monotonic() if started is None else started
    environ = dict(environ or {})
    if decided:
        environ[DECIDED_ENV] = json.dumps(decided)
    port = free_port()
    workers = []
    forwarding = {}
    received = [] if signals is None else signals
    first_at = []

    def forward(signum, frame):
        now = time.monotonic()
        again = bool(first_at) and signum == signal.SIGINT and now - first_at[0] >= REPEAT_SECONDS
        if not first_at:
            first_at.append(now)
        received.append(signum)
        if again:
            print("SIGINT again: stopping the workers at once.", file=sys.stderr, flush=True)
        for worker in workers:
            if worker.poll() is None:
                worker.kill() if again else worker.send_signal(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        forwarding[s] = signal.signal(s, forward)
    sys.stdout.flush()  # the launcher's own lines before its workers'
    sys.stderr.flush()
    try:
        for rank in range(count):
            core = cores[rank] if rank < len(cores) else None
            env = dict(worker_environment(rank, count, port, started), **(environ or {}))
            workers.append(subprocess.Popen(command, env=env, cwd=cwd,
                                            preexec_fn=_pinned_to(core)))
        return _wait(workers, poll_seconds, received)
    finally:
        for worker in workers:  # after an error of the launcher itself
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for s, handler in forwarding.items():
            signal.signal(s, handler)


def _wait(workers: list, poll_seconds: float, received: list) -> int:
    """Wait for every worker; once one fails, stop the others (unless a signal in ``received``
    is stopping them already), give them GRACE_SECONDS, then kill them. A worker the launcher
    stopped does not set the exit status: the failure that made it stop them does."""
    failure, stopped = None, set()
    failed_at = None
    while True:
        codes = [worker.poll() for worker in workers]
        if all(code is not None for code in codes):
            break
        if failed_at is None and any(code not in (None, 0) for code in codes):
            failed_at = time.monotonic()
            failure = next(code for code in codes if code not in (None, 0))
            for rank, (worker, code) in enumerate(zip(workers, codes)):
                if code is None and not received:
                    worker.terminate()
                    stopped.add(rank)
        elif failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
            for rank, (worker, code) in enumerate(zip(workers, codes)):
                if code is None:
                    worker.kill()
                    stopped.add(rank)
        time.sleep(poll_seconds)
    if 0 in stopped and failure is not None:
        return _status(failure)
    if codes[0] != 0:
        return _status(codes[0])
    failures = [code for code in codes if code != 0]
    return _status(failures[0]) if failures else 0


def _status(code: int) -> int:
    """A worker's exit code as a shell reports it: 128 + N for a worker killed by signal N."""
    return code if code > 0 else 128 - code


def decided(environ=None) -> dict:
    """The configuration values a worker's launcher settled for it ({} elsewhere): passed aside
    from the command line, which stays the user's (the flags the user gave mean what they say)."""
    text = (os.environ if environ is None else environ).get(DECIDED_ENV)
    return json.loads(text) if text else {}


def launched(environ=None) -> bool:
    """Whether this process is a worker ``run`` started."""
    return STARTED_ENV in (os.environ if environ is None else environ)


def started_at(default: float, environ=None) -> float:
    """When the command began: the launcher's time for its workers, else ``default``."""
    text = (os.environ if environ is None else environ).get(STARTED_ENV)
    try:
        return float(text) if text else default
    except ValueError:
        return default
