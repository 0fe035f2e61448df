"""Training and evaluation.

The training split lives once on the training device as a uint8 tensor (N, 3, 32, 32); each batch is
cropped, flipped and standardized there by ``ImageUtils.preprocess_batch``, so no Python runs per
image. The order of an epoch and its augmentation are drawn from a generator seeded by
(seed, epoch): any process can rebuild any epoch's plan, which is what makes resuming exact and lets
several processes split one epoch between them.

Checkpoint files (their format, atomic writes, checks and random states) are ``checkpoints.py``'s job.
"""
import contextlib
import math
import os
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import ImageUtils
import checkpoints
from checkpoints import (INTERRUPTED, CheckpointError, checkpoint_path, list_checkpoints,
                         read_checkpoint)
from DataReader import fingerprint
from NetWork import ResNet, depth_of
from configure import ARCHITECTURE_KEYS, RUN_DEFINING_KEYS, Config, ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps")
PAUSE_ENV = "RESNET_CIFAR_PAUSE_AT"  # "EPOCH:STEP": wait there for a signal (for tests of signals)


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
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {name}: this trainer runs on cpu, cuda, cuda:N or mps; use one "
                          f"of those or auto.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use "
                          f"--device cpu or auto.")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), numbered from 0; use --device cuda or a smaller number.")
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
    # Wrapped to 64 bits so that every seed configure.py admits (0 to 2**63 - 1) gives a generator.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2 ** 64)
    order = torch.randperm(n, generator=generator)
    offsets, flips = ImageUtils.draw_batch_crop_flip(n, generator)
    return order, offsets, flips


def batch_slices(n: int, batch_size: int, rank: int = 0, world_size: int = 1):
    """Position ranges of one process's batches. Processes take disjoint, interleaved shares of the
    permutation (``positions rank, rank + world_size, ...``); the last batch may be smaller."""
    positions = torch.arange(rank, n, world_size)
    return list(torch.split(positions, batch_size))


# --------------------------------------------------------------------------------------------
# Run descriptions

def describe(config_dict: dict) -> str:
    v, n = config_dict.get("resnet_version"), config_dict.get("resnet_size")
    try:
        return f"ResNet-{depth_of(v, n)} v{v} (resnet_size {n})"
    except TypeError:
        return f"resnet_version {v}, resnet_size {n}"


def config_differences(saved: dict, current: dict, keys) -> list:
    return [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]


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


def _pause_point():
    """(epoch, step) from the environment variable PAUSE_ENV, or None."""
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return None
    try:
        epoch, step = (int(part) for part in value.split(":"))
    except ValueError:
        raise ConfigError(f"{PAUSE_ENV}={value!r} must be EPOCH:STEP, for example 1:3.") from None
    return epoch, step


def _wait_for_signal(stop: "_StopRequests", epoch: int, step: int) -> None:
    print(f"paused before step {step} of epoch {epoch} ({PAUSE_ENV}); waiting for a signal",
          file=sys.stderr, flush=True)
    while stop.signum is None:
        time.sleep(0.01)


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
            "format": checkpoints.CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "step": step,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.config.to_dict(),
            "data": data_digest,
            "rng": checkpoints.capture_rng_states(),
            "metrics": list(self.history),
            "partial": dict(partial),
        }

    def _check_fit(self, ckpt: dict, path: str, for_resume: bool = False) -> None:
        """Refuse a checkpoint of another network, or one whose tensors do not fit this one."""
        saved_config, current = ckpt["config"], self.config.to_dict()
        diffs = config_differences(saved_config, current, ARCHITECTURE_KEYS)
        if diffs:
            saved = ", ".join(f"{k} {a}" for k, a, _ in diffs)
            now = ", ".join(f"{k} {b}" for k, _, b in diffs)
            flags = " ".join(f"--{k} {a}" for k, a, _ in diffs)
            raise CheckpointError(f"{path} holds a {describe(saved_config)} with {saved}, but this "
                                  f"run builds a {describe(current)} with {now}; pass {flags} to "
                                  f"use it.")
        problem = checkpoints.state_dict_problem(ckpt["model"], self.network.state_dict())
        if problem is None and for_resume:
            problem = checkpoints.optimizer_fit_problem(ckpt["optimizer"],
                                                        list(self.network.parameters()))
        if problem:
            raise CheckpointError(f"{path} does not fit this network: {problem}.")

    def checkpoint_file(self, epoch: int) -> str:
        """The path of model-<epoch>.ckpt in modeldir; CheckpointError if there is no such file."""
        modeldir = self.config.modeldir
        if not os.path.isdir(modeldir):
            raise CheckpointError(f"--modeldir {modeldir} does not exist, so it holds no checkpoint "
                                  f"{epoch}; check --modeldir.")
        path = checkpoint_path(modeldir, epoch)
        checkpoints.refuse_non_file(path)
        if not os.path.isfile(path):
            found = list_checkpoints(modeldir)
            have = (f"checkpoints there: {', '.join(map(str, found))}" if found
                    else "it holds no checkpoints")
            raise CheckpointError(f"no checkpoint {epoch} in {modeldir} ({have}).")
        return path

    def load(self, checkpoint) -> dict:
        """Load weights from a checkpoint number or path into the network; return the checkpoint."""
        path = checkpoint if isinstance(checkpoint, str) else self.checkpoint_file(checkpoint)
        ckpt = read_checkpoint(path)
        self._check_fit(ckpt, path)
        self.network.load_state_dict(ckpt["model"])
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
            ckpt = read_checkpoint(path, for_resume=True)
        self._check_fit(ckpt, path, for_resume=True)
        current = dict(self.config.to_dict(), data=data_digest)
        saved = dict(ckpt["config"], data=ckpt.get("data"))
        diffs = config_differences(saved, current, RUN_DEFINING_KEYS + ["data"])
        if diffs:
            what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in diffs)
            raise CheckpointError(f"cannot resume from {path}: the run differs ({what}). Use the "
                                  f"same flags and data, or another --modeldir for a new run.")
        try:
            self.network.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self._restore_scaler(ckpt["scaler"])
            checkpoints.restore_rng_states(ckpt["rng"])
        except (RuntimeError, ValueError, TypeError, KeyError) as e:  # what the checks cannot see
            raise CheckpointError(f"{path} could not be restored ({e}); resume from another "
                                  f"checkpoint with --resume N.") from None
        self.epoch = ckpt["epoch"]
        self.history = list(ckpt["metrics"])
        step = ckpt["step"]
        self.log(f"resuming from {path}: {self.epoch} epoch{'' if self.epoch == 1 else 's'} done"
                 + (f", {step} steps into epoch {self.epoch + 1}" if step else ""))
        return step, ckpt.get("partial") or None

    def _restore_scaler(self, saved: dict) -> None:
        # --amp may change on resume: a scaler only exists under fp16, so a run saved under bf16 or
        # full precision has none to give, and a scaler saved under fp16 has no use without it.
        if self.scaler.is_enabled() and saved:
            self.scaler.load_state_dict(saved)
        elif self.scaler.is_enabled():
            self.log("the checkpoint was saved without fp16, so the loss scale starts afresh.")

    def _newest_checkpoint(self):
        """(path, checkpoint) of the furthest resumable checkpoint in modeldir, or (None, None)."""
        candidates = [(e, 0, checkpoint_path(self.config.modeldir, e))
                      for e in list_checkpoints(self.config.modeldir)]
        interrupted = os.path.join(self.config.modeldir, INTERRUPTED)
        if os.path.lexists(interrupted):
            try:
                ck = read_checkpoint(interrupted, for_resume=True)
                candidates.append((ck["epoch"], ck["step"], interrupted))
            except CheckpointError as e:
                self.log(f"skipping {e}")
        for _, _, path in sorted(candidates, reverse=True):
            try:
                return path, read_checkpoint(path, for_resume=True)
            except CheckpointError as e:
                self.log(f"skipping {e}")
        if candidates or os.path.lexists(interrupted):  # starting anew would overwrite them
            names = checkpoints.run_files(self.config.modeldir)
            raise CheckpointError(f"no checkpoint in {self.config.modeldir} is loadable "
                                  f"({', '.join(names)}), so there is nothing to resume from; "
                                  f"move them away to start anew.")
        return None, None

    def _save(self, path: str, step: int = 0, partial: dict = None, data_digest: str = ""):
        checkpoints.atomic_save(self._state(step, partial or {}, data_digest), path)

    # ---------------------------------------------------------------- training

    def train(self, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray = None,
              y_valid: np.ndarray = None, resume=None, rank: int = 0, world_size: int = 1,
              overwrite: bool = False) -> list:
        """Train for config.max_epoch epochs; return the metrics of every epoch (a list of dicts).

        x_* are (N, 3072) uint8 rows, y_* (N,) int labels. ``resume`` is None, "latest" or an epoch.
        Without it, a modeldir that holds another run's checkpoints is refused, or with
        ``overwrite`` emptied of them first. The command line holds ``checkpoints.RunLock`` meanwhile.
        """
        cfg = self.config
        digest = fingerprint(x_train, y_train)
        if resume is None:
            checkpoints.check_fresh_start(cfg.modeldir, overwrite, self.log)
            start_step, partial = 0, None
        else:
            start_step, partial = self._resume(resume, digest)
        os.makedirs(cfg.modeldir, exist_ok=True)
        checkpoints.clean_stale_temporaries(cfg.modeldir)
        pause_at = _pause_point()

        images = _to_image_tensor(x_train).to(self.device)  # (N, 3, 32, 32) uint8, once
        labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(self.device)
        if self.epoch >= cfg.max_epoch:
            self.log(f"nothing to train: {self.epoch} epochs done and --max_epoch is "
                     f"{cfg.max_epoch}; raise --max_epoch to train further.")

        with _StopRequests() as stop:
            for epoch in range(self.epoch + 1, cfg.max_epoch + 1):
                metrics = self._train_epoch(epoch, images, labels, start_step, partial, stop,
                                            digest, rank, world_size, pause_at)
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
                     world_size, pause_at=None) -> dict:
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
            if pause_at == (epoch, step):
                _wait_for_signal(stop, epoch, step)
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
        # Resumed at the epoch's very end, this process trained nothing: report the epoch's rate.
        rate = (seen - seen_before) / max(elapsed, 1e-9) if seen > seen_before else \
            seen / max(seconds + elapsed, 1e-9)
        return {"epoch": epoch, "lr": lr, "train_loss": loss_sum.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1), "seconds": seconds + elapsed,
                "images_per_second": rate}

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
