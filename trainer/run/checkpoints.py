"""Checkpoint files: their format, atomic writes and reading, and their names in a model folder
(finding them, the run lock, a fresh start, what a resume retraces, the best one).

A checkpoint ``<modeldir>/model-<epoch>.ckpt`` is a dict of plain types and tensors, loadable with
``torch.load(path, weights_only=True)``:

=============  ==========================================================================
key            what it holds
=============  ==========================================================================
``format``     CHECKPOINT_FORMAT
``epoch``      epochs completed (int)
``step``       steps of the next epoch already done; 0 except in ``interrupted.ckpt``
``model``      state dict of the plain network (no ``module.`` or ``_orig_mod.`` prefixes)
``optimizer``  SGD state dict
``scaler``     GradScaler state dict (empty when fp16 was not in use)
``config``     ``Config.to_dict()`` of the run
``data``       fingerprint of the training data
``rng``        Python, numpy and torch generator states (plain types and tensors)
``metrics``    one dict per finished epoch
``partial``    running sums of the unfinished epoch (``interrupted.ckpt`` only)
``ema``        state dict of the weight average (``--ema``), else None; test and predict use it
``lookahead``  the slow weights of ``--lookahead`` (a state dict), else None (absent before it)
=============  ==========================================================================

Files are written atomically (trainer.storage.atomic), so a crash never leaves a half-written
checkpoint under a valid name. Everything read back is checked on reading, in one place, before
use (trainer.run.contents says what is wrong), so a damaged or hand-edited file ends in
``CheckpointError`` naming what is wrong, never a traceback.
"""
import contextlib
import errno
import io
import os
import re

import torch

from trainer.run import contents
from trainer.storage import atomic

CHECKPOINT_FORMAT = 1
INTERRUPTED = "interrupted.ckpt"
BEST = "model-best.ckpt"  # the epoch of the best validation accuracy so far
LOCK = ".lock"
TEST_REPORT = "test_report.json"  # the test report of --mode train --test (app/evaluate.py)
# records.py, plots.py and --test write them
RECORDS = ("metrics.csv", "config.json", "curves.png", "weights.png", TEST_REPORT)
PREDICTIONS = "predictions.npy"  # --mode predict's default output: the folder's model's, not a new one's
_CKPT_RE = re.compile(r"^model-(\d+)\.ckpt$")
# Config keys added after checkpoints were first written, with the value those checkpoints meant.
LEGACY_CONFIG = {"dataset": "cifar10", "label_mode": "fine", "network": "resnet", "batch_norm": False,
                 "downsample": "b", "shortcut": "projection", "activation": "relu",
                 "normalize": "per_image", "l1": 0.0, "lr_schedule": "step", "warmup_epochs": 0.0,
                 "nesterov": False, "no_decay_bn_bias": False, "label_smoothing": 0.0, "ema": 0.0,
                 "sync_bn": False, "budget_minutes": 0.0, "recipe": "course",
                 "bias_lr_scale": 1.0, "decoupled": False, "lookahead": False,
                 "lookahead_decay": 0.95 ** 5, "lookahead_every": 5, "translate": 4,
                 "flip": "random", "whiten_bias_share": 1.0, "muon_lr": 0.0,
                 "muon_momentum": 0.6}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unwritable or does not fit this run."""


# --------------------------------------------------------------------------------------------
# Names in a model folder

def checkpoint_path(modeldir: str, epoch) -> str:
    """model-<epoch>.ckpt, or model-best.ckpt for epoch "best"."""
    return os.path.join(modeldir, f"model-{epoch}.ckpt")


def list_checkpoints(modeldir: str):
    """Epoch numbers of the model-<epoch>.ckpt entries in modeldir, ascending."""
    if not os.path.isdir(modeldir):
        return []
    found = (_CKPT_RE.match(name) for name in os.listdir(modeldir))
    return sorted(int(m.group(1)) for m in found if m)


def is_checkpoint_name(name: str) -> bool:
    """model-<epoch>.ckpt, model-best.ckpt or interrupted.ckpt."""
    return bool(_CKPT_RE.match(name)) or name in (INTERRUPTED, BEST)


def run_files(modeldir: str):
    """Names of the checkpoints a training run left in modeldir (temporaries not included)."""
    if not os.path.isdir(modeldir):
        return []
    return sorted(name for name in os.listdir(modeldir)
                  if is_checkpoint_name(name))


def run_records(modeldir: str):
    """Names of the other files a run (or a prediction from it) leaves in modeldir: metrics,
    config, curves, the test report of --test, predictions."""
    if not os.path.isdir(modeldir):
        return []
    return sorted(name for name in os.listdir(modeldir) if name in RECORDS + (PREDICTIONS,))


def _is_run_temporary(name: str) -> bool:
    """A temporary of an atomic write of a file only a training run writes (see
    clean_stale_temporaries)."""
    target = atomic.temporary_target(name)
    # Only the run's own files: a prediction being written beside them is not ours to touch.
    return target is not None and (is_checkpoint_name(target) or target in RECORDS)


def clean_stale_temporaries(modeldir: str) -> None:
    """Remove temporaries a killed run left behind (call it holding the run lock)."""
    if os.path.isdir(modeldir):
        for name in os.listdir(modeldir):
            if _is_run_temporary(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(modeldir, name))


def check_fresh_start(modeldir: str, overwrite: bool, log=print) -> None:
    """A new run (no --resume) needs a folder holding none of the files a run writes (another
    run's checkpoints and records, or a user's file of the same name): refuse, or with
    ``overwrite`` remove them first, so a folder never mixes two runs and nothing is replaced
    unasked."""
    found = run_files(modeldir) + run_records(modeldir)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        what = "a run" if run_files(modeldir) else "files a run writes"
        raise CheckpointError(f"--modeldir {modeldir} already holds {what} ({shown}); pass "
                              f"--resume to continue it, choose another --modeldir, or pass "
                              f"--overwrite to delete them and start anew.")
    for name in found:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(modeldir, name))
    log(f"--overwrite: removed {len(found)} file{'' if len(found) == 1 else 's'} of the earlier "
        f"run from {modeldir}.")


# --------------------------------------------------------------------------------------------
# One run per model folder

class RunLock:
    """An exclusive ``flock`` on ``<modeldir>/.lock`` for the whole of a training run.

    A second run on the same folder is refused at once, naming the first one's process id. The lock
    belongs to the open file, so it dies with its process: kill -9 leaves no stale lock behind.
    """

    def __init__(self, modeldir: str):
        self.modeldir = modeldir
        self.path = os.path.join(modeldir, LOCK)
        self._fd = None

    def __enter__(self):
        import fcntl  # POSIX only; imported here so that test and predict need nothing of it

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(f"cannot create the lock file {self.path} ({e.strerror}); choose "
                                  f"a --modeldir you can write to.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(f"cannot lock {self.path} ({e.strerror}); choose a "
                                      f"--modeldir on a local disk.") from None
            raise CheckpointError(f"another training run (process {holder}) is using --modeldir "
                                  f"{self.modeldir}; wait for it to end, stop it, or choose "
                                  f"another --modeldir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
        return False


# --------------------------------------------------------------------------------------------
# Writing

def _torch_writer(obj, f) -> None:
    # Serialize in memory first: torch's own file writer reports a full disk as an opaque
    # RuntimeError, while a plain write raises OSError with the real reason.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    f.write(buffer.getbuffer())


def save(state: dict, path: str) -> None:
    """Write a checkpoint atomically (trainer.storage.atomic); CheckpointError if it fails."""
    atomic.write(path, state, _torch_writer, CheckpointError)


# --------------------------------------------------------------------------------------------
# Reading and checking

def _torch_reason(e: Exception) -> str:
    """The informative sentence of one of torch.load's (often long) refusals."""
    text = " ".join(str(e).split())
    sentences = [t.strip() for t in re.split(r"(?<=[.!?])\s", text) if t.strip()]
    # A refused file says what it asked for in the sentence naming a "global"; else the first.
    telling = [t for t in sentences if "global" in t.lower()] or sentences
    return telling[0].rstrip(".") if telling else type(e).__name__


def refuse_non_file(path: str) -> None:
    """CheckpointError if something other than a file (a folder, a looping link) sits at path."""
    if os.path.lexists(path) and not os.path.isfile(path):
        kind = "a folder" if os.path.isdir(path) else "a broken or looping link"
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file; move it away.")


def read_checkpoint(path: str, for_resume: bool = False) -> dict:
    """Read a checkpoint with ``weights_only=True`` and check its structure.

    ``for_resume`` also requires the optimizer, scaler, random states and metrics. Raises
    CheckpointError naming the file and what is wrong.
    """
    refuse_non_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except Exception as e:  # torch raises many types for damaged or hostile files
        raise CheckpointError(f"{path} is not a loadable checkpoint ({_torch_reason(e)}); it may be "
                              f"truncated or not a checkpoint at all.") from None
    problem = contents.structure_problem(ckpt, for_resume)
    if problem:
        raise CheckpointError(f"{path} is not a usable checkpoint of this trainer: {problem}.")
    ckpt["config"] = dict(LEGACY_CONFIG, **ckpt["config"])
    return ckpt


# --------------------------------------------------------------------------------------------
# Finding checkpoints in a model folder

def find_checkpoint(modeldir: str, epoch) -> str:
    """The path of model-<epoch>.ckpt (model-best.ckpt for "best") in modeldir; CheckpointError
    if there is no such file."""
    if not os.path.isdir(modeldir):
        raise CheckpointError(f"--modeldir {modeldir} does not exist, so it holds no checkpoint "
                              f"{epoch}; check --modeldir.")
    path = checkpoint_path(modeldir, epoch)
    refuse_non_file(path)
    if epoch == "best" and not os.path.isfile(path):
        raise CheckpointError(f"no {BEST} in {modeldir}: it is written when a validation "
                              f"accuracy is the best so far, so a run with --train_all has "
                              f"none; give checkpoint numbers instead.")
    if not os.path.isfile(path):
        found = list_checkpoints(modeldir)
        have = (f"checkpoints there: {', '.join(map(str, found))}" if found
                else "it holds no checkpoints")
        raise CheckpointError(f"no checkpoint {epoch} in {modeldir} ({have}).")
    return path


def newest_resumable(modeldir: str, log=print):
    """(path, checkpoint) of the furthest resumable checkpoint in modeldir (interrupted.ckpt
    included), skipping damaged ones with a line each; (None, None) if the folder holds none."""
    candidates = [(e, 0, checkpoint_path(modeldir, e)) for e in list_checkpoints(modeldir)]
    interrupted = os.path.join(modeldir, INTERRUPTED)
    if os.path.lexists(interrupted):
        try:
            ck = read_checkpoint(interrupted, for_resume=True)
            candidates.append((ck["epoch"], ck["step"], interrupted))
        except CheckpointError as e:
            log(f"skipping {e}")
    for _, _, path in sorted(candidates, reverse=True):
        try:
            return path, read_checkpoint(path, for_resume=True)
        except CheckpointError as e:
            log(f"skipping {e}")
    if candidates or os.path.lexists(interrupted):  # starting anew would overwrite them
        raise CheckpointError(f"no checkpoint in {modeldir} is loadable "
                              f"({', '.join(run_files(modeldir))}), so there is nothing to resume "
                              f"from; move them away to start anew.")
    return None, None


def later_files(modeldir: str, epoch: int, step: int, source: str) -> list:
    """Names of the checkpoints in modeldir that lie past (epoch, step), the point a resume from
    ``source`` starts at: numbered ones of later epochs, and interrupted.ckpt if it is further on.
    Continuing from source would retrace them."""
    later = [os.path.basename(checkpoint_path(modeldir, e)) for e in list_checkpoints(modeldir)
             if e > epoch]
    interrupted = os.path.join(modeldir, INTERRUPTED)
    if os.path.isfile(interrupted) and os.path.abspath(interrupted) != os.path.abspath(source):
        try:
            ckpt = read_checkpoint(interrupted, for_resume=True)
        except CheckpointError:  # unusable, so nothing to retrace; the run replaces it
            return later
        if (ckpt["epoch"], ckpt["step"]) > (epoch, step):
            later.append(INTERRUPTED)
    return later


def best_accuracy(modeldir: str, log=print):
    """The validation accuracy model-best.ckpt records (its last epoch's), or None when there is
    no such file or it cannot be read (then it is named, and a run may replace it)."""
    path = checkpoint_path(modeldir, "best")
    if not os.path.lexists(path):
        return None
    try:
        metrics = read_checkpoint(path, for_resume=True)["metrics"]
    except CheckpointError as e:
        log(f"will replace {e}")
        return None
    accuracy = metrics[-1].get("valid_acc") if metrics else None
    return accuracy if contents.is_number(accuracy) else None


def drop_best_past(modeldir: str, epoch: int, log=print) -> None:
    """On resume from ``epoch``, a model-best.ckpt of a later epoch belongs to a run that is being
    retraced: drop it, so that it cannot outlive what it was the best of."""
    path = checkpoint_path(modeldir, "best")
    if not os.path.isfile(path):
        return
    try:
        best_epoch = read_checkpoint(path)["epoch"]
    except CheckpointError as e:
        log(f"replacing {e}")
        best_epoch = epoch + 1
    if best_epoch > epoch:
        os.remove(path)
