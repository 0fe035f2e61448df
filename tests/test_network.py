"""NetWork.py: the published architectures, their sizes, shapes and state-dict names."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import NetWork
from NetWork import ResNet, bottleneck_block, depth_of, standard_block


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
