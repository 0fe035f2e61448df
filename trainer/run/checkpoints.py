"""Checkpoint files: their format, atomic writes, structural checks, random states, the run lock.

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
=============  ==========================================================================

Files are written atomically (trainer.storage.atomic), so a crash never leaves a half-written
checkpoint under a valid name. Everything read back is checked here, in one place, before use, so
a damaged or hand-edited file ends in ``CheckpointError`` naming what is wrong, never a traceback.
"""
import contextlib
import errno
import io
import math
import os
import random
import re

import numpy as np
import torch

from trainer.storage import atomic

CHECKPOINT_FORMAT = 1
INTERRUPTED = "interrupted.ckpt"
BEST = "model-best.ckpt"  # the epoch of the best validation accuracy so far
LOCK = ".lock"
RECORDS = ("metrics.csv", "config.json", "curves.png", "weights.png")  # records.py and plots.py write them
PREDICTIONS = "predictions.npy"  # --mode predict's default output: the folder's model's, not a new one's
_CKPT_RE = re.compile(r"^model-(\d+)\.ckpt$")
_RNG_KEYS = ("python", "numpy", "torch")
# Config keys added after checkpoints were first written, with the value those checkpoints meant.
LEGACY_CONFIG = {"dataset": "cifar10", "label_mode": "fine", "network": "resnet", "batch_norm": False,
                 "downsample": "b", "shortcut": "projection", "activation": "relu",
                 "normalize": "per_image", "l1": 0.0, "lr_schedule": "step", "warmup_epochs": 0.0,
                 "nesterov": False, "no_decay_bn_bias": False, "label_smoothing": 0.0, "ema": 0.0,
                 "sync_bn": False, "budget_minutes": 0.0, "recipe": "course"}


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


def run_files(modeldir: str):
    """Names of the checkpoints a training run left in modeldir (temporaries not included)."""
    if not os.path.isdir(modeldir):
        return []
    return sorted(name for name in os.listdir(modeldir)
                  if _CKPT_RE.match(name) or name in (INTERRUPTED, BEST))


def run_records(modeldir: str):
    """Names of the other files a run (or a prediction from it) leaves in modeldir: metrics,
    config, curves, predictions."""
    if not os.path.isdir(modeldir):
        return []
    return sorted(name for name in os.listdir(modeldir) if name in RECORDS + (PREDICTIONS,))


def _is_run_temporary(name: str) -> bool:
    """A temporary of an atomic write of a file only a training run writes (see
    clean_stale_temporaries)."""
    target = atomic.temporary_target(name)
    # Only the run's own files: a prediction being written beside them is not ours to touch.
    return target is not None and (bool(_CKPT_RE.match(target))
                                   or target in (INTERRUPTED, BEST) + RECORDS)


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
    problem = _structure_problem(ckpt, for_resume)
    if problem:
        raise CheckpointError(f"{path} is not a usable checkpoint of this trainer: {problem}.")
    ckpt["config"] = dict(LEGACY_CONFIG, **ckpt["config"])
    return ckpt


def _shown(value) -> str:
    """A value from a file, for a one-line message: short ones as they are, others by type."""
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"a {type(value).__name__}"


def _is_plain(value) -> bool:
    """What Config.to_dict() writes: None, bool, int, float, str, or a list of those."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) and not isinstance(v, (list, tuple)) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _structure_problem(ckpt, for_resume: bool):
    """What is wrong with a loaded checkpoint's structure (None if nothing)."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a dict"
    required = ["model", "config", "epoch"]
    if for_resume:
        required += ["step", "optimizer", "scaler", "rng", "metrics"]
    missing = [k for k in required if k not in ckpt]
    if missing:
        return f"'{missing[0]}' is missing"
    if not _is_int(ckpt["epoch"]) or ckpt["epoch"] < 0:
        return f"'epoch' must be a whole number, not {_shown(ckpt['epoch'])}"
    if not isinstance(ckpt["config"], dict):
        return f"'config' must be a dict, not a {type(ckpt['config']).__name__}"
    for key, value in ckpt["config"].items():
        if not (isinstance(key, str) and _is_plain(value)):
            return f"the config entry {_shown(key)} holds {_shown(value)}, not a plain value"
    model = ckpt["model"]
    if not isinstance(model, dict) or not model:
        return "'model' must be a non-empty state dict"
    for name, value in model.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            return f"'model' entry {_shown(name)} is not a named tensor"
    norm = ckpt.get("normalization")
    if norm is not None and not (isinstance(norm, dict) and all(
            isinstance(norm.get(k), torch.Tensor) and norm[k].shape == (3,)
            and norm[k].is_floating_point() and bool(torch.isfinite(norm[k]).all())
            for k in ("mean", "std")) and bool((norm["std"] > 0).all())):
        return "'normalization' must hold finite channel means and positive deviations"
    ema = ckpt.get("ema")
    if ema is not None and not (isinstance(ema, dict) and ema and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ema.items())):
        return "'ema' (the weight average) must be a state dict of named tensors"
    if not for_resume:
        return None
    if not _is_int(ckpt["step"]) or ckpt["step"] < 0:
        return f"'step' must be a whole number, not {_shown(ckpt['step'])}"
    return (_optimizer_problem(ckpt["optimizer"]) or _scaler_problem(ckpt["scaler"])
            or rng_problem(ckpt["rng"]) or _metrics_problem(ckpt["metrics"], ckpt["epoch"])
            or _partial_problem(ckpt.get("partial")))


def _optimizer_problem(opt):
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict):
        return "'optimizer' must be an optimizer state dict with a 'state' entry"
    groups = opt.get("param_groups")
    if not isinstance(groups, list) or not groups:
        return "'optimizer' has no parameter groups"
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) or \
                not all(_is_int(p) for p in group["params"]):
            return "an 'optimizer' parameter group is malformed"
        for key in ("lr", "momentum", "weight_decay"):
            if key in group and not _is_number(group[key]):
                return f"the optimizer's {key} is {_shown(group[key])}, not a finite number"
    for index, state in opt["state"].items():
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) or v is None
                                                  for v in state.values()):
            return f"the optimizer state of parameter {_shown(index)} is malformed"
    return None


def _scaler_problem(scaler):
    if not isinstance(scaler, dict):
        return "'scaler' must be a dict"
    expected = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
    if scaler and not all(k in scaler and _is_number(scaler[k]) for k in expected):
        return "'scaler' is not a gradient-scaler state"
    return None


def _metrics_problem(metrics, epoch: int):
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        return "'metrics' must be a list of dicts"
    if len(metrics) != epoch:
        return f"'metrics' holds {len(metrics)} epochs, not {epoch}"
    return None


def _partial_problem(partial):
    if partial is None or partial == {}:
        return None
    keys = ("loss_sum", "correct", "seen", "seconds")
    if not isinstance(partial, dict) or not all(_is_number(partial.get(k)) for k in keys) or \
            partial["seen"] < 0:
        return "'partial' (the sums of an unfinished epoch) is malformed"
    return None


def state_dict_problem(saved: dict, expected: dict):
    """How the saved model state differs from the network's (None if it fits exactly): missing or
    extra names, shapes, dtypes, and values that are not finite."""
    missing = [k for k in expected if k not in saved]
    if missing:
        return f"it lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    extra = [k for k in saved if k not in expected]
    if extra:
        return f"it has {extra[0]}, which this network does not" + \
            (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for name, want in expected.items():
        got = saved[name]
        if got.shape != want.shape:
            return f"{name} has shape {tuple(got.shape)}, the network needs {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"{name} is {got.dtype}, the network needs {want.dtype}"
        if got.is_floating_point() and not torch.isfinite(got).all():
            return f"{name} holds NaN or infinite values"
    return None


def optimizer_fit_problem(saved: dict, parameters) -> str:
    """How a checked optimizer state fails to fit these parameters (None if it fits)."""
    shapes = [p.shape for p in parameters]
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    if len(ids) != len(shapes) or sorted(ids) != sorted(set(ids)):
        return f"its optimizer state covers {len(ids)} parameters, the network has {len(shapes)}"
    position = {index: n for n, index in enumerate(ids)}
    for index, state in saved["state"].items():
        if index not in position:
            return f"its optimizer state names parameter {_shown(index)}, which no group holds"
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and \
                    value.shape != shapes[position[index]]:
                return (f"its optimizer {key} of parameter {position[index]} has shape "
                        f"{tuple(value.shape)}, not {tuple(shapes[position[index]])}")
            if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                    not torch.isfinite(value).all():
                return f"its optimizer {key} of parameter {position[index]} is not finite"
    return None


# --------------------------------------------------------------------------------------------
# Random states as plain types (weights_only loading admits no numpy objects)

def capture_rng_states() -> dict:
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def rng_problem(states):
    """What is wrong with saved random states (None if they can be restored)."""
    if not isinstance(states, dict) or not all(k in states for k in _RNG_KEYS) or \
            not isinstance(states["python"], dict) or not isinstance(states["numpy"], dict):
        return "'rng' must hold the python, numpy and torch generator states"
    p, n, t = states["python"], states["numpy"], states["torch"]
    if not (_is_int(p.get("version")) and isinstance(p.get("state"), list)
            and len(p["state"]) == 625 and all(_is_int(v) and 0 <= v < 2 ** 32 for v in p["state"][:624])
            and _is_int(p["state"][624]) and (p.get("gauss") is None or _is_number(p.get("gauss")))):
        return "the saved Python random state is malformed"
    keys = n.get("keys")
    if not (n.get("name") == "MT19937" and isinstance(keys, torch.Tensor) and keys.shape == (624,)
            and not keys.is_floating_point() and _is_int(n.get("pos")) and 0 <= n["pos"] <= 624
            and _is_int(n.get("has_gauss")) and _is_number(n.get("gauss"))):
        return "the saved numpy random state is malformed"
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8
            and t.shape == torch.get_rng_state().shape):
        return "the saved torch random state is malformed"
    cuda = states.get("cuda")
    if cuda is not None and not (isinstance(cuda, list)
                                 and all(isinstance(s, torch.Tensor) for s in cuda)):
        return "the saved CUDA random states are malformed"
    return None


def restore_rng_states(states: dict) -> None:
    """Put back the global generators of capture_rng_states (states checked by rng_problem)."""
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and \
            len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


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
    return accuracy if _is_number(accuracy) else None


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
