"""The speed networks in training: resnet9 and airbench as --network choices, the flags that shape
only some networks, and --whiten (trainer/training/whitening.py): the first layer decorrelates the
patches it sees, stays fixed, and a resumed run equals an uninterrupted one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configure import Config, ConfigError
from Model import MyModel, describe
from NetWork import build_network
from trainer.evaluation.evaluate import to_image_tensor
from trainer.parallel.distributed import convert_sync_batchnorm
from trainer.training import whitening


def smooth_images(n: int, seed: int = 0):
    """(N, 3072) uint8 rows whose neighbouring pixels and channels are strongly correlated (4x4
    blocks shared by the channels, plus noise), and (N,) labels: patches far from white."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 1, 8, 8)) * 50 + rng.normal(size=(n, 3, 8, 8)) * 20
    images = np.kron(coarse, np.ones((1, 1, 4, 4))) + rng.normal(size=(n, 3, 32, 32)) * 15 + 128
    rows = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3 * 32 * 32)
    return rows, rng.integers(0, 10, n)


def airbench_config(modeldir, **overrides) -> Config:
    values = dict(network="airbench", width_scale=0.125, whiten=True, batch_size=8, max_epoch=1,
                  save_interval=100, lr_decay_epochs=(), device="cpu", modeldir=str(modeldir),
                  eval_batch_size=64, amp="off")  # fp32: --amp auto would time bf16
    values.update(overrides)
    return Config(**values)


def patch_rows(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N * (H - 1) * (W - 1), 12) float64 2x2 patches, in the weight's order."""
    return whitening.patches(images.double(), 2)


def covariance(rows: torch.Tensor) -> torch.Tensor:
    centred = rows - rows.mean(0)
    return centred.T @ centred / (len(rows) - 1)


@pytest.mark.parametrize("normalize", ["per_image", "dataset"])
def test_whitened_first_layer_decorrelates_the_patches_and_stays_fixed(tmp_path, normalize):
    x, y = smooth_images(64)
    model = MyModel(airbench_config(tmp_path, normalize=normalize), log=lambda *a: None)
    model.train(x, y)  # one epoch: whitened before it, and the weight must not move in it
    seen = model.runtime.prepare_images(to_image_tensor(x), False)  # as the network sees them
    inputs = covariance(patch_rows(seen))
    off_diagonal = inputs - torch.diag(torch.diag(inputs))
    assert off_diagonal.abs().max() > 0.5  # far from white to begin with

    weight = model.network.whiten.weight.detach().double()  # (24, 3, 2, 2)
    outputs = F.conv2d(seen.double(), weight)  # without the (trained) bias: (N, 24, 31, 31)
    rows = outputs.permute(0, 2, 3, 1).reshape(-1, 24)
    whitened = covariance(rows[:, :12])
    assert (whitened - torch.eye(12, dtype=torch.float64)).abs().max() < 0.01
    assert torch.allclose(rows[:, 12:], -rows[:, :12])  # the negatives

    fresh = whitening.whiten(torch.nn.Conv2d(3, 24, 2), seen)
    assert fresh[0] > fresh[-1] > 0  # eigenvalues, largest first
    again = torch.nn.Conv2d(3, 24, 2)
    whitening.whiten(again, seen)
    assert torch.equal(again.weight, model.network.whiten.weight)  # trained, it never moved


def test_an_ema_starts_from_the_whitened_layer(tmp_path):
    x, y = smooth_images(32)
    model = MyModel(airbench_config(tmp_path, ema=0.9), log=lambda *a: None)
    model.train(x, y)
    assert torch.allclose(model.ema.network.whiten.weight, model.network.whiten.weight,
                          rtol=1e-5, atol=1e-6)


def test_lookahead_keeps_the_whitened_layer(tmp_path):
    # Lookahead sets the network to its slow copy every few steps; a copy taken before whitening
    # would pull the fixed layer back toward its random start.
    x, y = smooth_images(32)
    model = MyModel(airbench_config(tmp_path, lookahead=True, lookahead_every=2),
                    log=lambda *a: None)
    model.train(x, y)
    expected = torch.nn.Conv2d(3, 24, 2)
    whitening.whiten(expected, model.runtime.prepare_images(to_image_tensor(x), False))
    assert torch.equal(model.network.whiten.weight, expected.weight)


def state_and_optimizer(model: MyModel) -> dict:
    out = {f"model/{k}": v for k, v in model.network.state_dict().items()}
    for i, s in model.optimizer.state_dict()["state"].items():
        out.update({f"optimizer/{i}/{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def test_resumed_whitened_run_is_bit_identical_and_not_whitened_again(tmp_path, monkeypatch):
    x, y = smooth_images(32)  # 4 steps an epoch
    straight = MyModel(airbench_config(tmp_path / "straight", max_epoch=2), log=lambda *a: None)
    straight.train(x, y)

    split = tmp_path / "split"
    MyModel(airbench_config(split, max_epoch=1, save_interval=1), log=lambda *a: None).train(x, y)

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run must take its first layer from the checkpoint")

    monkeypatch.setattr(whitening, "whiten", refuse)
    resumed = MyModel(airbench_config(split, max_epoch=2, save_interval=1), log=lambda *a: None)
    resumed.train(x, y, resume="latest")
    a, b = state_and_optimizer(straight), state_and_optimizer(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"


def test_whitening_bias_learns_only_in_its_share_of_the_run(tmp_path):
    x, y = smooth_images(32)  # 4 steps an epoch, 8 in the run: the bias learns in steps 1 to 4
    seen = {}

    def bias_after(metrics):
        seen[metrics["epoch"]] = model.network.whiten.bias.detach().clone()

    model = MyModel(airbench_config(tmp_path / "half", max_epoch=2, whiten_bias_share=0.5),
                    log=lambda *a: None)
    model.epoch_callbacks.append(bias_after)
    before = model.network.whiten.bias.detach().clone()
    model.train(x, y)
    assert not torch.equal(seen[1], before)  # it learned in the first half
    assert torch.equal(seen[2], seen[1])  # and not a bit since
    groups = model.optimizer.param_groups
    assert [g["until"] for g in groups if "until" in g] == [0.5]
    assert sum(len(g["params"]) for g in groups) == len(list(model.network.parameters()))

    whole = MyModel(airbench_config(tmp_path / "whole", max_epoch=2), log=lambda *a: None)
    seen_whole = []
    whole.epoch_callbacks.append(lambda m: seen_whole.append(whole.network.whiten.bias.clone()))
    whole.train(x, y)
    assert not torch.equal(seen_whole[1], seen_whole[0])  # by default it learns all run


def test_whitening_bias_share_is_in_the_speed_recipe_and_checked():
    assert Config(recipe="speed").apply_recipe().whiten_bias_share == 0.3
    with pytest.raises(ConfigError, match="--whiten_bias_share must be in"):
        Config(network="airbench", whiten_bias_share=1.5).validate()
    with pytest.raises(ConfigError, match="--whiten_bias_share does not apply to --network resnet"):
        Config(network="resnet", whiten_bias_share=0.3).check_applicable({"whiten_bias_share"})


def test_whitening_refuses_a_first_layer_that_is_not_a_whitening_convolution():
    with pytest.raises(ValueError, match="whitening needs a first convolution"):
        whitening.first_convolution(build_network("resnet9"))
    assert whitening.first_convolution(build_network("airbench")).kernel_size == (2, 2)


@pytest.mark.parametrize("network, key, value", [
    ("resnet", "whiten", True), ("resnet9", "whiten", True), ("resnet18", "width_scale", 0.5),
    ("airbench", "resnet_size", 5), ("resnet9", "first_num_filters", 8),
    ("airbench", "downsample", "d"), ("resnet9", "shortcut", "pad"),
    ("airbench", "activation", "swish"), ("resnet9", "batch_norm", True),
])
def test_network_flags_are_refused_where_they_do_not_apply(network, key, value):
    with pytest.raises(ConfigError, match=f"--{key} does not apply to --network {network}"):
        Config(network=network, **{key: value}).check_applicable({key})


@pytest.mark.parametrize("network, key, value", [
    ("airbench", "whiten", True), ("airbench", "width_scale", 0.5), ("resnet9", "width_scale", 2.0),
    ("resnet", "activation", "swish"),
])
def test_network_flags_are_accepted_where_they_apply(network, key, value):
    Config(network=network, **{key: value}).check_applicable({key}).validate()


@pytest.mark.parametrize("bad", [-0.5, -1e-9, float("nan"), float("inf")])  # 0: chosen
def test_bad_width_scales_are_refused(bad):
    with pytest.raises(ConfigError, match="--width_scale must be a positive number"):
        Config(network="airbench", width_scale=bad).validate()


def test_describe_names_the_speed_networks():
    assert describe(Config(network="resnet9").to_dict()) == "ResNet-9 (DAWNBench)"
    assert describe(Config(network="airbench", width_scale=0.5, whiten=True).to_dict()) == \
        "airbench94's convnet at width x0.5 with a whitened first layer"


def test_resnet9_trains_and_its_loss_falls(tmp_path):
    x, y = smooth_images(16)
    config = Config(network="resnet9", width_scale=0.125, batch_size=16, max_epoch=8,
                    learning_rate=0.05, save_interval=100, lr_decay_epochs=(), device="cpu",
                    modeldir=str(tmp_path), eval_batch_size=64, amp="off")
    history = MyModel(config, log=lambda *a: None).train(x, y)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_synchronized_batch_norm_on_cpu_keeps_airbench_scales_fixed():
    plain = build_network("airbench", width_scale=0.25)
    trained = sum(p.numel() for p in plain.parameters() if p.requires_grad)
    synced = convert_sync_batchnorm(plain, torch.device("cpu"))
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 6 and all(type(m).__name__ == "_CpuSyncBatchNorm" for m in norms)
    assert all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert sum(p.numel() for p in synced.parameters() if p.requires_grad) == trained
