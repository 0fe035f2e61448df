"""Training, evaluation and checkpoints.

The training split lives once on the training device as a uint8 tensor (N, 3, 32, 32); each batch is
cropped, flipped and standardized there by ``ImageUtils.preprocess_batch``, so no Python runs per
image. The order of an epoch and its augmentation are drawn from a generator seeded by
(seed, epoch): any process can rebuild any epoch's plan, which is what makes resuming exact and lets
several processes split one epoch between them.

A checkpoint ``<modeldir>/model-<epoch>.ckpt`` is a dict of plain types and tensors, loadable with
``torch.load(path, weights_only=True)``: ``epoch`` (epochs completed), ``step`` (steps of the next
epoch already done; 0 except in ``interrupted.ckpt``), ``model`` (state dict of the plain network),
``optimizer``, ``scaler``, ``config``, ``data`` (a digest of the training data), ``rng`` and
``metrics`` (one dict per epoch). Files are written to a temporary name, fsynced and renamed, so a
crash never leaves a half-written checkpoint under a valid name.
"""
import contextlib
import math
import os
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import ImageUtils
from DataReader import fingerprint
from NetWork import ResNet, depth_of
from configure import ARCHITECTURE_KEYS, RUN_DEFINING_KEYS, Config, ConfigError

CHECKPOINT_FORMAT = 1
INTERRUPTED = "interrupted.ckpt"
_CKPT_RE = re.compile(r"^model-(\d+)\.ckpt$")
_TMP_MARK = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unwritable or does not fit this run."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss is no longer finite)."""


class TrainingStopped(Exception):
    """A signal asked training to stop; a checkpoint has been written."""

    def __init__(self, signum: int, path: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}; progress saved to {path}")
        self.signum = signum
        self.path = path


# --------------------------------------------------------------------------------------------
# Device and schedule

def select_device(name: str = "auto") -> torch.device:
    """The one place a device is chosen: CUDA if present, else MPS, else CPU, unless named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N "
                          f"or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use "
                          f"--device cpu or auto.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name} was asked for but MPS is not available; use "
                          f"--device cpu or auto.")
    return device


def lr_at(config: Config, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: multiplied by lr_decay_factor after each decay epoch."""
    decays = sum(1 for e in config.lr_decay_epochs if epoch > e)
    return config.learning_rate * config.lr_decay_factor ** decays


def epoch_plan(n: int, epoch: int, seed: int):
    """The seeded plan of one epoch: a permutation of n images, crop offsets and flips for each
    position of that permutation. Identical in every process, whatever its rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    offsets, flips = ImageUtils.draw_batch_crop_flip(n, generator)
    return order, offsets, flips


def batch_slices(n: int, batch_size: int, rank: int = 0, world_size: int = 1):
    """Position ranges of one process's batches. Processes take disjoint, interleaved shares of the
    permutation (``positions rank, rank + world_size, ...``); the last batch may be smaller."""
    positions = torch.arange(rank, n, world_size)
    return list(torch.split(positions, batch_size))


# --------------------------------------------------------------------------------------------
# Checkpoint files

def checkpoint_path(modeldir: str, epoch: int) -> str:
    return os.path.join(modeldir, f"model-{epoch}.ckpt")


def list_checkpoints(modeldir: str):
    """Epoch numbers of the model-<epoch>.ckpt files in modeldir, ascending."""
    if not os.path.isdir(modeldir):
        return []
    found = (_CKPT_RE.match(name) for name in os.listdir(modeldir))
    return sorted(int(m.group(1)) for m in found if m)


def clean_stale_temporaries(modeldir: str) -> None:
    """Remove temporary files that a killed process left behind."""
    if os.path.isdir(modeldir):
        for name in os.listdir(modeldir):
            if _TMP_MARK in name and name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(modeldir, name))


def atomic_save(obj, path: str, writer=torch.save) -> None:
    """Write obj to path so that path is either the old file or the whole new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}{_TMP_MARK}{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            writer(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise CheckpointError(f"could not write {path} ({e.strerror or e}); free some space or "
                                  f"choose another --modeldir. Earlier checkpoints are "
                                  f"intact.") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with ``weights_only=True``; CheckpointError if it is not a usable one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except Exception as e:  # torch raises many types for damaged or hostile files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a loadable checkpoint ({first_line[:160]}); it may be "
                              f"truncated or not a checkpoint at all.") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "epoch"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (it lacks model, config "
                              f"or epoch).")
    return ckpt


def describe(config_dict: dict) -> str:
    v, n = config_dict.get("resnet_version"), config_dict.get("resnet_size")
    try:
        return f"ResNet-{depth_of(v, n)} v{v} (resnet_size {n})"
    except TypeError:
        return f"resnet_version {v}, resnet_size {n}"


def config_differences(saved: dict, current: dict, keys) -> list:
    return [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]


# --------------------------------------------------------------------------------------------
# RNG states as plain types (weights_only loading admits no numpy objects)

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


def restore_rng_states(states: dict) -> None:
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
# Signals

class _StopRequests:
    """While active, the first SIGINT/SIGTERM only sets ``signum`` so the loop can save and stop;
    a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a "
              f"checkpoint (press Ctrl-C again to quit at once).", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


# --------------------------------------------------------------------------------------------
# The model

def _to_image_tensor(x: np.ndarray) -> torch.Tensor:
    """(N, 3072) rows -> (N, 3, 32, 32) tensor of the same dtype, no copy."""
    return torch.from_numpy(np.ascontiguousarray(x)).view(-1, 3, ImageUtils.SIZE, ImageUtils.SIZE)


class MyModel:
    """A ResNet with its optimizer, trained and evaluated on one device.

    ``train`` fits it; ``test_or_validate`` scores saved checkpoints; ``predict_prob`` gives class
    probabilities of the network as it is (load a checkpoint first with ``load``).
    """

    def __init__(self, config: Config, log=print):
        self.config = config
        self.log = log
        self.device = select_device(config.device)
        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        self.network = ResNet(config.resnet_version, config.resnet_size, config.num_classes,
                              config.first_num_filters)
        self.channels_last = config.channels_last != "off"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.network.to(self.device, memory_format=self.memory_format)
        self.amp_dtype = self._amp_dtype()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=config.learning_rate,
                                         momentum=config.momentum, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.forward_net = torch.compile(self.network) if config.compile else self.network
        self.history = []
        self.epoch = 0

    def _amp_dtype(self):
        """None (full precision), torch.bfloat16 or torch.float16."""
        amp = self.config.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _images(self, x: torch.Tensor, training: bool, offsets=None, flips=None) -> torch.Tensor:
        x = ImageUtils.preprocess_batch(x, training, offsets, flips, self.config.pad_mode)
        return x.contiguous(memory_format=self.memory_format)

    # ---------------------------------------------------------------- checkpoints

    def _state(self, step: int, partial: dict, data_digest: str) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "step": step,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.config.to_dict(),
            "data": data_digest,
            "rng": capture_rng_states(),
            "metrics": list(self.history),
            "partial": dict(partial),
        }

    def _check_architecture(self, ckpt: dict, path: str) -> None:
        diffs = config_differences(ckpt["config"], self.config.to_dict(), ARCHITECTURE_KEYS)
        if diffs:
            flags = " ".join(f"--{k} {saved}" for k, saved, _ in diffs)
            raise CheckpointError(f"{path} holds a {describe(ckpt['config'])} but this run builds a "
                                  f"{describe(self.config.to_dict())}; pass {flags} to use it.")

    def checkpoint_file(self, epoch: int) -> str:
        path = checkpoint_path(self.config.modeldir, epoch)
        if not os.path.isfile(path):
            found = list_checkpoints(self.config.modeldir)
            have = (f"checkpoints there: {', '.join(map(str, found))}" if found
                    else "it holds no checkpoints")
            raise CheckpointError(f"no checkpoint {epoch} in {self.config.modeldir} ({have}).")
        return path

    def load(self, checkpoint) -> dict:
        """Load weights from a checkpoint number or path into the network; return the checkpoint."""
        path = checkpoint if isinstance(checkpoint, str) else self.checkpoint_file(checkpoint)
        ckpt = load_checkpoint(path)
        self._check_architecture(ckpt, path)
        try:
            self.network.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this network ({str(e).splitlines()[0]}).") \
                from None
        return ckpt

    def _resume(self, resume, data_digest: str):
        """Restore everything from the requested checkpoint; return (step, partial)."""
        if resume == "latest":
            path, ckpt = self._newest_checkpoint()
            if ckpt is None:
                self.log(f"no checkpoint in {self.config.modeldir} to resume from; starting anew.")
                return 0, None
        else:
            path = self.checkpoint_file(int(resume))
            ckpt = load_checkpoint(path)
        self._check_architecture(ckpt, path)
        current = dict(self.config.to_dict(), data=data_digest)
        saved = dict(ckpt["config"], data=ckpt.get("data"))
        diffs = config_differences(saved, current, RUN_DEFINING_KEYS + ["data"])
        if diffs:
            what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in diffs)
            raise CheckpointError(f"cannot resume from {path}: the run differs ({what}). Use the "
                                  f"same flags and data, or another --modeldir for a new run.")
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_states(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["metrics"])
        step = int(ckpt.get("step", 0))
        self.log(f"resuming from {path}: {self.epoch} epoch{'' if self.epoch == 1 else 's'} done"
                 + (f", {step} steps into epoch {self.epoch + 1}" if step else ""))
        return step, ckpt.get("partial") or None

    def _newest_checkpoint(self):
        """(path, checkpoint) of the furthest valid checkpoint in modeldir, or (None, None)."""
        candidates = [(e, 0, checkpoint_path(self.config.modeldir, e))
                      for e in list_checkpoints(self.config.modeldir)]
        interrupted = os.path.join(self.config.modeldir, INTERRUPTED)
        if os.path.isfile(interrupted):
            try:
                ck = load_checkpoint(interrupted)
                candidates.append((int(ck["epoch"]), int(ck.get("step", 0)), interrupted))
            except CheckpointError as e:
                self.log(f"skipping {interrupted}: {e}")
        for _, _, path in sorted(candidates, reverse=True):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as e:
                self.log(f"skipping {path}: {e}")
        if candidates:  # starting anew would overwrite them; let the user decide
            raise CheckpointError(f"no checkpoint in {self.config.modeldir} is loadable, so there "
                                  f"is nothing to resume from; move them away to start anew.")
        return None, None

    def _save(self, path: str, step: int = 0, partial: dict = None, data_digest: str = ""):
        atomic_save(self._state(step, partial or {}, data_digest), path)

    # ---------------------------------------------------------------- training

    def train(self, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray = None,
              y_valid: np.ndarray = None, resume=None, rank: int = 0, world_size: int = 1) -> list:
        """Train for config.max_epoch epochs; return the metrics of every epoch (a list of dicts).

        x_* are (N, 3072) uint8 rows, y_* (N,) int labels. ``resume`` is None, "latest" or an epoch.
        """
        cfg = self.config
        digest = fingerprint(x_train, y_train)
        os.makedirs(cfg.modeldir, exist_ok=True)
        clean_stale_temporaries(cfg.modeldir)
        start_step, partial = (0, None) if resume is None else self._resume(resume, digest)

        images = _to_image_tensor(x_train).to(self.device)  # (N, 3, 32, 32) uint8, once
        labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(self.device)
        if self.epoch >= cfg.max_epoch:
            self.log(f"nothing to train: {self.epoch} epochs done and --max_epoch is "
                     f"{cfg.max_epoch}; raise --max_epoch to train further.")

        with _StopRequests() as stop:
            for epoch in range(self.epoch + 1, cfg.max_epoch + 1):
                metrics = self._train_epoch(epoch, images, labels, start_step, partial, stop,
                                            digest, rank, world_size)
                start_step, partial = 0, None
                if x_valid is not None and len(x_valid):
                    metrics["valid_acc"] = self.accuracy(x_valid, y_valid)
                self.epoch = epoch
                self.history.append(metrics)
                self._print_epoch(metrics)
                saved = None
                if epoch % cfg.save_interval == 0 or epoch == cfg.max_epoch:
                    saved = checkpoint_path(cfg.modeldir, epoch)
                    self._save(saved, data_digest=digest)
                    with contextlib.suppress(FileNotFoundError):  # superseded by this one
                        os.remove(os.path.join(cfg.modeldir, INTERRUPTED))
                if stop.signum is not None and epoch < cfg.max_epoch:  # came during validation
                    if saved is None:
                        saved = os.path.join(cfg.modeldir, INTERRUPTED)
                        self._save(saved, data_digest=digest)
                    raise TrainingStopped(stop.signum, saved)
        return self.history

    def _train_epoch(self, epoch, images, labels, start_step, partial, stop, digest, rank,
                     world_size) -> dict:
        cfg = self.config
        n = len(labels)
        lr = lr_at(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        order, offsets, flips = epoch_plan(n, epoch, cfg.seed)
        order = order.to(self.device, non_blocking=True)
        offsets = offsets.to(self.device, non_blocking=True)
        flips = flips.to(self.device, non_blocking=True)
        slices = [p.to(self.device, non_blocking=True)
                  for p in batch_slices(n, cfg.batch_size, rank, world_size)]

        partial = partial or {}
        loss_sum = torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64,
                                device=self.device)
        correct = torch.tensor(partial.get("correct", 0), dtype=torch.int64, device=self.device)
        seen = seen_before = int(partial.get("seen", 0))
        seconds = float(partial.get("seconds", 0.0))
        self.network.train()
        start = time.perf_counter()
        bar = tqdm(total=len(slices), initial=start_step, desc=f"epoch {epoch}/{cfg.max_epoch}",
                   leave=False, disable=None, unit="batch")
        for step in range(start_step, len(slices)):
            positions = slices[step]
            index = order[positions]
            x = self._images(images[index], True, offsets[positions], flips[positions])
            y = labels[index]

            with self._autocast():
                logits = self.forward_net(x)
                loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            bar.update(1)
            if step % 50 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", lr=f"{lr:g}")
            if stop.signum is not None:
                bar.close()
                self._check_finite(loss_sum, epoch)
                part = {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen,
                        "seconds": seconds + time.perf_counter() - start}
                path = os.path.join(cfg.modeldir, INTERRUPTED)
                self._save(path, step=step + 1, partial=part, data_digest=digest)
                raise TrainingStopped(stop.signum, path)
        bar.close()
        self._check_finite(loss_sum, epoch)
        elapsed = time.perf_counter() - start
        return {"epoch": epoch, "lr": lr, "train_loss": loss_sum.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1), "seconds": seconds + elapsed,
                "images_per_second": (seen - seen_before) / max(elapsed, 1e-9)}

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int) -> None:
        if not math.isfinite(loss_sum.item()):
            last = list_checkpoints(self.config.modeldir)
            kept = f"the last good checkpoint (model-{last[-1]}.ckpt) is kept" if last else \
                "no checkpoint was written"
            raise TrainingError(f"the training loss became NaN or infinite in epoch {epoch}; "
                                f"{kept}. Lower --learning_rate or check the data.")

    def _print_epoch(self, m: dict) -> None:
        valid = f"  valid {100 * m['valid_acc']:6.2f}%" if "valid_acc" in m else ""
        self.log(f"epoch {m['epoch']:>3}/{self.config.max_epoch}  lr {m['lr']:.4g}  loss "
                 f"{m['train_loss']:.4f}  train {100 * m['train_acc']:6.2f}%{valid}  "
                 f"{m['seconds']:.1f} s  {m['images_per_second']:.0f} img/s")

    # ---------------------------------------------------------------- evaluation

    @torch.inference_mode()
    def _logits(self, x: np.ndarray, desc: str = "evaluating") -> torch.Tensor:
        """(N, 3072) rows, uint8 or float in [0, 255] -> (N, num_classes) float32 logits on device."""
        self.network.eval()
        images = _to_image_tensor(x)
        if self.device.type == "cuda":
            images = images.pin_memory()
        outputs = []
        bs = self.config.eval_batch_size
        for i in tqdm(range(0, len(images), bs), desc=desc, leave=False, disable=None,
                      unit="batch"):
            batch = images[i:i + bs].to(self.device, non_blocking=True)
            with self._autocast():
                outputs.append(self.forward_net(self._images(batch, False)).float())
        return torch.cat(outputs) if outputs else torch.empty(0, self.config.num_classes)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        predictions = self._logits(x).argmax(1).cpu()
        return (predictions == torch.as_tensor(np.asarray(y, dtype=np.int64))).float().mean().item()

    def test_or_validate(self, x: np.ndarray, y: np.ndarray, checkpoint_num_list,
                         set_name: str = "test") -> dict:
        """Accuracy of each listed checkpoint on (x, y): {epoch: accuracy in [0, 1]}."""
        for num in checkpoint_num_list:  # check every number before spending time on any
            self.checkpoint_file(num)
        results = {}
        for num in checkpoint_num_list:
            self.load(num)
            results[num] = self.accuracy(x, y)
            self.log(f"model-{num}.ckpt  {set_name} accuracy {100 * results[num]:.2f}%  "
                     f"({len(y)} images)")
        return results

    evaluate = test_or_validate  # the course skeleton's name

    def predict_prob(self, x: np.ndarray) -> np.ndarray:
        """(N, 3072) rows in [0, 255] -> (N, num_classes) float32 class probabilities."""
        return torch.softmax(self._logits(x, "predicting"), dim=1).cpu().numpy().astype(np.float32)
