"""ResNets for 32x32 images, as in He et al. 2016 (v1) and He et al. 2016b (v2, pre-activation).

Only modules live here. Depth is data: a network has three stacks of ``resnet_size`` blocks,
with 16/32/64 filters (times 4 at the output of a bottleneck) and strides 1/2/2.

=========  =======  ======  ==========  ====================
network    version  size n  depth       parameters (10 cls)
=========  =======  ======  ==========  ====================
ResNet-20  v1       3       6n+2 = 20       272,474
ResNet-56  v1       9       6n+2 = 56       855,770
ResNet-110 v1       18      6n+2 = 110    1,730,714
ResNet-164 v2       18      9n+2 = 164    1,703,258
=========  =======  ======  ==========  ====================

v1 uses standard blocks (two 3x3 convolutions, post-activation); v2 uses full pre-activation
bottleneck blocks. Where a block changes the shape, the shortcut is a projection (1x1 convolution,
followed by batch norm in v1; v2 projects the pre-activated input, so it needs no norm of its own).

State-dict names (``start_layer``, ``stack_layers.<i>.blocks.<j>``, ``output_layer``) are part of the
checkpoint format and must not change.
"""
import torch
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch's default; equals TF's decay 0.9 used by the course skeleton
BN_EPS = 1e-5


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class batch_norm_relu_layer(nn.Module):
    """Batch norm followed by ReLU: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))


class standard_block(nn.Module):
    """v1 block (paper Fig. 2 left): conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, filters: int, stride: int):
        super().__init__()
        out_channels = filters * self.expansion
        self.conv1 = conv3x3(in_channels, filters, stride)
        self.bn_relu1 = batch_norm_relu_layer(filters)
        self.conv2 = conv3x3(filters, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Sequential(
                conv1x1(in_channels, out_channels, stride),
                nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.projection is None else self.projection(x)

        out = self.bn_relu1(self.conv1(x))

        out = self.bn2(self.conv2(out))

        out += identity
        return self.relu(out)


class bottleneck_block(nn.Module):
    """v2 full pre-activation bottleneck (v2 paper Fig. 4e):
    BN-ReLU-conv1x1, BN-ReLU-conv3x3 (carries the stride), BN-ReLU-conv1x1 to 4x filters, add shortcut.
    """

    expansion = 4

    def __init__(self, in_channels: int, filters: int, stride: int):
        super().__init__()
        out_channels = filters * self.expansion
        self.bn_relu1 = batch_norm_relu_layer(in_channels)
        self.conv1 = conv1x1(in_channels, filters)
        self.bn_relu2 = batch_norm_relu_layer(filters)
        self.conv2 = conv3x3(filters, filters, stride)
        self.bn_relu3 = batch_norm_relu_layer(filters)
        self.conv3 = conv1x1(filters, out_channels)
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.bn_relu1(x)
        # A projection sees the pre-activated input; an identity shortcut carries x untouched.
        identity = x if self.projection is None else self.projection(preact)

        out = self.conv1(preact)

        out = self.conv2(self.bn_relu2(out))

        out = self.conv3(self.bn_relu3(out))

        return out + identity


class stack_layer(nn.Module):
    """``resnet_size`` blocks; the first one carries the stride and any change of width."""

    def __init__(self, block: type, in_channels: int, filters: int, stride: int, resnet_size: int):
        super().__init__()
        strides = [stride] + [1] * (resnet_size - 1)
        blocks = []
        for s in strides:
            blocks.append(block(in_channels, filters, s))
            in_channels = filters * block.expansion
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class output_layer(nn.Module):
    """(v2: BN-ReLU, then) global average pooling and a linear layer: (N, C, H, W) -> (N, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, preactivated: bool):
        super().__init__()
        self.bn_relu = batch_norm_relu_layer(in_channels) if preactivated else None
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_relu is not None:
            x = self.bn_relu(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (N, C)
        return self.fc(x)


def depth_of(resnet_version: int, resnet_size: int) -> int:
    """The paper's depth: 6n+2 for standard blocks, 9n+2 for bottlenecks."""
    return (6 if resnet_version == 1 else 9) * resnet_size + 2


class ResNet(nn.Module):
    """CIFAR ResNet: (N, 3, 32, 32) float -> (N, num_classes) logits."""

    def __init__(self, resnet_version: int = 1, resnet_size: int = 3, num_classes: int = 10,
                 first_num_filters: int = 16):
        super().__init__()
        if resnet_version not in (1, 2):
            raise ValueError(f"resnet_version must be 1 (standard blocks) or 2 (pre-activation "
                             f"bottlenecks), not {resnet_version!r}.")
        if isinstance(resnet_size, bool) or not isinstance(resnet_size, int) or resnet_size < 1:
            raise ValueError(f"resnet_size is the number of blocks per stack and must be a positive "
                             f"integer n (depth 6n+2 for v1: 1->8, 3->20, 9->56, 18->110; 9n+2 for v2: "
                             f"18->164), not {resnet_size!r}.")
        if isinstance(first_num_filters, bool) or not isinstance(first_num_filters, int) \
                or first_num_filters < 1:
            raise ValueError(f"first_num_filters must be a positive integer, not {first_num_filters!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer of at least 2, not {num_classes!r}.")
        self.resnet_version = resnet_version
        self.resnet_size = resnet_size
        block = standard_block if resnet_version == 1 else bottleneck_block
        preactivated = resnet_version == 2

        # v1 normalizes the stem's output itself; in v2 the first block's pre-activation does it.
        stem = [conv3x3(3, first_num_filters)]
        if not preactivated:
            stem.append(batch_norm_relu_layer(first_num_filters))
        self.start_layer = nn.Sequential(*stem)

        stacks = []
        in_channels = first_num_filters
        for i, stride in enumerate((1, 2, 2)):
            filters = first_num_filters * 2 ** i
            stacks.append(stack_layer(block, in_channels, filters, stride, resnet_size))
            in_channels = filters * block.expansion
        self.stack_layers = nn.Sequential(*stacks)
        self.output_layer = output_layer(in_channels, num_classes, preactivated)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. initialization for convolutions; BN starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.start_layer(x)  # (N, 16, 32, 32)
        x = self.stack_layers(x)  # (N, 64 * expansion, 8, 8)
        return self.output_layer(x)  # (N, num_classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


if __name__ == "__main__":
    for version, size in ((1, 3), (1, 5), (1, 7), (1, 9), (1, 18), (2, 18)):
        net = ResNet(version, size)
        print(f"ResNet-{depth_of(version, size)} v{version}: {net.num_params():,} parameters")
