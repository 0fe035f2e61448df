"""The whitening initialisation of a first 2x2 convolution (``--whiten``; airbench94, Jordan 2024).

Before the first epoch of a fresh run, the 2x2x3 patches of the first training images, standardized
as the run standardizes them (not augmented), give a covariance Sigma = V diag(lambda) V^T. Its
12 eigenvectors, each divided by sqrt(lambda + eps), become 12 filters whose outputs over those
patches are uncorrelated with unit variance; the other 12 filters are their negatives, so that the
GELU after the layer passes each direction with either sign. The layer then stays fixed (built so
by ``NetWork.airbench(whiten=True)``); a resumed run takes it from its checkpoint instead.
"""
import numpy as np
import torch
from torch import nn

from trainer.evaluation.evaluate import to_image_tensor

IMAGES = 5000  # the first training images sampled (airbench94 whitens from 5,000)
EPS = 5e-4  # added to each eigenvalue, in standardized units squared (airbench94)
CHUNK = 500  # images whose patches are summed at once: 500 x 31 x 31 x 12 doubles, 46 MB


def first_convolution(network: nn.Module) -> nn.Conv2d:
    """The network's first convolution, refused unless it is a whitening layer: a 2D kernel of
    k x k over C channels, no padding, with 2 * C * k * k filters."""
    conv = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("whitening needs a network whose first layer is a convolution.")
    c, (kh, kw) = conv.in_channels, conv.kernel_size
    if kh != kw or conv.padding != (0, 0) or conv.out_channels != 2 * c * kh * kw:
        raise ValueError(f"whitening needs a first convolution of a square kernel without padding "
                         f"and 2 x channels x kernel area filters (airbench's 2x2 with 24), not "
                         f"{conv}.")
    return conv


def patches(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * (H - k + 1) * (W - k + 1), C * k * k): every k x k patch as a row,
    its entries in a convolution weight's (C, k, k) order."""
    n, c = images.shape[:2]
    windows = images.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # (N, C, H', W', k, k)
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel_size * kernel_size)


def patch_covariance(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(N, C, H, W) float -> the (D, D) float64 covariance of its k x k patches, D = C * k * k,
    summed in float64 on the CPU, in chunks of images."""
    total, outer, count = 0.0, 0.0, 0
    for start in range(0, len(images), CHUNK):
        rows = patches(images[start:start + CHUNK].detach().to("cpu", torch.float64), kernel_size)
        total = total + rows.sum(0)
        outer = outer + rows.T @ rows
        count += len(rows)
    mean = total / count
    return (outer - count * torch.outer(mean, mean)) / (count - 1)


def whitening_filters(covariance: torch.Tensor, channels: int, kernel_size: int,
                      eps: float = EPS) -> torch.Tensor:
    """(D, D) covariance -> (D, C, k, k) filters v_i / sqrt(lambda_i + eps), the largest
    eigenvalue's first."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    # (D, D), a filter a column
    scaled = eigenvectors.flip(1) / torch.sqrt(eigenvalues.flip(0) + eps)
    return scaled.T.reshape(-1, channels, kernel_size, kernel_size)


@torch.no_grad()
def whiten(conv: nn.Conv2d, images: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Set conv's weight from the patches of ``images`` ((N, C, H, W), as the network sees them):
    the whitening filters, then their negatives. Returns the eigenvalues, largest first."""
    k = conv.kernel_size[0]
    covariance = patch_covariance(images, k)
    filters = whitening_filters(covariance, conv.in_channels, k, eps)
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
    return torch.linalg.eigvalsh(covariance).flip(0)


def initialise(model, x_train: np.ndarray) -> None:
    """Whiten ``model.network``'s first layer from the first IMAGES rows of x_train ((N, 3072)
    uint8), prepared by model.runtime as evaluation prepares them. The weight averages (--ema,
    --lookahead), copies of the network taken before, start again from the whitened network:
    nothing has been trained yet."""
    rt = model.runtime
    sample = to_image_tensor(x_train[:IMAGES]).to(rt.device)
    conv = first_convolution(model.network)
    eigenvalues = whiten(conv, rt.prepare_images(sample, False), EPS)
    for average in (model.ema, model.lookahead):
        if average is not None:
            average.load_state_dict(model.network.state_dict())
    model.log(f"whitening: first layer set from the {conv.kernel_size[0]}x{conv.kernel_size[1]} "
              f"patches of {len(sample)} training images (eigenvalues {eigenvalues[0]:.3g} to "
              f"{eigenvalues[-1]:.3g})")
