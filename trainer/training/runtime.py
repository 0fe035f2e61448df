"""Where and how the network runs: the device, the precision, the memory format, the image
preparation, and the network, optimizer and loss scaler built for them.

``Runtime`` is the one place a run's device is chosen (CUDA if present, else MPS, else CPU, unless
--device names one); ``autocast()`` and ``prepare_images()`` are what every training step,
evaluation batch, the --budget_minutes timing and the benchmarks run their images through.
"""
import torch

import ImageUtils
from NetWork import build_network
from configure import Config, ConfigError, applies
from trainer.parallel import distributed
from trainer.training import orthogonal, pretrained

DEVICE_TYPES = ("cpu", "cuda", "mps")


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


def amp_dtype(amp: str, device: torch.device):
    """--amp on this device: None (full precision), torch.bfloat16 or torch.float16. Auto on
    CUDA picks bf16 where the device computes in it natively (compute capability 8.0, Ampere, and
    later; ROCm's devices, as torch says), else fp16 with the loss scaler:
    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (T4, V100), and
    asks the current device, not this run's."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and native_bf16(device)):
        return torch.bfloat16
    return torch.float16


def native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device (cuda or cuda:N) computes in bf16 natively."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


class Runtime:
    """The device, precision and memory format of one run, and the channel statistics of
    --normalize dataset (``mean_std``, set once from the training split or from a checkpoint)."""

    def __init__(self, config: Config, context=distributed.SINGLE):
        self.config, self.context = config, context
        self.device = select_device(config.device)
        self.channels_last = config.channels_last != "off"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.amp_dtype = amp_dtype(config.amp, self.device)
        self.mean_std = None  # --normalize dataset: the training split's channel (mean, std)
        # resnet50: ImageNet's channel statistics, whatever --normalize says, and a resize
        self.imagenet = pretrained.imagenet_stats(self.device) \
            if config.network == "resnet50" else None

    def autocast(self):
        """The precision context every forward pass runs in (a no-op at full precision)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def prepare_images(self, x: torch.Tensor, training: bool, offsets=None,
                       flips=None) -> torch.Tensor:
        """(B, 3, 32, 32) uint8 on the device -> the network's float input: cropped and flipped
        (training, by the epoch plan's offsets and flips), standardized, in the memory format.
        For resnet50, standardized with ImageNet's statistics and resized to --input_size
        (bilinear interpolation commutes with the per-channel standardization)."""
        x = ImageUtils.preprocess_batch(x, training, offsets, flips, self.config.pad_mode,
                                        mean_std=self.mean_std if self.imagenet is None else
                                        self.imagenet,
                                        pad=self.config.translate)
        if self.imagenet is not None:
            x = pretrained.resize(x, self.config.input_size)
        return x.contiguous(memory_format=self.memory_format)

    def collective_device(self):
        """Where tensors for a collective operation live: the device under NCCL, else the CPU."""
        return self.device if self.context.backend == "nccl" else "cpu"


def build(config: Config, rt: Runtime) -> torch.nn.Module:
    """The run's network, seeded by config.seed (the initial weights depend on the seed only),
    with SyncBatchNorm under torchrun's --sync_bn, on the device in the memory format."""
    torch.manual_seed(config.seed)
    network = network_for(config)
    if config.sync_bn and rt.context.distributed:
        network = distributed.convert_sync_batchnorm(network, rt.device)
    network.to(rt.device, memory_format=rt.memory_format)
    return network


def network_for(config: Config) -> torch.nn.Module:
    """The network config describes, every network flag applied, on the CPU (its weights drawn
    from torch's random state as it is)."""
    if config.network == "resnet50":  # torchvision's, outside the course file NetWork.py
        return pretrained.build(config.num_classes, config.pretrained, config.pretrained_file)
    return build_network(config.network, config.resnet_version, config.resnet_size,
                         config.num_classes, config.first_num_filters,
                         batch_norm=config.batch_norm, downsample=config.downsample,
                         shortcut=config.shortcut, activation=config.activation,
                         width_scale=config.width_scale, whiten=config.whiten)


def configure_backends(config: Config, rt: Runtime) -> None:
    """cuDNN's autotuner, as --cudnn_benchmark says (CUDA only)."""
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark


def parameter_groups(network: torch.nn.Module, weight_decay: float, no_decay_bn_bias: bool,
                     bias_lr_scale: float = 1.0, early=None, early_share: float = 1.0):
    """The optimizer's parameter groups: one with weight decay for everything, or, with
    no_decay_bn_bias, a second one without it for the batch-norm weights and every bias. With
    bias_lr_scale other than 1 the batch-norm biases form a last group whose rate is that many
    times the others' (its ``lr_scale``, which the training loop applies) and whose decay is
    divided by it, so that each step shrinks them as much as the rest (airbench94). The parameter
    ``early`` with early_share below 1 forms a group of its own, with the decay it would have had,
    that learns only during the first early_share of the run (its ``until``, which the training
    loop applies by giving it rate 0 from then on: SGD then leaves it exactly as it is)."""
    params = list(network.parameters())
    norm_biases = set()
    if bias_lr_scale != 1:
        norm_biases = {id(m.bias) for m in network.modules()
                       if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                       and isinstance(m.bias, torch.nn.Parameter)}
    exempt = set()
    if no_decay_bn_bias:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                exempt.update(id(p) for p in module.parameters(recurse=False))
            elif isinstance(getattr(module, "bias", None), torch.nn.Parameter):
                exempt.add(id(module.bias))
    rest = [p for p in params if id(p) not in norm_biases]
    groups = [{"params": [p for p in rest if id(p) not in exempt], "weight_decay": weight_decay}]
    if no_decay_bn_bias:
        groups.append({"params": [p for p in rest if id(p) in exempt], "weight_decay": 0.0})
    if norm_biases:
        decay = 0.0 if no_decay_bn_bias else weight_decay / bias_lr_scale
        groups.append({"params": [p for p in params if id(p) in norm_biases],
                       "weight_decay": decay, "lr_scale": bias_lr_scale})
    if early is not None and early_share < 1:
        for group in groups:
            if any(p is early for p in group["params"]):
                group["params"] = [p for p in group["params"] if p is not early]
                groups.append({"params": [early], "weight_decay": group["weight_decay"],
                               "lr_scale": group.get("lr_scale", 1.0), "until": early_share})
                break
    return groups


def rate_scale(config: Config) -> float:
    """SGD's rate per unit of the schedule's: 1, or under --decoupled airbench94's
    batch_size / (1024 * (1 + 1 / (1 - momentum))) (its rate is per 1024 examples and undoes the
    gain of momentum; the loss here is the batch mean, so the batch size multiplies)."""
    if not config.decoupled:
        return 1.0
    return config.batch_size / (1024 * (1 + 1 / (1 - config.momentum)))


def optimizer(network: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov's with --nesterov) over ``parameter_groups``. Under
    --decoupled SGD's decay is weight_decay / learning_rate, so that the shrink of a step,
    rate times decay, is weight_decay * rate_scale at the full schedule, whatever the rate.
    With --muon_lr the filters form a last group of orthogonalized steps (``filter_group``)."""
    decay = config.weight_decay / config.learning_rate if config.decoupled else \
        config.weight_decay
    early = network.whiten.bias if applies("whiten_bias_share", config.network) else None
    groups = parameter_groups(network, decay, config.no_decay_bn_bias, config.bias_lr_scale,
                              early, config.whiten_bias_share)
    rate = config.learning_rate * rate_scale(config)
    if not config.muon_lr:
        return torch.optim.SGD(groups, lr=rate, momentum=config.momentum,
                               nesterov=config.nesterov)
    first = network.whiten.weight if hasattr(network, "whiten") else None
    return orthogonal.OrthogonalSGD(filter_group(groups, config, first), lr=rate,
                                    momentum=config.momentum, nesterov=config.nesterov)


def filter_group(groups: list, config: Config, first=None) -> list:
    """``groups`` with every convolution filter (4-D parameter) but ``first`` moved to a last,
    orthogonalized group: no weight decay, --muon_momentum, and an ``lr_scale`` that makes its
    rate --muon_lr at the schedule's full rate (the training loop multiplies the schedule's SGD
    rate by it). ``first`` is airbench's first layer (frozen whitening, or trained with
    --no_whiten): no batch norm follows it, so the orthogonal step's rescaling of the filters
    would change what it computes; it stays with SGD, as in airbench94_muon."""
    filters = [p for group in groups for p in group["params"] if p.dim() == 4 and p is not first]
    taken = {id(p) for p in filters}
    kept = []
    for group in groups:
        group = dict(group, params=[p for p in group["params"] if id(p) not in taken])
        if group["params"]:
            kept.append(group)
    scale = config.muon_lr / (config.learning_rate * rate_scale(config))
    return kept + [{"params": filters, "weight_decay": 0.0, "momentum": config.muon_momentum,
                    "lr_scale": scale, "orthogonal": True}]


def scaler(rt: Runtime) -> torch.amp.GradScaler:
    """The loss scaler; it only acts under fp16 (bf16 and full precision need none)."""
    return torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)


def forward_network(network: torch.nn.Module, config: Config) -> torch.nn.Module:
    """What evaluation runs: the network, compiled with --compile (the same parameters)."""
    return torch.compile(network) if config.compile else network


def training_network(network: torch.nn.Module, forward_net: torch.nn.Module, rt: Runtime,
                     config: Config) -> torch.nn.Module:
    """What the training steps run: the (compiled) network, in DistributedDataParallel under
    torchrun, so that the gradients are averaged over the ranks."""
    if not rt.context.distributed:
        return forward_net
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    wrapped = torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)
    return torch.compile(wrapped) if config.compile else wrapped
