"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM, and the pause hook its tests use.

While training, the first signal only records itself; the loop finishes the step it is in, saves
``interrupted.ckpt`` and stops. Under torchrun the ranks agree on a stop at each step boundary, so a
signal to any one of them stops them all at the same step.
"""
import os
import signal
import sys
import threading
import time

from configure import ConfigError

# "EPOCH:STEP" or "EPOCH:STEP:RANK": wait there for a signal (for the tests of signals). Without
# RANK only rank 0 waits.
PAUSE_ENV = "RESNET_CIFAR_PAUSE_AT"


class StopRequests:
    """While active, the first SIGINT/SIGTERM only sets ``signum`` so the loop can save and stop.
    In a single process a second SIGINT raises KeyboardInterrupt at once; under torchrun, which
    passes a Ctrl-C on to processes that had it from the terminal already, later signals are
    ignored (the stop is under way, and a rank that quit alone would leave the others waiting)."""

    def __init__(self, distributed: bool = False):
        self.signum = None
        self.distributed = distributed
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT and not self.distributed:
                raise KeyboardInterrupt
            return
        self.signum = signum
        again = "" if self.distributed else " (press Ctrl-C again to quit at once)"
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a "
              f"checkpoint{again}.", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def pause_point(rank: int = 0):
    """(epoch, step) at which this rank should wait for a signal (PAUSE_ENV), or None."""
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return None
    try:
        parts = [int(part) for part in value.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{PAUSE_ENV}={value!r} must be EPOCH:STEP or EPOCH:STEP:RANK, for "
                          f"example 1:3.") from None
    if (parts[2] if len(parts) == 3 else 0) != rank:
        return None
    return parts[0], parts[1]


def wait_for_signal(stop: StopRequests, epoch: int, step: int) -> None:
    print(f"paused before step {step} of epoch {epoch} (pid {os.getpid()}, {PAUSE_ENV}); waiting "
          f"for a signal", file=sys.stderr, flush=True)
    while stop.signum is None:
        time.sleep(0.01)
