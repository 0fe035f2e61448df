"""NetWork.py: the published architectures, their sizes, shapes and state-dict names."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import NetWork
from NetWork import ResNet, bottleneck_block, build_network, depth_of, pad_shortcut, standard_block


@pytest.mark.parametrize("version, size, expected", [
    (1, 3, 272_474),     # ResNet-20
    (1, 9, 855_770),     # ResNet-56
    (1, 18, 1_730_714),  # ResNet-110
    (2, 18, 1_703_258),  # ResNet-164
])
def test_parameter_counts_match_the_published_table(version, size, expected):
    net = ResNet(version, size, num_classes=10)
    assert net.num_params() == expected
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("version, size, depth", [(1, 1, 8), (1, 3, 20), (1, 9, 56), (1, 18, 110),
                                                  (2, 1, 11), (2, 18, 164)])
def test_depth_counts_weighted_layers_on_the_main_path(version, size, depth):
    assert depth_of(version, size) == depth
    net = ResNet(version, size)
    # The paper's depth counts the convolutions on the main path plus the final linear layer;
    # 1x1 projection shortcuts are not counted.
    convs = [m for name, m in net.named_modules()
             if isinstance(m, nn.Conv2d) and "projection" not in name]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth


@pytest.mark.parametrize("version, channels", [(1, 64), (2, 256)])
def test_output_and_feature_shapes(version, channels):
    torch.manual_seed(0)
    net = ResNet(version, 1, num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        stem = net.start_layer(x)
        assert stem.shape == (3, 16, 32, 32)
        s0 = net.stack_layers[0](stem)
        s1 = net.stack_layers[1](s0)
        s2 = net.stack_layers[2](s1)
        expansion = 1 if version == 1 else 4
        assert s0.shape == (3, 16 * expansion, 32, 32)
        assert s1.shape == (3, 32 * expansion, 16, 16)
        assert s2.shape == (3, 64 * expansion, 8, 8)
        assert s2.shape[1] == channels
        assert net.stack_layers(stem).shape == (3, channels, 8, 8)
        logits = net(x)
    assert logits.shape == (3, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("version", [1, 2])
def test_other_class_counts_and_widths(version):
    net = ResNet(version, 1, num_classes=7, first_num_filters=8)
    net.train()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert net.output_layer.fc.in_features == 32 * (1 if version == 1 else 4)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, False, "3", None])
def test_invalid_resnet_size_is_refused_with_an_explanation(bad):
    with pytest.raises(ValueError) as info:
        ResNet(1, bad)
    msg = str(info.value)
    assert "resnet_size" in msg
    assert "positive integer" in msg
    assert repr(bad) in msg


@pytest.mark.parametrize("bad", [0, 3, -1, "1", 1.5, None])
def test_invalid_resnet_version_is_refused_with_an_explanation(bad):
    with pytest.raises(ValueError) as info:
        ResNet(bad, 3)
    msg = str(info.value)
    assert "resnet_version" in msg
    assert "1" in msg and "2" in msg
    assert repr(bad) in msg


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"num_classes": 0}, {"num_classes": True},
                                    {"first_num_filters": 0}, {"first_num_filters": 2.0}])
def test_invalid_width_or_class_count_is_refused(kwargs):
    with pytest.raises(ValueError) as info:
        ResNet(1, 1, **kwargs)
    assert next(iter(kwargs)) in str(info.value)


def test_v1_projection_shortcuts_have_batch_norm_exactly_where_shape_changes():
    net = ResNet(1, 2)
    for i, stack in enumerate(net.stack_layers):
        for j, block in enumerate(stack.blocks):
            assert isinstance(block, standard_block)
            changes_shape = i > 0 and j == 0
            if changes_shape:
                assert isinstance(block.projection, nn.Sequential)
                conv, bn = block.projection
                assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
                assert conv.stride == (2, 2)
                assert conv.in_channels == 16 * 2 ** (i - 1)
                assert conv.out_channels == 16 * 2 ** i
                assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 16 * 2 ** i
            else:
                assert block.projection is None
    # v1 ends with pooling and a linear layer only (the blocks are post-activation).
    assert net.output_layer.bn_relu is None
    # and the stem is conv-BN-ReLU
    assert isinstance(net.start_layer[0], nn.Conv2d)
    assert isinstance(net.start_layer[1], NetWork.batch_norm_relu_layer)


def test_v2_bottlenecks_expand_four_times_and_network_ends_with_bn_relu():
    net = ResNet(2, 2)
    in_channels = 16
    for i, stack in enumerate(net.stack_layers):
        filters = 16 * 2 ** i
        for j, block in enumerate(stack.blocks):
            assert isinstance(block, bottleneck_block)
            assert block.conv1.out_channels == filters
            assert block.conv2.out_channels == filters
            assert block.conv3.out_channels == 4 * filters
            assert block.conv2.stride == ((2, 2) if i > 0 and j == 0 else (1, 1))
            if j == 0:  # width changes in every first block (16 -> 64, 64 -> 128, 128 -> 256)
                assert isinstance(block.projection, nn.Conv2d)
                assert block.projection.in_channels == in_channels
                assert block.projection.out_channels == 4 * filters
            else:
                assert block.projection is None
            in_channels = 4 * filters
    assert isinstance(net.output_layer.bn_relu, NetWork.batch_norm_relu_layer)
    assert net.output_layer.bn_relu.bn.num_features == 256
    assert len(net.start_layer) == 1 and isinstance(net.start_layer[0], nn.Conv2d)


def _randomize_bn(module, gen):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("in_channels, filters, stride", [(16, 16, 1), (16, 32, 2)])
def test_standard_block_computes_post_activation_residual(in_channels, filters, stride):
    gen = torch.Generator().manual_seed(1)
    block = standard_block(in_channels, filters, stride)
    _randomize_bn(block, gen)
    block.eval()
    x = torch.randn(2, in_channels, 8, 8, generator=gen)
    x_copy = x.clone()
    with torch.no_grad():
        out = block(x)
        h = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn_relu1.bn))
        h = _bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
        if block.projection is None:
            shortcut = x
        else:
            shortcut = _bn(F.conv2d(x, block.projection[0].weight, stride=stride), block.projection[1])
        expected = F.relu(h + shortcut)
    assert torch.equal(x, x_copy), "the block must not modify its input"
    assert out.shape == expected.shape == (2, filters, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_channels, filters, stride", [(64, 16, 1), (16, 16, 1), (64, 32, 2)])
def test_bottleneck_block_computes_full_pre_activation(in_channels, filters, stride):
    gen = torch.Generator().manual_seed(2)
    block = bottleneck_block(in_channels, filters, stride)
    _randomize_bn(block, gen)
    block.eval()
    x = torch.randn(2, in_channels, 8, 8, generator=gen)
    x_copy = x.clone()
    with torch.no_grad():
        out = block(x)
        pre = F.relu(_bn(x, block.bn_relu1.bn))
        h = F.conv2d(pre, block.conv1.weight)
        h = F.conv2d(F.relu(_bn(h, block.bn_relu2.bn)), block.conv2.weight, stride=stride, padding=1)
        h = F.conv2d(F.relu(_bn(h, block.bn_relu3.bn)), block.conv3.weight)
        shortcut = x if block.projection is None else F.conv2d(pre, block.projection.weight,
                                                               stride=stride)
        expected = h + shortcut
    assert torch.equal(x, x_copy), "the identity shortcut must carry x untouched"
    assert (block.projection is None) == (in_channels == 4 * filters and stride == 1)
    assert out.shape == (2, 4 * filters, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_seeded_construction_is_deterministic(version):
    torch.manual_seed(123)
    a = ResNet(version, 1)
    torch.manual_seed(123)
    b = ResNet(version, 1)
    torch.manual_seed(124)
    c = ResNet(version, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb) == list(sc)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_initialization_he_normal_and_identity_batch_norm():
    torch.manual_seed(0)
    net = ResNet(1, 3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    conv = net.stack_layers[2].blocks[1].conv1  # 64 -> 64, 3x3: fan_out = 64 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("version", [1, 2])
def test_state_dict_names_are_the_published_format(version):
    sd = ResNet(version, 2).state_dict()
    tops = {k.split(".")[0] for k in sd}
    assert tops == {"start_layer", "stack_layers", "output_layer"}
    assert "start_layer.0.weight" in sd
    assert "output_layer.fc.weight" in sd and "output_layer.fc.bias" in sd
    assert sd["output_layer.fc.weight"].shape == (10, 64 * (1 if version == 1 else 4))
    for i in range(3):
        for j in range(2):
            assert f"stack_layers.{i}.blocks.{j}.conv1.weight" in sd
            assert f"stack_layers.{i}.blocks.{j}.conv2.weight" in sd
    for k in sd:
        if k.startswith("stack_layers"):
            parts = k.split(".")
            assert parts[2] == "blocks" and parts[1] in "012" and parts[3].isdigit(), k
    if version == 1:
        assert "start_layer.1.bn.running_mean" in sd
        assert "stack_layers.1.blocks.0.projection.0.weight" in sd
        assert "stack_layers.1.blocks.0.projection.1.running_var" in sd
        assert "stack_layers.0.blocks.0.bn2.weight" in sd
    else:
        assert "stack_layers.0.blocks.0.projection.weight" in sd
        assert "stack_layers.0.blocks.0.conv3.weight" in sd
        assert "output_layer.bn_relu.bn.weight" in sd


def test_state_dict_round_trips_between_instances():
    torch.manual_seed(5)
    a = ResNet(2, 1).eval()
    torch.manual_seed(6)
    b = ResNet(2, 1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(a(x), b(x))


def test_train_mode_backward_reaches_every_parameter():
    torch.manual_seed(0)
    for version in (1, 2):
        net = ResNet(version, 1).train()
        loss = F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


# ---------------------------------------------------------------------------------------------
# build_network: the other networks and the ResNet variants (issue 10).

X2 = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)

# Outputs of ResNet(version, 1).eval() built after torch.manual_seed(0), on X2, computed with the
# code committed before build_network existed (git show 8042760:NetWork.py), rounded to 6 places.
OLD_OUTPUTS = {
    1: [0.018806, -0.093964, -0.038992, -0.090646, -0.088711, -0.116262, -0.150406, -0.036247,
        -0.065927, 0.116458, -0.060015, -0.002001, 0.005894, -0.020366, -0.105587, -0.038593,
        -0.100628, -0.020654, -0.042304, 0.184129],
    2: [0.076701, -7e-05, -0.146581, 0.143054, -0.098988, -0.017091, -0.023441, -0.025996,
        -0.031277, 0.103044, -0.011071, -0.062882, -0.064595, 0.219443, -0.033859, -0.02279,
        -0.035986, -0.134511, -0.010452, 0.042484],
}


@pytest.mark.parametrize("version", [1, 2])
def test_default_build_network_is_the_published_resnet_with_unchanged_outputs(version):
    torch.manual_seed(0)
    built = build_network("resnet", version, 1, 10, 16).eval()
    torch.manual_seed(0)
    direct = ResNet(version, 1, 10, 16).eval()
    sb, sd = built.state_dict(), direct.state_dict()
    assert type(built) is ResNet
    assert list(sb) == list(sd)
    assert all(torch.equal(sb[k], sd[k]) for k in sd)
    with torch.no_grad():
        out = built(X2)
    expected = torch.tensor(OLD_OUTPUTS[version]).reshape(2, 10)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-6)


# Hand counts. Convolutions and linear layers have weight + bias; BN adds 2 * channels.
#   simple_nn:  conv 3*8*25+8 = 608, conv 8*16*9+16 = 1,168, fc 576*120+120 = 69,240,
#               fc 120*84+84 = 10,164, fc 84*C+C (850 for 10, 8,500 for 100)
#               -> 82,030 / 89,680; batch_norm adds 2*8 + 2*16 = 48 -> 82,078 / 89,728.
#   simple_cnn: conv 3*32*9+32 = 896, conv 32*64*9+64 = 18,496, fc 4096*256+256 = 1,048,832,
#               fc 256*C+C (2,570 / 25,700) -> 1,070,794 / 1,093,924;
#               batch_norm adds 2*32 + 2*64 = 192 -> 1,070,986 / 1,094,116.
#   pad drops the projections (1x1 conv, + BN in v1 and resnet18):
#     ResNet-164 v2: 16*64 + 64*128 + 128*256 = 41,984 -> 1,703,258 - 41,984 = 1,661,274.
#     resnet18: 64*128 + 2*128 + 128*256 + 2*256 + 256*512 + 2*512 = 173,824
#               -> 11,173,962 - 173,824 = 11,000,138.
@pytest.mark.parametrize("kwargs, expected", [
    (dict(network="simple_nn"), 82_030),
    (dict(network="simple_nn", num_classes=100), 89_680),
    (dict(network="simple_nn", batch_norm=True), 82_078),
    (dict(network="simple_nn", batch_norm=True, num_classes=100), 89_728),
    (dict(network="simple_cnn"), 1_070_794),
    (dict(network="simple_cnn", num_classes=100), 1_093_924),
    (dict(network="simple_cnn", batch_norm=True), 1_070_986),
    (dict(network="simple_cnn", batch_norm=True, num_classes=100), 1_094_116),
    (dict(network="resnet18"), 11_173_962),
    (dict(network="resnet18", num_classes=100), 11_220_132),
    (dict(network="resnet18", shortcut="pad"), 11_000_138),
    (dict(resnet_size=3, shortcut="pad"), 269_722),     # ResNet-20, option A (akamaster)
    (dict(resnet_size=9, shortcut="pad"), 853_018),     # ResNet-56
    (dict(resnet_size=18, shortcut="pad"), 1_727_962),  # ResNet-110
    (dict(resnet_version=2, resnet_size=18, shortcut="pad"), 1_661_274),  # ResNet-164
    (dict(resnet_size=3, downsample="a"), 272_474),
    (dict(resnet_size=3, downsample="b"), 272_474),
    (dict(resnet_size=3, downsample="d"), 272_474),
    (dict(resnet_version=2, resnet_size=18, downsample="a"), 1_703_258),
    (dict(resnet_version=2, resnet_size=18, downsample="b"), 1_703_258),
    (dict(resnet_version=2, resnet_size=18, downsample="d"), 1_703_258),
    (dict(resnet_version=2, resnet_size=18, downsample="a", shortcut="pad"), 1_661_274),
    (dict(resnet_size=3, activation="swish"), 272_474),
    (dict(network="resnet18", activation="swish"), 11_173_962),
])
def test_parameter_counts_of_every_network_and_variant(kwargs, expected):
    net = build_network(**kwargs)
    assert sum(p.numel() for p in net.parameters()) == expected


NETWORK_KWARGS = [dict(network="simple_nn"), dict(network="simple_nn", batch_norm=True),
                  dict(network="simple_cnn"), dict(network="simple_cnn", batch_norm=True),
                  dict(network="resnet18"), dict(resnet_version=1, resnet_size=1),
                  dict(resnet_version=2, resnet_size=1)]


@pytest.mark.parametrize("kwargs", NETWORK_KWARGS)
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_output_shapes_for_10_and_100_classes(kwargs, num_classes, activation):
    torch.manual_seed(0)
    net = build_network(num_classes=num_classes, activation=activation, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs", NETWORK_KWARGS + [dict(resnet_version=2, resnet_size=1,
                                                          shortcut="pad", downsample="a")])
def test_swish_replaces_every_relu(kwargs):
    relu_net = build_network(activation="relu", **kwargs).eval()
    swish_net = build_network(activation="swish", **kwargs).eval()
    n_relu = sum(isinstance(m, nn.ReLU) for m in relu_net.modules())
    assert n_relu > 0
    assert not any(isinstance(m, nn.SiLU) for m in relu_net.modules())
    assert not any(isinstance(m, nn.ReLU) for m in swish_net.modules())
    assert sum(isinstance(m, nn.SiLU) for m in swish_net.modules()) == n_relu
    # Same weights, other activation: the outputs differ, so the SiLUs are on the path.
    swish_net.load_state_dict(relu_net.state_dict(), strict=True)
    with torch.no_grad():
        assert not torch.allclose(relu_net(X2), swish_net(X2))


@pytest.mark.parametrize("in_channels, out_channels, stride", [(16, 32, 2), (16, 64, 1), (8, 8, 2)])
def test_pad_shortcut_subsamples_and_zero_pads_without_parameters(in_channels, out_channels, stride):
    shortcut = pad_shortcut(in_channels, out_channels, stride)
    assert list(shortcut.parameters()) == [] and shortcut.state_dict() == {}
    x = torch.randn(2, in_channels, 8, 8)
    sub = x[:, :, ::stride, ::stride]
    zeros = torch.zeros(2, out_channels - in_channels, 8 // stride, 8 // stride)
    assert torch.equal(shortcut(x), torch.cat([sub, zeros], dim=1))


@pytest.mark.parametrize("version", [1, 2])
def test_pad_networks_use_named_pad_shortcuts_and_pickle(version):
    import io
    import pickle
    net = ResNet(version, 1, shortcut="pad")
    shortcuts = [b.projection for s in net.stack_layers for b in s.blocks if b.projection is not None]
    # v1 changes shape in stacks 1 and 2; v2 also in stack 0 (16 -> 64 channels, stride 1).
    assert len(shortcuts) == (2 if version == 1 else 3)
    assert all(type(s) is pad_shortcut for s in shortcuts)
    assert not any("projection" in name for name, _ in net.named_parameters())
    if version == 1:  # no 1x1 convolution is left anywhere
        assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules())
    clone = pickle.loads(pickle.dumps(net)).eval()
    torch.save(net, io.BytesIO())
    net.eval()
    with torch.no_grad():
        assert torch.equal(clone(X2), net(X2))


def _bottleneck_by_hand(block, x, stride, downsample, shortcut):
    pre = F.relu(_bn(x, block.bn_relu1.bn))
    s1, s2 = (stride, 1) if downsample == "a" else (1, stride)
    h = F.conv2d(pre, block.conv1.weight, stride=s1)
    h = F.conv2d(F.relu(_bn(h, block.bn_relu2.bn)), block.conv2.weight, stride=s2, padding=1)
    h = F.conv2d(F.relu(_bn(h, block.bn_relu3.bn)), block.conv3.weight)
    if block.projection is None:
        identity = x
    elif shortcut == "pad":
        sub = pre[:, :, ::stride, ::stride]
        extra = block.conv3.out_channels - x.shape[1]
        identity = torch.cat([sub, sub.new_zeros(sub.shape[0], extra, *sub.shape[2:])], dim=1)
    elif downsample == "d" and stride == 2:
        identity = F.conv2d(F.avg_pool2d(pre, 2, 2), block.projection[1].weight)
    else:
        identity = F.conv2d(pre, block.projection.weight, stride=stride)
    return h + identity


@pytest.mark.parametrize("downsample, shortcut", [("a", "projection"), ("d", "projection"),
                                                  ("b", "pad"), ("a", "pad")])
@pytest.mark.parametrize("in_channels, filters, stride", [(16, 16, 1), (64, 32, 2), (64, 16, 1)])
def test_bottleneck_variants_compute_their_definition(downsample, shortcut, in_channels, filters,
                                                      stride):
    gen = torch.Generator().manual_seed(3)
    block = bottleneck_block(in_channels, filters, stride, downsample, shortcut)
    _randomize_bn(block, gen)
    block.eval()
    x = torch.randn(2, in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        out = block(x)
        expected = _bottleneck_by_hand(block, x, stride, downsample, shortcut)
    assert out.shape == (2, 4 * filters, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("downsample, shortcut", [("d", "projection"), ("b", "pad")])
def test_standard_block_variants_compute_their_definition(downsample, shortcut):
    gen = torch.Generator().manual_seed(4)
    block = standard_block(16, 32, 2, downsample, shortcut)
    _randomize_bn(block, gen)
    block.eval()
    x = torch.randn(2, 16, 8, 8, generator=gen)
    with torch.no_grad():
        out = block(x)
        h = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn_relu1.bn))
        h = _bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
        if shortcut == "pad":
            identity = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1)
        else:
            pool, conv, bn = block.projection
            identity = _bn(F.conv2d(F.avg_pool2d(x, 2, 2), conv.weight), bn)
        expected = F.relu(h + identity)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def _first_blocks(net):
    return [stack.blocks[0] for stack in net.stack_layers]


def test_v2_downsample_variants_put_the_stride_where_the_issue_says():
    for downsample in "abd":
        net = ResNet(2, 1, downsample=downsample)
        for i, block in enumerate(_first_blocks(net)):
            s = 1 if i == 0 else 2
            expected_conv1, expected_conv2 = ((s, s), (1, 1)) if downsample == "a" else ((1, 1), (s, s))
            assert block.conv1.stride == expected_conv1, (downsample, i)
            assert block.conv2.stride == expected_conv2, (downsample, i)
            assert block.conv3.stride == (1, 1)
            if downsample == "d" and s == 2:
                pool, conv = block.projection
                assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
                assert isinstance(conv, nn.Conv2d) and conv.stride == (1, 1)
            else:  # a, b, and d's stride-1 first stack: a lone strided 1x1 projection
                assert isinstance(block.projection, nn.Conv2d)
                assert block.projection.stride == (s, s)


def test_v1_downsample_a_equals_b_and_d_pools_before_the_projection():
    torch.manual_seed(0)
    a = ResNet(1, 1, downsample="a").eval()
    torch.manual_seed(0)
    b = ResNet(1, 1, downsample="b").eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a(X2), b(X2))
    d = ResNet(1, 1, downsample="d")
    for i, block in enumerate(_first_blocks(d)):
        assert block.conv1.stride == ((1, 1) if i == 0 else (2, 2))
        assert block.conv2.stride == (1, 1)
        if i == 0:
            assert block.projection is None
        else:
            pool, conv, bn = block.projection
            assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
            assert isinstance(conv, nn.Conv2d) and conv.stride == (1, 1)
            assert isinstance(bn, nn.BatchNorm2d)


def test_resnet18_is_adapted_to_32x32_inputs():
    net = build_network("resnet18").eval()
    assert [type(m) for m in net.stem] == [nn.Conv2d, NetWork.batch_norm_relu_layer]
    conv = net.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.out_channels == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert [len(stage.blocks) for stage in net.stages] == [2, 2, 2, 2]
    for stage, (filters, stride) in zip(net.stages, [(64, 1), (128, 2), (256, 2), (512, 2)]):
        first = stage.blocks[0]
        assert first.conv1.out_channels == filters and first.conv1.stride == (stride, stride)
        assert (first.projection is None) == (stride == 1)
        if first.projection is not None:
            assert isinstance(first.projection[1], nn.BatchNorm2d)
    with torch.no_grad():
        assert net.stages(net.stem(X2)).shape == (2, 512, 4, 4)


@pytest.mark.parametrize("kwargs, words", [
    (dict(network="vgg"), ["network", "simple_nn", "simple_cnn", "resnet18", "'vgg'"]),
    (dict(downsample="c"), ["downsample", "a, b, d", "'c'"]),
    (dict(shortcut="identity"), ["shortcut", "projection, pad", "'identity'"]),
    (dict(activation="gelu"), ["activation", "relu, swish", "'gelu'"]),
    (dict(downsample="d", shortcut="pad"), ["projection", "'a' or 'b'"]),
    (dict(network="simple_nn", shortcut="Pad"), ["shortcut", "projection, pad", "'Pad'"]),
    (dict(network="simple_cnn", activation="ReLU"), ["activation", "relu, swish", "'ReLU'"]),
    (dict(network="simple_nn", num_classes=1), ["num_classes"]),
    (dict(network="resnet18", num_classes=True), ["num_classes"]),
])
def test_build_network_refuses_unknown_values_with_a_sentence(kwargs, words):
    with pytest.raises(ValueError) as info:
        build_network(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_options_that_do_not_apply_are_ignored():
    # One configuration carries every option; each network takes the ones that shape it.
    torch.manual_seed(0)
    plain = build_network("resnet", 1, 1)
    torch.manual_seed(0)
    with_bn_flag = build_network("resnet", 1, 1, batch_norm=True)
    assert list(plain.state_dict()) == list(with_bn_flag.state_dict())
    for name in ("simple_nn", "simple_cnn"):
        torch.manual_seed(0)
        a = build_network(name, downsample="d", resnet_version=2, first_num_filters=8)
        torch.manual_seed(0)
        b = build_network(name)
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# The speed networks: resnet9 (DAWNBench) and airbench (airbench94)

def conv_weights(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k


def resnet9_count_by_hand(prep: int, w1: int, w2: int, w3: int, classes: int = 10) -> int:
    """Convolutions without bias, batch norm with a scale and a bias (2 per channel), the linear
    head without bias."""
    unit = lambda c_in, c_out: conv_weights(c_in, c_out) + 2 * c_out  # noqa: E731
    return (unit(3, prep)
            + unit(prep, w1) + 2 * unit(w1, w1)  # layer1 and its residual pair
            + unit(w1, w2)  # layer2
            + unit(w2, w3) + 2 * unit(w3, w3)  # layer3 and its residual pair
            + w3 * classes)


def airbench_count_by_hand(w1: int, w2: int, w3: int, classes: int = 10):
    """(all parameters, those trained): the 2x2 whitening conv 3 -> 24 with bias; per group two
    convolutions without bias and two batch norms of a bias each, their scales held at 1; the
    linear head without bias."""
    whiten = conv_weights(3, 24, 2) + 24  # 288 + 24
    groups = [(24, w1), (w1, w2), (w2, w3)]
    trained = whiten + sum(conv_weights(a, b) + conv_weights(b, b) + 2 * b for a, b in groups) \
        + w3 * classes
    fixed_scales = sum(2 * b for _, b in groups)
    return trained + fixed_scales, trained


def trained_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("width_scale, widths, expected", [
    (1.0, (64, 128, 256, 512), 6_573_120),  # the published ResNet-9's 6.57M
    (0.5, (32, 64, 128, 256), 1_646_112),
])
def test_resnet9_parameter_count_by_hand(width_scale, widths, expected):
    assert resnet9_count_by_hand(*widths) == expected
    net = build_network("resnet9", width_scale=width_scale)
    assert net.num_params() == expected
    assert trained_params(net) == expected


@pytest.mark.parametrize("width_scale, widths, expected_all, expected_trained", [
    (1.0, (64, 256, 256), 1_972_792, 1_971_640),  # airbench94's ~2M
    (0.5, (32, 128, 128), 498_104, 497_528),
])
def test_airbench_parameter_count_by_hand(width_scale, widths, expected_all, expected_trained):
    assert airbench_count_by_hand(*widths) == (expected_all, expected_trained)
    net = build_network("airbench", width_scale=width_scale)
    assert net.num_params() == expected_all
    assert trained_params(net) == expected_trained
    whitened = build_network("airbench", width_scale=width_scale, whiten=True)
    assert trained_params(whitened) == expected_trained - conv_weights(3, 24, 2)


def test_resnet9_shapes_and_published_parts():
    torch.manual_seed(0)
    net = build_network("resnet9", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        prep = net.prep(x)
        l1 = net.layer1(prep)
        l2 = net.layer2(l1)
        l3 = net.layer3(l2)
        assert [t.shape[1:] for t in (prep, l1, l2, l3)] == [(64, 32, 32), (128, 16, 16),
                                                             (256, 8, 8), (512, 4, 4)]
        pooled = l3.amax(dim=(2, 3))  # global max-pool
        assert torch.allclose(net(x), net.head(pooled) * 0.125, atol=1e-6)
    assert net.layer2.residual is None and net.layer1.residual is not None
    assert net.head.bias is None
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 8 and all(m.momentum == 0.1 and m.eps == 1e-5 for m in bns)
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 8
    assert list(net.state_dict())[:3] == ["prep.conv.weight", "prep.bn.weight", "prep.bn.bias"]
    assert "layer3.residual.res2.conv.weight" in net.state_dict()


def test_airbench_shapes_and_published_parts():
    torch.manual_seed(0)
    net = build_network("airbench").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = net.activ(net.whiten(x))
        assert first.shape == (2, 24, 31, 31)  # 2x2, no padding
        g1 = net.groups[0](first)
        g2 = net.groups[1](g1)
        g3 = net.groups[2](g2)
        assert [t.shape[1:] for t in (g1, g2, g3)] == [(64, 15, 15), (256, 7, 7), (256, 3, 3)]
        assert torch.allclose(net(x), net.head(g3.amax(dim=(2, 3))) / 9, atol=1e-6)
    assert net.whiten.kernel_size == (2, 2) and net.whiten.bias is not None
    assert net.head.bias is None
    assert isinstance(net.activ, nn.GELU) and isinstance(net.groups[0].activ, nn.GELU)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6
    for bn in bns:  # airbench94: batchnorm_momentum 0.6 kept, i.e. torch's 0.4; eps 1e-12
        assert (bn.momentum, bn.eps) == (0.4, 1e-12)
        assert not bn.weight.requires_grad and torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert bn.bias.requires_grad
    # Identity (dirac) initialization: a group's second convolution passes its input through.
    conv2 = net.groups[0].conv2
    y = torch.randn(1, 64, 5, 5)
    assert torch.allclose(conv2(y), y)
    assert net.whiten.weight.requires_grad
    assert not build_network("airbench", whiten=True).whiten.weight.requires_grad
    assert list(net.state_dict())[:2] == ["whiten.weight", "whiten.bias"]
    assert "groups.2.norm2.bias" in net.state_dict()


@pytest.mark.parametrize("network", ["resnet9", "airbench"])
@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), True, "1"])
def test_speed_networks_refuse_bad_width_scales(network, bad):
    with pytest.raises(ValueError, match="width_scale must be a positive number"):
        build_network(network, width_scale=bad)
