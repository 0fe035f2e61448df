"""--network resnet50: torchvision's ResNet-50 with a new head, its ImageNet weights, its input
and the freezing of its backbone (--freeze_epochs).

torchvision is an optional extra (requirements-dev.txt): it is imported here only, when the
network is built, and its absence is one sentence. The ImageNet weights come through
torchvision's own mechanism (``ResNet50_Weights.IMAGENET1K_V1.get_state_dict``, which downloads
once into ``$TORCH_HOME/hub/checkpoints`` and checks the file's SHA-256 prefix against its name),
or from a local file with --pretrained_file. The head (``fc``, 2048 -> 1000) is replaced by a
new ``Linear(2048, num_classes)``.

Images go in as for the other networks (crop, flip), then are standardized with ImageNet's
channel statistics and resized on the device (``Runtime.prepare_images`` calls ``resize``).
"""
import os
import pickle

import torch
import torch.nn.functional as F
from torch import nn

from configure import ConfigError

# ImageNet's channel statistics in [0, 1] units (torchvision's weights were trained with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS = "IMAGENET1K_V1"  # the classic weights (He et al. 2016; "pretrained=True")
HEAD = "fc"  # the module the new head replaces; everything else is the backbone
NEEDS_TORCHVISION = "--network resnet50 needs torchvision: pip install -r requirements-dev.txt"


class PretrainedError(ConfigError):
    """The ImageNet weights cannot be had (offline, or a file that holds no ResNet-50)."""


def torchvision_models():
    """torchvision.models; ConfigError with one line saying how to install it when missing."""
    try:
        import torchvision.models as models
    except ImportError:
        raise ConfigError(NEEDS_TORCHVISION) from None
    return models


def imagenet_stats(device) -> tuple:
    """(mean, std), each (3,) float32 on device, in pixel units [0, 255]: what
    ImageUtils.normalize_batch takes to give (x / 255 - mean) / std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device) * 255
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device) * 255
    return mean, std


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size), bilinear (half-pixel centres); no-op at size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def build(num_classes: int, pretrained: str = "none", pretrained_file: str = "") -> nn.Module:
    """torchvision's ResNet-50, with the ImageNet weights when pretrained is "imagenet" (from
    pretrained_file if given), and a new head Linear(2048, num_classes) (torch's default init)."""
    models = torchvision_models()
    network = models.resnet50()
    if pretrained == "imagenet":
        weights = read_weights(pretrained_file) if pretrained_file else \
            download_weights(getattr(models.ResNet50_Weights, WEIGHTS))
        try:
            network.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError) as e:
            source = pretrained_file or "the downloaded file"
            raise PretrainedError(f"{source} does not hold torchvision's ResNet-50 weights "
                                  f"({first_line(e)}).") from None
    network.fc = nn.Linear(network.fc.in_features, num_classes)
    return network


def cache_file(weights) -> str:
    """Where torchvision keeps (and looks for) the weights: $TORCH_HOME/hub/checkpoints/<name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def download_weights(weights) -> dict:
    """The state_dict of a torchvision weights enum, from the cache or downloaded into it (the
    SHA-256 prefix in the file's name checked); PretrainedError with what to do otherwise."""
    path = cache_file(weights)
    cached = os.path.exists(path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        if cached:
            raise PretrainedError(f"the cached ImageNet weights {path} cannot be read "
                                  f"({first_line(e)}); delete the file to download it again, "
                                  f"or pass --pretrained_file PATH.") from None
        raise PretrainedError(f"--pretrained imagenet could not download {weights.url} "
                              f"({first_line(e)}); offline, copy that file as "
                              f"{os.path.basename(path)} into {os.path.dirname(path)} "
                              f"($TORCH_HOME/hub/checkpoints), or pass --pretrained_file "
                              f"PATH.") from None


def read_weights(path: str) -> dict:
    """A state_dict file of plain tensors (loaded with weights_only: no code runs)."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise PretrainedError(f"--pretrained_file {path} cannot be read as a state_dict "
                              f"({first_line(e)}).") from None
    if not isinstance(weights, dict):
        raise PretrainedError(f"--pretrained_file {path} holds a {type(weights).__name__}, not "
                              f"a state_dict of torchvision's ResNet-50.")
    return weights


def first_line(error: Exception) -> str:
    """An exception's message, its first line only (torch's can run to many)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def backbone_parameters(network: nn.Module) -> list:
    """Every parameter outside the head."""
    head = {id(p) for p in getattr(network, HEAD).parameters()}
    return [p for p in network.parameters() if id(p) not in head]


def set_frozen(network: nn.Module, frozen: bool) -> bool:
    """Freeze or free the backbone: frozen, its parameters take no gradient (so SGD leaves
    them, their momentum and their decay alone) and its batch-norm layers run in eval mode (their
    running statistics stay fixed), plain or synchronized (--sync_bn) alike. Call after
    network.train(): it is a pure function of ``frozen``, so a resumed run sets the same state.
    Returns whether any parameter's requires_grad changed: DistributedDataParallel registers the
    parameters that take a gradient when it wraps the network, so a wrapper built before the
    change must be built again."""
    changed = False
    for p in backbone_parameters(network):
        changed |= p.requires_grad == frozen
        p.requires_grad_(not frozen)
    if frozen:  # the head is a Linear layer: every batch norm belongs to the backbone
        for m in network.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return changed
