"""ResNets for 32x32 images, as in He et al. 2016 (v1) and He et al. 2016b (v2, pre-activation).

Only modules live here, every network the trainer builds, so that the course file reads on its
own (hence its length, above the package's usual ~350 lines). Depth is data: a network has three stacks of ``resnet_size`` blocks,
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

Variants, all with the defaults' state-dict names and the parameter counts noted:

* ``downsample``: ``"b"`` (default) puts a bottleneck's stride on its 3x3 convolution; ``"a"`` on its
  first 1x1, as in the original paper; ``"d"`` is b with a 2x2 average pool (stride 2) before a
  stride-1 projection. Standard blocks carry the stride on their first 3x3 either way (a == b).
  Same counts for all three.
* ``shortcut``: ``"projection"`` (default) or ``"pad"``, the paper's option A: every second pixel,
  new channels zero-padded, no parameters. v1 with pad: ResNet-20 269,722, ResNet-56 853,018,
  ResNet-110 1,727,962 (as akamaster's replication); v2 ResNet-164 with pad: 1,661,274.
* ``activation``: ``"relu"`` (default) or ``"swish"`` (x * sigmoid(x), ``nn.SiLU``), everywhere.

State-dict names (``start_layer``, ``stack_layers.<i>.blocks.<j>``, ``output_layer``) are part of the
checkpoint format and must not change.

Other networks chosen by ``build_network(network=...)`` (parameters for 10 / 100 classes):

==========  =======================  =======================  ===============================
network     parameters               with batch_norm=True     layers
==========  =======================  =======================  ===============================
simple_nn      82,030 / 89,680          82,078 / 89,728       LeNet-style, 2 conv + 3 fc
simple_cnn  1,070,794 / 1,093,924    1,070,986 / 1,094,116    2 conv + 2 fc
resnet18    11,173,962 / 11,220,132  (always has BN)          CIFAR stem, [2, 2, 2, 2] blocks
==========  =======================  =======================  ===============================

With ``shortcut="pad"`` resnet18 has 11,000,138 parameters (10 classes).

Networks for speed (10 classes; ``width_scale`` multiplies every width but airbench's first layer):

========  ==========================  ===========================================================
network   parameters                  layers
========  ==========================  ===========================================================
resnet9   6,573,120                   ResNet-9 of DAWNBench (Page, "How to train your ResNet"):
                                      widths 64/128/256/512, two residual pairs, output x 0.125
airbench  1,972,792 (1,971,640        airbench94 (Jordan 2024): 2x2 whitening conv to 24, three
          trained; 1,971,352 with     conv groups 64/256/256, GELU, output x 1/9; batch norm
          ``whiten``)                 scales fixed at 1
========  ==========================  ===========================================================
"""
import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch's default; equals TF's decay 0.9 used by the course skeleton
BN_EPS = 1e-5

ACTIVATIONS = ("relu", "swish")
DOWNSAMPLES = ("a", "b", "d")
SHORTCUTS = ("projection", "pad")
NETWORKS = ("resnet", "simple_nn", "simple_cnn", "resnet18", "resnet9", "airbench")
RESNET9_WIDTHS = (64, 128, 256, 512)  # prep, layer1, layer2, layer3 (Page 2018, DAWNBench)
RESNET9_SCALE = 0.125  # the logits' multiplier (Page 2018)
AIRBENCH_WIDTHS = (64, 256, 256)  # the three conv groups (airbench94's hyp["net"]["widths"])
AIRBENCH_SCALE = 1 / 9  # the logits' multiplier (airbench94's scaling_factor)
# airbench94's batchnorm_momentum 0.6 is the share of the running statistics kept; torch counts the
# share taken from the batch.
AIRBENCH_BN_MOMENTUM = 0.4
AIRBENCH_BN_EPS = 1e-12  # airbench94
WHITENING_KERNEL = 2  # airbench94's first layer: 2x2 patches, 12 filters and their negatives


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def make_activation(activation: str = "relu") -> nn.Module:
    """``"relu"`` -> nn.ReLU, ``"swish"`` -> nn.SiLU (x * sigmoid(x)); both in place."""
    if activation == "relu":
        return nn.ReLU(inplace=True)
    if activation == "swish":
        return nn.SiLU(inplace=True)
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}.")


class pad_shortcut(nn.Module):
    """The paper's option A: keep every ``stride``-th pixel and append zero channels; no parameters.

    (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    A named module, not a lambda, so that networks pickle.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a pad shortcut can only add channels, not go from {in_channels} "
                             f"to {out_channels}.")
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # pads (W, H, C) from the last dim

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(in_channels: int, out_channels: int, stride: int, downsample: str, shortcut: str,
                  norm: bool) -> nn.Module:
    """The shortcut of a block that changes the shape.

    ``"projection"``: conv1x1 carrying the stride (then BN if ``norm``); with ``downsample="d"`` a 2x2
    average pool does the striding and the conv1x1 has stride 1. ``"pad"``: a ``pad_shortcut``.
    A lone convolution is returned bare so that the v2 state-dict names stay ``projection.weight``.
    """
    if shortcut == "pad":
        return pad_shortcut(in_channels, out_channels, stride)
    layers = []
    if downsample == "d" and stride != 1:
        layers += [nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                   conv1x1(in_channels, out_channels)]
    else:
        layers.append(conv1x1(in_channels, out_channels, stride))
    if norm:
        layers.append(nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class batch_norm_relu_layer(nn.Module):
    """Batch norm followed by the activation (ReLU unless told): (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, num_features: int, activation: str = "relu"):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = make_activation(activation)  # name kept from the ReLU-only days

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))


class standard_block(nn.Module):
    """v1 block (paper Fig. 2 left): conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU.

    The stride sits on the first 3x3 for every ``downsample``; ``"d"`` only changes the projection.
    ``projection`` holds the shortcut module where the shape changes (a ``pad_shortcut`` with
    ``shortcut="pad"``), else None.
    """

    expansion = 1

    def __init__(self, in_channels: int, filters: int, stride: int, downsample: str = "b",
                 shortcut: str = "projection", activation: str = "relu"):
        super().__init__()
        out_channels = filters * self.expansion
        self.conv1 = conv3x3(in_channels, filters, stride)
        self.bn_relu1 = batch_norm_relu_layer(filters, activation)
        self.conv2 = conv3x3(filters, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = make_shortcut(in_channels, out_channels, stride, downsample, shortcut,
                                            norm=True)
        self.relu = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.projection is None else self.projection(x)

        out = self.bn_relu1(self.conv1(x))

        out = self.bn2(self.conv2(out))

        out += identity
        return self.relu(out)


class bottleneck_block(nn.Module):
    """v2 full pre-activation bottleneck (v2 paper Fig. 4e):
    BN-ReLU-conv1x1, BN-ReLU-conv3x3 (carries the stride), BN-ReLU-conv1x1 to 4x filters, add shortcut.

    ``downsample="a"`` moves the stride to the first conv1x1; ``"d"`` keeps it on the 3x3 and
    average-pools before a stride-1 projection. ``projection`` holds the shortcut module where the
    shape changes (a ``pad_shortcut`` with ``shortcut="pad"``; in the first stack it only adds
    channels, 16 -> 64, without subsampling), else None.
    """

    expansion = 4

    def __init__(self, in_channels: int, filters: int, stride: int, downsample: str = "b",
                 shortcut: str = "projection", activation: str = "relu"):
        super().__init__()
        out_channels = filters * self.expansion
        stride1, stride2 = (stride, 1) if downsample == "a" else (1, stride)
        self.bn_relu1 = batch_norm_relu_layer(in_channels, activation)
        self.conv1 = conv1x1(in_channels, filters, stride1)
        self.bn_relu2 = batch_norm_relu_layer(filters, activation)
        self.conv2 = conv3x3(filters, filters, stride2)
        self.bn_relu3 = batch_norm_relu_layer(filters, activation)
        self.conv3 = conv1x1(filters, out_channels)
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = make_shortcut(in_channels, out_channels, stride, downsample, shortcut,
                                            norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.bn_relu1(x)
        # Where the shape changes the first block pre-activates once for both branches, so a
        # projection (or a pad) sees the pre-activated input; an identity shortcut carries x untouched.
        identity = x if self.projection is None else self.projection(preact)

        out = self.conv1(preact)

        out = self.conv2(self.bn_relu2(out))

        out = self.conv3(self.bn_relu3(out))

        return out + identity


class stack_layer(nn.Module):
    """``resnet_size`` blocks; the first one carries the stride and any change of width."""

    def __init__(self, block: type, in_channels: int, filters: int, stride: int, resnet_size: int,
                 **block_options):
        super().__init__()
        strides = [stride] + [1] * (resnet_size - 1)
        blocks = []
        for s in strides:
            blocks.append(block(in_channels, filters, s, **block_options))
            in_channels = filters * block.expansion
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class output_layer(nn.Module):
    """(v2: BN-ReLU, then) global average pooling and a linear layer: (N, C, H, W) -> (N, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, preactivated: bool, activation: str = "relu"):
        super().__init__()
        self.bn_relu = batch_norm_relu_layer(in_channels, activation) if preactivated else None
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_relu is not None:
            x = self.bn_relu(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (N, C)
        return self.fc(x)


class Network(nn.Module):
    """What every network here shares: (N, 3, 32, 32) float -> (N, num_classes) logits, and a
    count of its parameters."""

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def depth_of(resnet_version: int, resnet_size: int) -> int:
    """The paper's depth: 6n+2 for standard blocks, 9n+2 for bottlenecks."""
    return (6 if resnet_version == 1 else 9) * resnet_size + 2


class ResNet(Network):
    """CIFAR ResNet: (N, 3, 32, 32) float -> (N, num_classes) logits."""

    def __init__(self, resnet_version: int = 1, resnet_size: int = 3, num_classes: int = 10,
                 first_num_filters: int = 16, downsample: str = "b", shortcut: str = "projection",
                 activation: str = "relu"):
        super().__init__()
        check_resnet_options(downsample, shortcut, activation)
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

        options = dict(downsample=downsample, shortcut=shortcut, activation=activation)

        # v1 normalizes the stem's output itself; in v2 the first block's pre-activation does it.
        stem = [conv3x3(3, first_num_filters)]
        if not preactivated:
            stem.append(batch_norm_relu_layer(first_num_filters, activation))
        self.start_layer = nn.Sequential(*stem)

        stacks = []
        in_channels = first_num_filters
        for i, stride in enumerate((1, 2, 2)):
            filters = first_num_filters * 2 ** i
            stacks.append(stack_layer(block, in_channels, filters, stride, resnet_size, **options))
            in_channels = filters * block.expansion
        self.stack_layers = nn.Sequential(*stacks)
        self.output_layer = output_layer(in_channels, num_classes, preactivated, activation)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.start_layer(x)  # (N, 16, 32, 32)
        x = self.stack_layers(x)  # (N, 64 * expansion, 8, 8)
        return self.output_layer(x)  # (N, num_classes)


class resnet18(Network):
    """ResNet-18 adapted to 32x32 images: (N, 3, 32, 32) float -> (N, num_classes) logits.

    A 3x3 stride-1 stem with BN and activation and no max-pool (the ImageNet stem would shrink 32x32
    to 8x8 at once), then four stages of two v1 standard blocks, 64/128/256/512 filters, strides
    1/2/2/2, projection shortcuts with BN, global average pooling and a linear layer.
    """

    def __init__(self, num_classes: int = 10, downsample: str = "b", shortcut: str = "projection",
                 activation: str = "relu"):
        super().__init__()
        check_resnet_options(downsample, shortcut, activation)
        _check_num_classes(num_classes)
        options = dict(downsample=downsample, shortcut=shortcut, activation=activation)
        self.stem = nn.Sequential(conv3x3(3, 64), batch_norm_relu_layer(64, activation))
        stages = []
        in_channels = 64
        for filters, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(stack_layer(standard_block, in_channels, filters, stride, 2, **options))
            in_channels = filters
        self.stages = nn.Sequential(*stages)
        self.head = output_layer(in_channels, num_classes, preactivated=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, 64, 32, 32)
        x = self.stages(x)  # (N, 512, 4, 4)
        return self.head(x)  # (N, num_classes)


class _Baseline(Network):
    """The course baselines' shape: ``features`` (convolutions), flattened, then ``classifier``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # (N, num_classes)


class simple_nn(_Baseline):
    """LeNet-style baseline: (N, 3, 32, 32) float -> (N, num_classes) logits.

    conv5x5 3->8, act, max-pool 2 (32 -> 28 -> 14); conv3x3 8->16, act, max-pool 2 (14 -> 12 -> 6);
    no padding; fully connected 16*6*6 = 576 -> 120 -> 84 -> num_classes with act between.
    ``batch_norm`` adds BN after each convolution (2 * channels parameters each). PyTorch's default
    initialization, as the course baselines have it.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False, activation: str = "relu"):
        super().__init__()
        _check_num_classes(num_classes)
        self.features = nn.Sequential(*_conv_act_pool(3, 8, 5, 0, batch_norm, activation),
                                      *_conv_act_pool(8, 16, 3, 0, batch_norm, activation))
        self.classifier = nn.Sequential(
            nn.Linear(16 * 6 * 6, 120), make_activation(activation),
            nn.Linear(120, 84), make_activation(activation),
            nn.Linear(84, num_classes),
        )


class simple_cnn(_Baseline):
    """Small CNN baseline: (N, 3, 32, 32) float -> (N, num_classes) logits.

    conv3x3 3->32 padding 1, act, max-pool 2 (32 -> 16); conv3x3 32->64 padding 1, act, max-pool 2
    (16 -> 8); fully connected 64*8*8 = 4096 -> 256, act, 256 -> num_classes.
    ``batch_norm`` adds BN after each convolution (2 * channels parameters each). PyTorch's default
    initialization, as the course baselines have it.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False, activation: str = "relu"):
        super().__init__()
        _check_num_classes(num_classes)
        self.features = nn.Sequential(*_conv_act_pool(3, 32, 3, 1, batch_norm, activation),
                                      *_conv_act_pool(32, 64, 3, 1, batch_norm, activation))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 8 * 8, 256), make_activation(activation),
            nn.Linear(256, num_classes),
        )


def scaled_widths(widths: tuple, width_scale: float) -> tuple:
    """Each width times ``width_scale``, rounded, at least 1: (64, 256, 256) x 0.5 -> (32, 128,
    128)."""
    if isinstance(width_scale, bool) or not isinstance(width_scale, (int, float)) \
            or not 0 < width_scale < float("inf"):
        raise ValueError(f"width_scale must be a positive number (1: the published widths), not "
                         f"{width_scale!r}.")
    return tuple(max(1, round(w * width_scale)) for w in widths)


class conv_bn_relu(nn.Module):
    """ResNet-9's unit: conv3x3 (no bias), BN, ReLU: (N, C_in, H, W) -> (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = conv3x3(in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class residual_pair(nn.Module):
    """ResNet-9's residual: x + res2(res1(x)), two conv_bn_relu of one width."""

    def __init__(self, channels: int):
        super().__init__()
        self.res1 = conv_bn_relu(channels, channels)
        self.res2 = conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class resnet9_layer(nn.Module):
    """A wider conv_bn_relu, a 2x2 max-pool, then (layers 1 and 3) a residual pair:
    (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.residual = residual_pair(out_channels) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))
        return x if self.residual is None else self.residual(x)


class resnet9(Network):
    """The ResNet-9 of DAWNBench (Page 2018, "How to train your ResNet" part 4):
    (N, 3, 32, 32) float -> (N, num_classes) logits.

    prep conv_bn_relu 64; layer1 128 + pool + residual pair; layer2 256 + pool; layer3 512 + pool +
    residual pair; global max-pool; linear without bias; logits times 0.125. PyTorch's default
    initialization, as published.
    """

    def __init__(self, num_classes: int = 10, width_scale: float = 1.0):
        super().__init__()
        _check_num_classes(num_classes)
        prep, w1, w2, w3 = scaled_widths(RESNET9_WIDTHS, width_scale)
        self.prep = conv_bn_relu(3, prep)
        self.layer1 = resnet9_layer(prep, w1, residual=True)
        self.layer2 = resnet9_layer(w1, w2, residual=False)
        self.layer3 = resnet9_layer(w2, w3, residual=True)
        self.head = nn.Linear(w3, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prep(x)  # (N, 64, 32, 32)
        x = self.layer1(x)  # (N, 128, 16, 16)
        x = self.layer2(x)  # (N, 256, 8, 8)
        x = self.layer3(x)  # (N, 512, 4, 4)
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)  # (N, 512)
        return self.head(x) * RESNET9_SCALE


class scale_free_batch_norm(nn.BatchNorm2d):
    """airbench's batch norm: its scale is fixed at 1 (``weight.requires_grad`` False), only the
    bias learns; momentum and eps as airbench94."""

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=AIRBENCH_BN_EPS, momentum=AIRBENCH_BN_MOMENTUM)
        self.weight.requires_grad_(False)


def dirac_conv(in_channels: int, out_channels: int, kernel_size: int = 3, padding="same",
               bias: bool = False) -> nn.Conv2d:
    """A convolution initialized as airbench94's: PyTorch's default, then the first
    ``in_channels`` filters the identity (dirac), and a zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(in_channels, out_channels)])
        if bias:
            conv.bias.zero_()
    return conv


class conv_group(nn.Module):
    """airbench's block: conv3x3, max-pool 2, BN, GELU, conv3x3, BN, GELU:
    (N, C_in, H, W) -> (N, C_out, H/2, W/2) (rounded down)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = dirac_conv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = scale_free_batch_norm(out_channels)
        self.conv2 = dirac_conv(out_channels, out_channels)
        self.norm2 = scale_free_batch_norm(out_channels)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))

        return self.activ(self.norm2(self.conv2(x)))


class airbench(Network):
    """The whitened convnet of airbench94 (Jordan 2024, arXiv 2404.00498):
    (N, 3, 32, 32) float -> (N, num_classes) logits.

    ``whiten``: a 2x2 convolution without padding, 3 -> 24 with a bias, then GELU; three
    conv_groups (64, 256, 256 wide); a global max-pool; a linear layer without bias; logits times
    1/9. With ``whiten=True`` the first layer's weight is fixed (the trainer sets it from the
    training images' patch covariance, trainer/training/whitening.py); otherwise it learns.
    """

    def __init__(self, num_classes: int = 10, width_scale: float = 1.0, whiten: bool = False):
        super().__init__()
        _check_num_classes(num_classes)
        widths = scaled_widths(AIRBENCH_WIDTHS, width_scale)
        whitened = 2 * 3 * WHITENING_KERNEL ** 2  # each patch direction and its negative
        self.whiten = dirac_conv(3, whitened, WHITENING_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(not whiten)
        self.activ = nn.GELU()
        groups, in_channels = [], whitened
        for width in widths:
            groups.append(conv_group(in_channels, width))
            in_channels = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(in_channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.whiten(x))  # (N, 24, 31, 31)
        x = self.groups(x)  # (N, 256, 3, 3)
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)  # (N, 256)
        return self.head(x) * AIRBENCH_SCALE


def _conv_act_pool(in_channels: int, out_channels: int, kernel_size: int, padding: int,
                   batch_norm: bool, activation: str) -> list:
    """conv (with bias), [BN], activation, 2x2 max-pool."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM))
    return layers + [make_activation(activation), nn.MaxPool2d(2)]


def init_weights(net: nn.Module) -> None:
    """He et al. initialization for convolutions; BN starts as the identity."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, not {num_classes!r}.")


def check_resnet_options(downsample: str, shortcut: str, activation: str) -> None:
    """Refuse unknown variants with a sentence naming the valid ones."""
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLES)} (a: stride on a "
                         f"bottleneck's first 1x1, b: on its 3x3, d: b plus an average pool before "
                         f"the projection), not {downsample!r}.")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, not {shortcut!r}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}.")
    if downsample == "d" and shortcut == "pad":
        raise ValueError("downsample 'd' average-pools before a projection shortcut, so it needs "
                         "shortcut='projection'; with shortcut='pad' use downsample 'a' or 'b'.")


def build_network(network: str = "resnet", resnet_version: int = 1, resnet_size: int = 3,
                  num_classes: int = 10, first_num_filters: int = 16, batch_norm: bool = False,
                  downsample: str = "b", shortcut: str = "projection",
                  activation: str = "relu", width_scale: float = 1.0,
                  whiten: bool = False) -> nn.Module:
    """The network named by ``network``: (N, 3, 32, 32) -> (N, num_classes).

    ``resnet_version``, ``resnet_size`` and ``first_num_filters`` shape ``"resnet"`` only;
    ``downsample`` and ``shortcut`` shape the course ResNets only, ``batch_norm`` the simple
    networks only (the ResNets always normalize), and ``activation`` the course networks only
    (resnet9 has ReLU, airbench GELU, as published). ``width_scale`` shapes resnet9 and airbench,
    ``whiten`` (a fixed first layer) airbench only. Each is still checked, and ignored where it
    does not apply, so that one configuration can carry all of them.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}.")
    check_resnet_options(downsample, shortcut, activation)
    if network in ("simple_nn", "simple_cnn"):
        net_class = simple_nn if network == "simple_nn" else simple_cnn
        return net_class(num_classes, batch_norm=batch_norm, activation=activation)
    if network == "resnet18":
        return resnet18(num_classes, downsample=downsample, shortcut=shortcut, activation=activation)
    scaled_widths((1,), width_scale)  # checked everywhere, like the options above
    if network == "resnet9":
        return resnet9(num_classes, width_scale)
    if network == "airbench":
        return airbench(num_classes, width_scale, whiten=whiten)
    return ResNet(resnet_version, resnet_size, num_classes, first_num_filters,
                  downsample=downsample, shortcut=shortcut, activation=activation)


if __name__ == "__main__":
    for version, size in ((1, 3), (1, 5), (1, 7), (1, 9), (1, 18), (2, 18)):
        for shortcut in SHORTCUTS:
            net = ResNet(version, size, shortcut=shortcut)
            print(f"ResNet-{depth_of(version, size)} v{version} {shortcut}: "
                  f"{net.num_params():,} parameters")
    for name in NETWORKS[1:]:
        for classes in (10, 100):
            print(f"{name} ({classes} classes): "
                  f"{build_network(name, num_classes=classes).num_params():,} parameters")
    for name in ("resnet9", "airbench"):
        for scale in (1.0, 0.5):
            net = build_network(name, width_scale=scale)
            trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
            print(f"{name} width_scale {scale:g}: {net.num_params():,} parameters "
                  f"({trained:,} trained)")
