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
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import ImageUtils
from trainer.training import budget
from trainer.run import checkpoints
from trainer.run import records
from trainer.reports import reports
from trainer.parallel import distributed
from trainer.training import schedules
from trainer.training import stop_requests
from trainer.training.ema import WeightAverage
from trainer.training.stop_requests import PAUSE_ENV  # noqa: F401  (the tests' pause hook, also named here)
from trainer.run.checkpoints import (INTERRUPTED, CheckpointError, checkpoint_path, list_checkpoints,
                         read_checkpoint)
from trainer.training.batches import batch_slices, epoch_plan, global_batch_sizes
from DataReader import fingerprint
from NetWork import build_network, depth_of
from configure import (ARCHITECTURE_KEYS, RECIPES, RUN_DEFINING_KEYS, Config, ConfigError, applies,
                       flag)

DEVICE_TYPES = ("cpu", "cuda", "mps")


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


def parameter_groups(network: torch.nn.Module, weight_decay: float, no_decay_bn_bias: bool):
    """The optimizer's parameter groups: one with weight decay for everything, or, with
    no_decay_bn_bias, a second one without it for the batch-norm weights and every bias."""
    if not no_decay_bn_bias:
        return [{"params": list(network.parameters()), "weight_decay": weight_decay}]
    exempt = set()
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._NormBase):
            exempt.update(id(p) for p in module.parameters(recurse=False))
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.nn.Parameter):
            exempt.add(id(module.bias))
    params = list(network.parameters())
    return [{"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------
# Run descriptions

def describe(config_dict: dict) -> str:
    network = config_dict.get("network", "resnet")
    if network != "resnet":
        return {"resnet18": "ResNet-18 (for 32x32 images)"}.get(network, str(network)) + \
            (" with batch norm" if config_dict.get("batch_norm") and network != "resnet18" else "")
    v, n = config_dict.get("resnet_version"), config_dict.get("resnet_size")
    try:
        return f"ResNet-{depth_of(v, n)} v{v} (resnet_size {n})"
    except TypeError:
        return f"resnet_version {v}, resnet_size {n}"


def config_differences(saved: dict, current: dict, keys) -> list:
    """[(key, saved value, current value)] of the keys that differ; a key that does not shape the
    network both name (downsample of simple_nn, say) is not compared."""
    network = saved.get("network")
    same_network = network == current.get("network")
    return [(k, saved.get(k), current.get(k)) for k in keys
            if saved.get(k) != current.get(k) and not (same_network and not applies(k, network))]


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

    def __init__(self, config: Config, log=tqdm.write, context=distributed.SINGLE):
        self.config = config
        self.dist = context  # rank and world size under torchrun
        self.log = log if context.is_main else (lambda *a: None)
        self.device = select_device(config.device)
        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        self.network = build_network(config.network, config.resnet_version, config.resnet_size,
                                     config.num_classes, config.first_num_filters,
                                     batch_norm=config.batch_norm, downsample=config.downsample,
                                     shortcut=config.shortcut, activation=config.activation)
        if config.sync_bn and context.distributed:
            self.network = distributed.convert_sync_batchnorm(self.network, self.device)
        self.channels_last = config.channels_last != "off"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.network.to(self.device, memory_format=self.memory_format)
        self.amp_dtype = self._amp_dtype()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.network, config.weight_decay, config.no_decay_bn_bias),
            lr=config.learning_rate, momentum=config.momentum, nesterov=config.nesterov)
        self.ema = WeightAverage(self.network, config.ema) if config.ema else None
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.forward_net = torch.compile(self.network) if config.compile else self.network
        self.train_net = None  # forward_net, wrapped in DistributedDataParallel under torchrun
        self.history = []
        self.epoch = 0
        self.mean_std = None  # --normalize dataset: the training split's channel (mean, std)
        self.epoch_callbacks = []  # each called with an epoch's metrics once it is recorded
        self.started = time.monotonic()  # when the run began, for --budget_minutes
        self.epochs_trained = 0  # by the last call of train in this process

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
        x = ImageUtils.preprocess_batch(x, training, offsets, flips, self.config.pad_mode,
                                        mean_std=self.mean_std)
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
            "normalization": None if self.mean_std is None else
            {"mean": self.mean_std[0].cpu(), "std": self.mean_std[1].cpu()},
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def _check_fit(self, ckpt: dict, path: str) -> None:
        """Refuse a checkpoint of another network, or one whose tensors do not fit this one."""
        saved_config, current = ckpt["config"], self.config.to_dict()
        diffs = config_differences(saved_config, current, ARCHITECTURE_KEYS)
        if diffs:
            saved = ", ".join(f"{k} {a}" for k, a, _ in diffs)
            now = ", ".join(f"{k} {b}" for k, _, b in diffs)
            raise CheckpointError(f"{path} holds a {describe(saved_config)} with {saved}, but this "
                                  f"run builds a {describe(current)} with {now}; pass "
                                  f"{self._flags_for(saved_config, diffs)} to use it.")
        problem = checkpoints.state_dict_problem(ckpt["model"], self.network.state_dict())
        if problem is None and ckpt.get("ema") is not None:
            problem = checkpoints.state_dict_problem(ckpt["ema"], self.network.state_dict())
            problem = problem and f"its weight average: {problem}"
        if problem:
            raise CheckpointError(f"{path} does not fit this network: {problem}.")

    def _flags_for(self, saved_config: dict, diffs) -> str:
        """The flags that give back a checkpoint's values of the differing keys: its --recipe where
        the recipe explains them (one set here, or set by the recipe it was trained with), and the
        others one by one."""
        recipe = saved_config.get("recipe", "course")
        if recipe == self.config.recipe:
            return " ".join(flag(k, a) for k, a, _ in diffs)
        own = RECIPES.get(recipe, {})
        rest = [flag(k, a) for k, a, _ in diffs
                if not (self.config.from_recipe(k) or (k in own and own[k] == a))]
        return " ".join([f"--recipe {recipe}"] + rest)

    def checkpoint_file(self, epoch) -> str:
        return checkpoints.find_checkpoint(self.config.modeldir, epoch)

    def load(self, checkpoint) -> dict:
        """Load weights from a checkpoint (number, "best" or path) into the network; return it."""
        path = checkpoint if isinstance(checkpoint, str) and checkpoint != "best" else \
            self.checkpoint_file(checkpoint)
        ckpt = read_checkpoint(path)
        self._check_fit(ckpt, path)
        # A run with --ema is judged by its weight average, so test and predict use that.
        weights = ckpt["model"] if ckpt.get("ema") is None else ckpt["ema"]
        self.network.load_state_dict(weights)
        if self.ema is not None:  # what evaluation runs on, built with --ema
            self.ema.load_state_dict(weights)
        self._restore_normalization(ckpt, path)
        return ckpt

    def _restore_normalization(self, ckpt: dict, path: str) -> None:
        saved = ckpt.get("normalization")
        if self.config.normalize != "dataset":
            self.mean_std = None
        elif saved is None:
            raise CheckpointError(f"{path} holds no channel statistics, so it cannot be used with "
                                  f"--normalize dataset.")
        else:
            self.mean_std = (saved["mean"].to(self.device), saved["std"].to(self.device))

    def _resume_source(self, resume):
        """(path, checkpoint) to resume from; CheckpointError when there is none: a resume that
        finds nothing refuses rather than start over in a folder that may hold a model-best."""
        modeldir = self.config.modeldir
        if resume != "latest":
            path = self.checkpoint_file(int(resume))
            return path, read_checkpoint(path, for_resume=True)
        path, ckpt = checkpoints.newest_resumable(modeldir, self.log)
        if ckpt is None:
            kept = f" (only {checkpoints.BEST}, which is kept)" \
                if os.path.lexists(checkpoint_path(modeldir, "best")) else ""
            anew = "pass --overwrite instead to start anew over its files, or choose another " \
                   "--modeldir" if kept or checkpoints.run_records(modeldir) else \
                "drop --resume to start a new run"
            raise CheckpointError(f"--resume: {modeldir} holds no numbered or interrupted "
                                  f"checkpoint{kept}, so there is nothing to resume; {anew}.")
        return path, ckpt

    def _later_files(self, resume, path: str, ckpt: dict, overwrite: bool) -> list:
        """The checkpoints past the one resumed from; refused unless --overwrite allows dropping
        them (and nothing to train drops nothing)."""
        epoch, modeldir = ckpt["epoch"], self.config.modeldir
        if resume == "latest":  # whatever lies further on could not be loaded (and was named)
            return []
        later = checkpoints.later_files(modeldir, epoch, ckpt["step"], path)
        if later and not overwrite and epoch < self.config.max_epoch:
            raise CheckpointError(f"--resume {resume} would train again from epoch {epoch} and "
                                  f"replace what {modeldir} holds past it ({', '.join(later)}); "
                                  f"pass --overwrite as well to drop those and retrain from epoch "
                                  f"{epoch}, or --resume alone to continue from the newest.")
        return later

    def _check_same_run(self, ckpt: dict, path: str, data_digest: str = None) -> None:
        """Refuse to resume a run defined otherwise (data_digest None: the data is not known yet)."""
        self._check_fit(ckpt, path)
        saved_config = ckpt["config"]
        budget = saved_config.get("budget_minutes") or 0.0
        if budget != self.config.budget_minutes:
            hint = f"pass --budget_minutes {budget:g} to continue its plan" if budget else \
                "drop --budget_minutes (give --max_epoch to train it further)"
            raise CheckpointError(f"cannot resume from {path}: it was "
                                  + (f"planned for --budget_minutes {budget:g} "
                                     f"({saved_config.get('max_epoch')} epochs)" if budget else
                                     "not planned by a time budget")
                                  + f"; {hint}.")
        if budget:  # the budget was planned when the run began; resuming keeps that plan
            self.config.max_epoch = saved_config.get("max_epoch", self.config.max_epoch)
            self.config.lr_decay_epochs = tuple(saved_config.get("lr_decay_epochs", ()))
            self.config.warmup_epochs = saved_config.get("warmup_epochs", self.config.warmup_epochs)
        keys = RUN_DEFINING_KEYS + ([] if data_digest is None else ["data"])
        current = dict(self.config.to_dict(), data=data_digest)
        saved = dict(ckpt["config"], data=ckpt.get("data"))
        diffs = config_differences(saved, current, keys)
        if diffs:
            what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in diffs)
            recipe = saved_config.get("recipe", "course")
            hint = f" (it was trained with --recipe {recipe})" \
                if recipe != self.config.recipe else ""
            raise CheckpointError(f"cannot resume from {path}: the run differs ({what}). Use the "
                                  f"same flags{hint} and data, or another --modeldir for a new "
                                  f"run.")
        if saved_config.get("lr_schedule", "step") != "step" and \
                saved_config.get("max_epoch") != self.config.max_epoch:
            raise CheckpointError(f"cannot resume from {path} with --max_epoch "
                                  f"{self.config.max_epoch}: its {saved_config['lr_schedule']} "
                                  f"schedule spans the run's {saved_config.get('max_epoch')} "
                                  f"epochs; pass --max_epoch {saved_config.get('max_epoch')}.")
        # The optimizer state, once the flags (which shape its parameter groups) agree.
        problem = checkpoints.optimizer_fit_problem(
            ckpt["optimizer"], [p for g in self.optimizer.param_groups for p in g["params"]])
        if problem:
            raise CheckpointError(f"{path} does not fit this network: {problem}.")

    def check_resumable(self, resume, overwrite: bool = False) -> None:
        """What can be refused about resuming before any data is read."""
        path, ckpt = self._resume_source(resume)
        self._check_same_run(ckpt, path)
        self._later_files(resume, path, ckpt, overwrite)

    def _resume(self, resume, data_digest: str, overwrite: bool = False):
        """Restore everything from the requested checkpoint; return (step, partial, the names of
        the later checkpoints that retraining from it drops)."""
        path, ckpt = self._resume_source(resume)
        self._check_same_run(ckpt, path, data_digest)
        later = self._later_files(resume, path, ckpt, overwrite)
        try:
            self.network.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self._restore_scaler(ckpt["scaler"])
            if self.ema is not None:
                if ckpt.get("ema") is None:
                    raise CheckpointError(f"{path} holds no weight average, which --ema "
                                          f"{self.config.ema} needs; resume without --ema.")
                self.ema.load_state_dict(ckpt["ema"])
            checkpoints.restore_rng_states(ckpt["rng"])
            self._restore_normalization(ckpt, path)
        except (RuntimeError, ValueError, TypeError, KeyError) as e:  # what the checks cannot see
            raise CheckpointError(f"{path} could not be restored ({e}); resume from another "
                                  f"checkpoint with --resume N.") from None
        self.epoch = ckpt["epoch"]
        self.history = list(ckpt["metrics"])
        step = ckpt["step"]
        self.log(f"resuming from {path}: {self.epoch} epoch{'' if self.epoch == 1 else 's'} done"
                 + (f", {step} steps into epoch {self.epoch + 1}" if step else ""))
        return step, ckpt.get("partial") or None, later

    def _restore_scaler(self, saved: dict) -> None:
        # --amp may change on resume: a scaler only exists under fp16, so a run saved under bf16 or
        # full precision has none to give, and a scaler saved under fp16 has no use without it.
        if self.scaler.is_enabled() and saved:
            self.scaler.load_state_dict(saved)
        elif self.scaler.is_enabled():
            self.log("the checkpoint was saved without fp16, so the loss scale starts afresh.")

    def _save(self, path: str, step: int = 0, partial: dict = None, data_digest: str = ""):
        if self.dist.is_main:  # under torchrun the ranks hold the same weights: one writes
            checkpoints.save(self._state(step, partial or {}, data_digest), path)

    # ---------------------------------------------------------------- training

    def train(self, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray = None,
              y_valid: np.ndarray = None, resume=None, overwrite: bool = False) -> list:
        """Train for config.max_epoch epochs; return the metrics of every epoch (a list of dicts).

        x_* are (N, 3072) uint8 rows, y_* (N,) int labels. ``resume`` is None, "latest" or an epoch.
        Without it, a modeldir that holds another run's checkpoints is refused, or with
        ``overwrite`` emptied of them first. The command line holds ``checkpoints.RunLock`` meanwhile.
        Under torchrun every rank calls this with the same data; rank 0 alone writes files.
        """
        cfg, main = self.config, self.dist.is_main
        digest = fingerprint(x_train, y_train)
        self.epochs_trained, later, best_kept = 0, [], None
        # Under torchrun a refusal on any rank (rank 0 alone checks and prepares the folder) stops
        # every rank, and rank 0 says it.
        with distributed.all_or_none(CheckpointError, ConfigError):
            if resume is None:
                if main:
                    checkpoints.check_fresh_start(cfg.modeldir, overwrite, self.log)
                start_step, partial = 0, None
            else:
                start_step, partial, later = self._resume(resume, digest, overwrite)
            if self.epoch >= cfg.max_epoch:  # nothing is written when nothing is trained
                self.log(f"nothing to train: {self.epoch} epochs done and --max_epoch is "
                         f"{cfg.max_epoch}; raise --max_epoch to train further.")
                return self.history
            if main:
                best_kept = self._prepare_folder(later)
            else:
                partial = None  # the sums of an interrupted epoch are rank 0's to carry
        if cfg.normalize == "dataset" and self.mean_std is None:  # once, from the training split
            mean, std = ImageUtils.channel_stats(x_train)
            self.mean_std = (torch.from_numpy(mean).to(self.device),
                             torch.from_numpy(std).to(self.device))
        pause_at = stop_requests.pause_point(self.dist.rank)
        if self.train_net is None:
            self.train_net = self._training_network()

        images = _to_image_tensor(x_train).to(self.device)  # (N, 3, 32, 32) uint8, once
        labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(self.device)
        if cfg.budget_minutes and self.epoch == 0 and start_step == 0:
            for key, value in budget.fit(self, images, labels, x_valid).items():
                setattr(cfg, key, value)  # the plan: the records below hold what runs
        metrics_file = records.MetricsFile(cfg.modeldir) if main else None
        with distributed.all_or_none(CheckpointError):
            if main:
                records.write_config(cfg.modeldir, cfg.to_dict(), self.device, {
                    "dataset": getattr(cfg, "dataset", "cifar10"), "data_dir": cfg.data_dir,
                    "train_images": len(x_train),
                    "valid_images": 0 if x_valid is None else len(x_valid),
                    "processes": self.dist.world_size})
                metrics_file.start(self.history)

        with stop_requests.StopRequests(self.dist.distributed) as stop:
            for epoch in range(self.epoch + 1, cfg.max_epoch + 1):
                metrics = self._train_epoch(epoch, images, labels, start_step, partial, stop,
                                            digest, pause_at)
                start_step, partial = 0, None
                if x_valid is not None and len(x_valid):
                    metrics["valid_acc"], metrics["valid_loss"] = self.validate(x_valid, y_valid)
                best_before = max([m["valid_acc"] for m in self.history if "valid_acc" in m]
                                  + ([] if best_kept is None else [best_kept]), default=None)
                self.epoch = epoch
                self.epochs_trained += 1
                self.history.append(metrics)
                self._print_epoch(metrics)
                if main:
                    metrics_file.append(metrics)
                    for callback in self.epoch_callbacks:
                        callback(metrics)
                if "valid_acc" in metrics and (best_before is None
                                               or metrics["valid_acc"] > best_before):
                    self._save(checkpoint_path(cfg.modeldir, "best"), data_digest=digest)
                saved = None
                if epoch % cfg.save_interval == 0 or epoch == cfg.max_epoch:
                    saved = checkpoint_path(cfg.modeldir, epoch)
                    self._save(saved, data_digest=digest)
                    if main:
                        with contextlib.suppress(FileNotFoundError):  # superseded by this one
                            os.remove(os.path.join(cfg.modeldir, INTERRUPTED))
                signum = self._agreed_stop(stop)
                if signum and epoch < cfg.max_epoch:  # came during validation
                    if saved is None:
                        saved = os.path.join(cfg.modeldir, INTERRUPTED)
                        self._save(saved, data_digest=digest)
                    distributed.barrier()  # no rank leaves before the checkpoint is written
                    raise TrainingStopped(signum, saved)
        if not distributed.parameters_agree(self.network):
            raise TrainingError("the processes ended training with different weights, so the "
                                "run is not data-parallel; please report this.")
        distributed.barrier()
        return self.history

    def _prepare_folder(self, later: list):
        """Rank 0, before training: clear a killed run's temporaries, drop the checkpoints a
        retrace replaces (``later``, with --overwrite); return the validation accuracy of a
        model-best.ckpt to keep unless beaten (one of a later epoch, kept from before a kill)."""
        modeldir = self.config.modeldir
        os.makedirs(modeldir, exist_ok=True)
        checkpoints.clean_stale_temporaries(modeldir)
        if later:  # --resume N --overwrite: the run is trained again from epoch N
            for name in later:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(modeldir, name))
            checkpoints.drop_best_past(modeldir, self.epoch, self.log)
            self.log(f"--overwrite: dropped {', '.join(later)} to train again from epoch "
                     f"{self.epoch}.")
        return checkpoints.best_accuracy(modeldir, self.log)

    def _training_network(self):
        """What the training steps run: the (compiled) network, in DistributedDataParallel under
        torchrun, so that the gradients are averaged over the ranks."""
        if not self.dist.distributed:
            return self.forward_net
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)
        return torch.compile(wrapped) if self.config.compile else wrapped

    def _agreed_stop(self, stop) -> int:
        """The signal number of a stop any rank was asked for (0 if none), the same on all ranks."""
        if not self.dist.distributed:
            return stop.signum or 0
        return distributed.agree_max(stop.signum or 0, self._collective_device())

    def _collective_device(self):
        return self.device if self.dist.backend == "nccl" else "cpu"

    def _train_epoch(self, epoch, images, labels, start_step, partial, stop, digest,
                     pause_at=None) -> dict:
        cfg, world = self.config, self.dist.world_size
        n = len(labels)
        order, offsets, flips = epoch_plan(n, epoch, cfg.seed)
        order = order.to(self.device, non_blocking=True)
        offsets = offsets.to(self.device, non_blocking=True)
        flips = flips.to(self.device, non_blocking=True)
        slices = [p.to(self.device, non_blocking=True)
                  for p in batch_slices(n, cfg.batch_size, self.dist.rank, world)]
        global_sizes = global_batch_sizes(n, cfg.batch_size, world)

        partial = partial or {}
        loss_sum = torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64,
                                device=self.device)
        correct = torch.tensor(partial.get("correct", 0), dtype=torch.int64, device=self.device)
        seen = seen_before = int(partial.get("seen", 0))
        seconds = float(partial.get("seconds", 0.0))
        self.network.train()
        start = time.perf_counter()
        bar = tqdm(total=len(slices), initial=start_step, desc=f"epoch {epoch}/{cfg.max_epoch}",
                   leave=False, disable=self._bars_off(), unit="batch")
        lr = None
        for step in range(start_step, len(slices)):
            if pause_at == (epoch, step):
                stop_requests.wait_for_signal(stop, epoch, step)
            lr = schedules.lr_at_step(cfg, epoch, step, len(slices))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            positions = slices[step]
            index = order[positions]
            x = self._images(images[index], True, offsets[positions], flips[positions])
            y = labels[index]

            try:
                with self._autocast():
                    logits = self.train_net(x)
                    objective, loss = self.objective(logits, y)
                if world > 1:  # DDP averages over ranks: weigh each rank's mean by its share
                    objective = objective * (len(y) * world / global_sizes[step])
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(objective).backward()  # DDP sums the gradients over the ranks
            except RuntimeError as e:
                if world > 1 and distributed.is_lost_contact(e):
                    raise distributed.lost_contact(e) from None
                raise
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.network)

            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            bar.update(1)
            if step % 50 == 0 and not bar.disable:
                rate = (seen - seen_before) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                acc=f"{100 * correct.item() / seen:.1f}%", img_s=f"{rate:.0f}")
            signum = self._agreed_stop(stop)
            if signum:
                bar.close()
                loss_total, correct_total, seen_total = self._epoch_totals(loss_sum, correct, seen)
                self._check_finite(loss_total, epoch)
                part = {"loss_sum": loss_total, "correct": correct_total, "seen": seen_total,
                        "seconds": seconds + time.perf_counter() - start}
                path = os.path.join(cfg.modeldir, INTERRUPTED)
                self._save(path, step=step + 1, partial=part, data_digest=digest)
                distributed.barrier()  # no rank leaves before the checkpoint is written
                raise TrainingStopped(signum, path)
        bar.close()
        distributed.broadcast_buffers(self.network)  # rank 0's running statistics, everywhere
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.network)
        loss_total, correct_total, seen = self._epoch_totals(loss_sum, correct, seen)
        self._check_finite(loss_total, epoch)
        elapsed = time.perf_counter() - start
        # Resumed at the epoch's very end, this process trained nothing: report the epoch's rate.
        rate = (seen - seen_before) / max(elapsed, 1e-9) if seen > seen_before else \
            seen / max(seconds + elapsed, 1e-9)
        if lr is None:  # resumed at the epoch's very end
            lr = schedules.lr_at_step(cfg, epoch, len(slices) - 1, len(slices))
        return {"epoch": epoch, "lr": lr, "train_loss": loss_total / max(seen, 1),
                "train_acc": correct_total / max(seen, 1), "seconds": seconds + elapsed,
                "images_per_second": rate}

    def _epoch_totals(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int):
        """(loss sum, correct, seen) of the epoch so far over all ranks, as Python numbers."""
        if not self.dist.distributed:
            return loss_sum.item(), int(correct.item()), seen
        totals = torch.stack([loss_sum.double(), correct.double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        totals = distributed.all_sum(totals.to(self._collective_device()))
        return totals[0].item(), int(totals[1].item()), int(totals[2].item())

    def objective(self, logits: torch.Tensor, y: torch.Tensor):
        """(what training minimizes, the cross-entropy it reports): the cross-entropy, against
        smoothed targets with --label_smoothing, plus, with --l1, l1 times the sum of |w| over all
        parameters (weight decay is the optimizer's). The reported loss is the plain cross-entropy,
        comparable with the validation loss."""
        smoothing = self.config.label_smoothing
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        reported = loss if not smoothing else F.cross_entropy(logits.detach(), y)
        if not self.config.l1:
            return loss, reported
        penalty = sum(p.abs().sum() for p in self.network.parameters())
        return loss + self.config.l1 * penalty, reported

    def _check_finite(self, loss_sum: float, epoch: int) -> None:
        if not math.isfinite(loss_sum):
            cfg = self.config
            last = list_checkpoints(cfg.modeldir)
            kept = f"the last good checkpoint (model-{last[-1]}.ckpt) is kept" if last else \
                "no checkpoint was written"
            rate = f"--learning_rate (--recipe {cfg.recipe} sets {cfg.learning_rate:g})" \
                if cfg.from_recipe("learning_rate") else "--learning_rate"
            lower = f"{rate} or --l1" if cfg.l1 else rate
            raise TrainingError(f"the training loss became NaN or infinite in epoch {epoch}; "
                                f"{kept}. Lower {lower}, or check the data.")

    def _bars_off(self):
        # None lets tqdm decide: bars only when output goes to a terminal.
        return True if getattr(self.config, "quiet", False) or not self.dist.is_main else None

    def _print_epoch(self, m: dict) -> None:
        valid = f"  valid {100 * m['valid_acc']:6.2f}%" if "valid_acc" in m else ""
        self.log(f"epoch {m['epoch']:>3}/{self.config.max_epoch}  lr {m['lr']:.4g}  loss "
                 f"{m['train_loss']:.4f}  train {100 * m['train_acc']:6.2f}%{valid}  "
                 f"{m['seconds']:.1f} s  {m['images_per_second']:.0f} img/s")

    # ---------------------------------------------------------------- evaluation

    @torch.inference_mode()
    def _logits(self, x: np.ndarray, desc: str = "evaluating", y: np.ndarray = None) -> torch.Tensor:
        """(N, 3072) rows, uint8 or float in [0, 255] -> (N, num_classes) float32 logits on device.

        With labels y, the progress bar shows the running loss and accuracy.
        """
        network = self.ema.network if self.ema is not None else self.forward_net
        network.eval()
        images = _to_image_tensor(x)
        if self.device.type == "cuda":
            images = images.pin_memory()
        labels = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64))
        outputs = []
        bs = self.config.eval_batch_size
        correct, loss_sum, start = 0, 0.0, time.perf_counter()
        bar = tqdm(range(0, len(images), bs), desc=desc, leave=False, disable=self._bars_off(),
                   unit="batch")
        for i in bar:
            batch = images[i:i + bs].to(self.device, non_blocking=True)
            outputs.append(self._evaluate_batch(network, self._images(batch, False)))
            if labels is not None and not bar.disable:
                target = labels[i:i + bs].to(self.device)
                correct += int((outputs[-1].argmax(1) == target).sum())
                loss_sum += float(F.cross_entropy(outputs[-1], target, reduction="sum"))
                done = min(i + bs, len(images))
                bar.set_postfix(loss=f"{loss_sum / done:.3f}", acc=f"{100 * correct / done:.1f}%",
                                img_s=f"{done / max(time.perf_counter() - start, 1e-9):.0f}")
        return torch.cat(outputs) if outputs else torch.empty(0, self.config.num_classes,
                                                              device=self.device)

    def _evaluate_batch(self, network, x: torch.Tensor) -> torch.Tensor:
        """Logits of one preprocessed batch; with --tta flip, the log of the mean of the class
        probabilities of the images and of their mirror images."""
        with self._autocast():
            logits = network(x).float()
            if self.config.tta != "flip":
                return logits
            mirrored = network(x.flip(3)).float()
        both = torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)])
        return torch.logsumexp(both, 0) - math.log(2)

    def scores(self, x: np.ndarray, y: np.ndarray, desc: str = "evaluating") -> dict:
        """Predictions and losses of the network as it is on (x, y): {"predictions" (N,) int64,
        "losses" (N,) float64 cross-entropy per image}, as numpy arrays. Under torchrun each rank
        scores its own part (distributed.share) and every rank gets all N, in order."""
        if self.dist.distributed:
            part = distributed.share(len(x), self.dist.rank, self.dist.world_size)
            mine = self._local_scores(x[part], np.asarray(y)[part], desc)
            return {k: distributed.gather_arrays(v) for k, v in mine.items()}
        return self._local_scores(x, y, desc)

    def _local_scores(self, x: np.ndarray, y: np.ndarray, desc: str) -> dict:
        logits = self._logits(x, desc, y)
        target = torch.as_tensor(np.asarray(y, dtype=np.int64), device=logits.device)
        losses = F.cross_entropy(logits, target, reduction="none").double()
        return {"predictions": logits.argmax(1).cpu().numpy(), "losses": losses.cpu().numpy()}

    def validate(self, x: np.ndarray, y: np.ndarray):
        """(accuracy in [0, 1], mean cross-entropy) of the network as it is on (x, y). Under
        torchrun each rank scores its own part and the counts and loss sums are added up."""
        if self.dist.distributed:
            part = distributed.share(len(x), self.dist.rank, self.dist.world_size)
            s = self._local_scores(x[part], np.asarray(y)[part], "validating")
            sums = torch.tensor([float((s["predictions"] == np.asarray(y)[part]).sum()),
                                 float(s["losses"].sum()), float(len(s["losses"]))],
                                dtype=torch.float64, device=self._collective_device())
            correct, loss_sum, count = distributed.all_sum(sums).tolist()
            return correct / count, loss_sum / count
        s = self.scores(x, y, "validating")
        return float((s["predictions"] == np.asarray(y)).mean()), float(s["losses"].mean())

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.validate(x, y)[0]

    def evaluate_checkpoints(self, x: np.ndarray, y: np.ndarray, checkpoint_list) -> list:
        """Score each listed checkpoint (epoch numbers or "best") on (x, y): a list of dicts with
        "checkpoint" (file name), "epoch", "accuracy", "loss", "images" and "predictions"."""
        for num in checkpoint_list:  # check every one before spending time on any
            self.checkpoint_file(num)
        results = []
        for num in checkpoint_list:
            ckpt = self.load(num)
            s = self.scores(x, y)
            results.append({"checkpoint": os.path.basename(self.checkpoint_file(num)),
                            "epoch": ckpt["epoch"],
                            "weights": reports.weight_summary(
                                reports.weight_magnitudes(self.network.state_dict())),
                            "accuracy": float((s["predictions"] == np.asarray(y)).mean()),
                            "loss": float(s["losses"].mean()), "images": len(y),
                            "predictions": s["predictions"]})
        return results

    def test_or_validate(self, x: np.ndarray, y: np.ndarray, checkpoint_num_list,
                         set_name: str = "test") -> dict:
        """Accuracy of each listed checkpoint on (x, y): {epoch: accuracy in [0, 1]}; one line each."""
        results = {}
        for r, num in zip(self.evaluate_checkpoints(x, y, checkpoint_num_list), checkpoint_num_list):
            results[num] = r["accuracy"]
            self.log(f"{r['checkpoint']}  {set_name} accuracy {100 * r['accuracy']:.2f}%  "
                     f"loss {r['loss']:.4f}  ({r['images']} images)")
        return results

    evaluate = test_or_validate  # the course skeleton's name

    def predict_prob(self, x: np.ndarray) -> np.ndarray:
        """(N, 3072) rows in [0, 255] -> (N, num_classes) float32 class probabilities."""
        return torch.softmax(self._logits(x, "predicting"), dim=1).cpu().numpy().astype(np.float32)
