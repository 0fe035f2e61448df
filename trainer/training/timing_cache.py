"""Step times remembered per machine, so that a second run of the same recipe on the same machine
starts at once: what --amp auto, --cpu_processes 0 and the width chooser time at a run's start
(seconds per training image of the run's own step) is kept in one small JSON file, and looked up
before anything is timed again.

The file is ``$XDG_CACHE_HOME/resnet-cifar/step-times.json`` (``~/.cache/...`` without it), or
the path in RESNET_CIFAR_TIMINGS; RESNET_CIFAR_TIMINGS=off neither reads nor writes one. Delete
the file to have everything timed afresh (after a change of hardware, say, or when the machine
was busy the first time). A time is remembered for one machine (its CPU or GPU, the cores the run
may use, torch's version), one layout of processes and threads, and one configuration of
everything that shapes a step: the network and its width, the batch, the precision, the
augmentation and the optimizer's extras; the rates, seeds, paths and the budget do not count.

A file this trainer did not write (not its JSON) is left alone: it is neither used nor replaced.
"""
import json
import os
import platform
from typing import Optional

import torch

from trainer.parallel import distributed
from trainer.storage import atomic

CACHE_ENV = "RESNET_CIFAR_TIMINGS"
FORMAT = "resnet-cifar step times 1"
# Fields that do not change how long a training step takes.
UNTIMED = {"recipe", "budget_minutes", "dataset", "label_mode", "split_index", "train_all",
           "data_dir", "download", "download_url", "modeldir", "learning_rate", "momentum",
           "weight_decay", "lr_decay_epochs", "lr_decay_factor", "lr_schedule", "warmup_epochs",
           "final_epoch_share", "max_epoch", "save_interval", "seed", "plan_anchor", "tta",
           "eval_batch_size", "quiet", "tensorboard", "dist_timeout", "cpu_processes",
           "whiten_bias_share", "lookahead_decay", "normalize", "pretrained_file", "muon_momentum",
           "device"}  # named by machine(): "auto", "cpu" and a rank's cuda:N are one device


class CacheError(Exception):
    """The cache file exists but is not this trainer's."""


def path(environ=None) -> Optional[str]:
    """Where the times are kept, or None when RESNET_CIFAR_TIMINGS=off."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(CACHE_ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return chosen
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet-cifar", "step-times.json")


def machine(device: torch.device, processes: int, threads: int) -> str:
    """The machine a time belongs to, in words."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f
                            if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return (f"{name}; {os.cpu_count()} cores; {processes} process(es) of {threads} thread(s); "
            f"torch {torch.__version__}")


def key(config, device: torch.device, processes: int, threads: int) -> str:
    """The entry of one step: the machine, and every field of config that times a step."""
    fields = {k: v for k, v in sorted(config.to_dict().items()) if k not in UNTIMED}
    fields["muon_lr"] = bool(fields["muon_lr"])  # its rate does not time a step, its use does
    return machine(device, processes, threads) + " | " + json.dumps(fields, sort_keys=True)


def _read(file: str) -> dict:
    try:
        with open(file) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CacheError(f"{file} cannot be read as this trainer's step times ({e}); delete it, "
                         f"or set {CACHE_ENV}=off") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or \
            not isinstance(data.get("seconds_per_image"), dict):
        raise CacheError(f"{file} is not this trainer's file of step times; delete it, or set "
                         f"{CACHE_ENV} to another path or to off")
    return data["seconds_per_image"]


_WARNED = set()  # (file, warning) already said by this process: a run makes several caches


class TimingCache:
    """The remembered seconds per image of a run's step, keyed by ``key``. Problems with the file
    are said once per process through ``log`` and leave the run to time its steps."""

    def __init__(self, file: Optional[str] = "default", log=print):
        self.file = path() if file == "default" else file
        self.log = log
        self.entries = {}
        self.hits = 0  # lookups answered from the file
        self.usable = self.file is not None
        if self.usable:
            try:
                self.entries = _read(self.file)
            except CacheError as e:
                self.warn(f"warning: {e}; the steps are timed and nothing is remembered.")
                self.usable = False

    def warn(self, line: str) -> None:
        if (self.file, line) not in _WARNED:
            _WARNED.add((self.file, line))
            self.log(line)

    def get(self, entry: str) -> Optional[float]:
        value = self.entries.get(entry) if self.usable else None
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def put(self, values: dict) -> None:
        """Remember {entry: seconds per image}, with the entries another run added meanwhile."""
        if not self.usable or not values:
            return
        try:
            entries = _read(self.file)
        except CacheError as e:
            self.warn(f"warning: {e}; nothing is remembered.")
            self.usable = False
            return
        entries.update(values)
        self.entries.update(values)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.file)), exist_ok=True)
            atomic.write_text(self.file, json.dumps({"format": FORMAT,
                                                     "seconds_per_image": entries}, indent=1),
                              OSError, f"{CACHE_ENV} (or set it to off)")
        except OSError as e:
            self.warn(f"warning: the step times are not remembered: {e}")
            self.usable = False

    def lookup(self, model) -> Optional[float]:
        """The remembered seconds per image of model's step as it is configured now (its
        precision included), or None. Under torchrun a time counts as remembered only where
        every rank remembers it, so that all of them time the step, or none."""
        value = self.get(entry(model))
        rt = model.runtime
        if rt.context.distributed:
            device = rt.collective_device()
            if not distributed.agree_min(1 if value else 0, device):
                return None
            value = distributed.agree_max(int(round(value * 1e12)), device) / 1e12
        if value:
            self.hits += 1
        return value

    def said(self) -> str:
        """What a line about times adds when some of them were remembered."""
        return f" (remembered in {self.file}; delete it to time again)" if self.hits else ""

    def remember(self, model, seconds_per_image: float) -> None:
        """Keep the seconds per image of model's step as it is configured now (rank 0 writes)."""
        if model.dist.is_main:
            self.put({entry(model): seconds_per_image})


def entry(model) -> str:
    """The key of a model's step: its configuration, device, processes and threads."""
    return key(model.config, model.runtime.device, model.dist.world_size, torch.get_num_threads())


class Off(TimingCache):
    """Nothing remembered (the tests' timers, and RESNET_CIFAR_TIMINGS=off)."""

    def __init__(self):
        super().__init__(None)
