"""--network resnet50: torchvision's ResNet-50 with ImageNet weights (made locally here: tests never
download), its ImageNet input, --freeze_epochs, --recipe transfer, and the command line end to end.

Tests that build the network need torchvision and skip without it; the message for its absence
and the checks of the flags run everywhere.
"""
import os
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main
from cifar_files import make_batch, write_cifar
from cli_tools import TINY, run_main
from configure import Config, ConfigError
from Model import MyModel
from trainer.parallel import distributed
from trainer.run.checkpoints import read_checkpoint
from trainer.training import pretrained
from trainer.training.runtime import Runtime

# The file name torchvision gives ResNet50_Weights.IMAGENET1K_V1 in $TORCH_HOME/hub/checkpoints.
V1_FILE = "resnet50-0676ba61.pth"
NON_RESNET = ["--resnet_size", "--first_num_filters"]  # TINY's flags of the course ResNets


def r50_flags(data_dir, modeldir, *extra):
    """TINY without its ResNet-only flags, for a ResNet-50 at 32 pixels on 16 images."""
    flags = list(TINY)
    for name in NON_RESNET:
        i = flags.index(name)
        del flags[i:i + 2]
    return flags + ["--network", "resnet50", "--input_size", "32", "--split_index", "16",
                    "--data_dir", str(data_dir), "--modeldir", str(modeldir), "--quiet",
                    "--learning_rate", "0.01", "--lr_decay_epochs", *map(str, extra)]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """(path, state_dict) of a ResNet-50 with random weights in torchvision's format, saved in a
    TORCH_HOME's cache under the name of the ImageNet V1 weights."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(123)
    state = tv.models.resnet50().state_dict()
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / V1_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, str(path))
    return str(path), state


def test_without_torchvision_resnet50_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now fails
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    data_dir = tmp_path / "data"
    write_cifar(str(data_dir), n_per_batch=8, n_test=8)
    with pytest.raises(SystemExit) as e:
        main.main(r50_flags(data_dir, tmp_path / "m", "--batch_size", "8"))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err == "error: --network resnet50 needs torchvision: pip install -r " \
                  "requirements-dev.txt\n", err


@pytest.mark.parametrize("flag", [["--pretrained", "imagenet"], ["--freeze_epochs", "1"],
                                  ["--input_size", "64"]])
def test_resnet50_flags_are_refused_for_other_networks(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        main.main(TINY + ["--modeldir", str(tmp_path / "m"), "--data_dir", str(tmp_path)] + flag)
    assert e.value.code == 2
    assert f"{flag[0]} does not apply to --network resnet " in capsys.readouterr().err


def test_transfer_recipe_and_explicit_flags_win():
    config = Config(recipe="transfer").apply_recipe()
    assert (config.network, config.pretrained, config.learning_rate, config.momentum,
            config.weight_decay, config.lr_schedule, config.max_epoch, config.freeze_epochs,
            config.batch_size) == ("resnet50", "imagenet", 0.01, 0.9, 1e-4, "cosine", 5, 1, 64)
    config = Config(recipe="transfer", learning_rate=0.02, freeze_epochs=0)
    config.apply_recipe({"learning_rate", "freeze_epochs"})
    assert (config.learning_rate, config.freeze_epochs, config.network) == (0.02, 0, "resnet50")
    with pytest.raises(ConfigError, match="--pretrained_file"):
        Config(network="resnet50", pretrained_file="w.pth").validate()


def test_resnet50_input_is_resized_and_standardized_as_imagenet():
    rt = Runtime(Config(network="resnet50", input_size=64, device="cpu", channels_last="off"))
    rt.mean_std = (torch.zeros(3), torch.ones(3))  # --normalize dataset's must not be used
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = rt.prepare_images(x, False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (F.interpolate(x.float() / 255, size=(64, 64), mode="bilinear",
                              align_corners=False) - mean) / std
    assert out.shape == (2, 3, 64, 64)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def assert_backbone_equal(state: dict, reference: dict) -> None:
    keys = [k for k in reference if not k.startswith("fc.")]
    assert len(keys) == len(reference) - 2
    for k in keys:
        assert torch.equal(state[k], reference[k]), k


def test_imagenet_weights_come_from_torchvisions_cache(weights_file, monkeypatch):
    path, state = weights_file
    monkeypatch.setenv("TORCH_HOME", os.path.dirname(os.path.dirname(os.path.dirname(path))))
    network = pretrained.build(100, "imagenet")
    assert_backbone_equal(network.state_dict(), state)
    assert tuple(network.fc.weight.shape) == (100, 2048) and network.fc.out_features == 100
    from_file = pretrained.build(20, "imagenet", pretrained_file=path)
    assert_backbone_equal(from_file.state_dict(), state)
    assert from_file.fc.out_features == 20


def test_a_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(pretrained.PretrainedError) as e:
        pretrained.build(10, "imagenet")
    message = str(e.value)
    assert V1_FILE in message and "network is unreachable" in message
    assert str(tmp_path / "home" / "hub" / "checkpoints") in message
    assert "\n" not in message


@pytest.mark.parametrize("synchronize", [
    None,  # plain nn.BatchNorm2d
    lambda network: torch.nn.SyncBatchNorm.convert_sync_batchnorm(network),  # --sync_bn, CUDA
    lambda network: distributed.convert_sync_batchnorm(network, torch.device("cpu"))],  # gloo
    ids=["plain", "sync_cuda", "sync_gloo"])
def test_freezing_fixes_every_batch_norm_and_says_when_the_gradients_change(synchronize):
    pytest.importorskip("torchvision")
    network = pretrained.build(10)
    if synchronize is not None:
        network = synchronize(network)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 53 and (synchronize is None) == all(
        type(m) is torch.nn.BatchNorm2d for m in norms)
    head = set(map(id, network.fc.parameters()))
    network.train()
    # DistributedDataParallel must wrap anew exactly when a parameter's requires_grad changes.
    assert pretrained.set_frozen(network, True) is True
    assert not any(m.training for m in norms)
    assert all(p.requires_grad == (id(p) in head) for p in network.parameters())
    network.train()  # each epoch begins so
    assert pretrained.set_frozen(network, True) is False
    assert not any(m.training for m in norms)
    network.train()
    assert pretrained.set_frozen(network, False) is True
    assert all(m.training for m in norms) and all(p.requires_grad for p in network.parameters())
    assert pretrained.set_frozen(network, False) is False


def test_frozen_epoch_keeps_the_backbone_then_unfreezing_trains_it_and_resume_is_exact(
        weights_file, tmp_path):
    path, state = weights_file
    x, y = make_batch(16, np.random.default_rng(0))

    def config(modeldir, max_epoch):
        return Config(network="resnet50", pretrained="imagenet", pretrained_file=path,
                      input_size=32, freeze_epochs=1, max_epoch=max_epoch, batch_size=8,
                      learning_rate=0.01, lr_decay_epochs=(), save_interval=1, device="cpu",
                      amp="off", eval_batch_size=64, modeldir=str(tmp_path / modeldir))

    model = MyModel(config("a", 1), log=lambda *a: None)
    head = model.network.fc.weight.detach().clone()
    model.train(x, y)
    after = model.network.state_dict()
    assert_backbone_equal(after, state)  # weights and batch-norm statistics alike
    assert not torch.equal(after["fc.weight"], head)

    resumed = MyModel(config("a", 2), log=lambda *a: None)
    resumed.train(x, y, resume="latest")
    conv = resumed.network.state_dict()["conv1.weight"]
    assert not torch.equal(conv, state["conv1.weight"])
    assert not torch.equal(resumed.network.state_dict()["bn1.running_mean"],
                           state["bn1.running_mean"])

    straight = MyModel(config("b", 2), log=lambda *a: None)
    straight.train(x, y)
    for k, v in straight.network.state_dict().items():
        assert torch.equal(v, resumed.network.state_dict()[k]), k


def test_resnet50_end_to_end_from_the_cache(weights_file, tmp_path):
    path, state = weights_file
    env = {"TORCH_HOME": os.path.dirname(os.path.dirname(os.path.dirname(path)))}
    data_dir = tmp_path / "data"
    write_cifar(str(data_dir), n_per_batch=8, n_test=8)
    modeldir = tmp_path / "m"
    flags = r50_flags(data_dir, modeldir)
    done = run_main(flags + ["--mode", "train", "--pretrained", "imagenet", "--max_epoch", "1",
                             "--freeze_epochs", "1"], env=env)
    assert done.returncode == 0, done.stderr
    assert "ResNet-50 (torchvision, ImageNet weights)" in done.stdout
    ckpt = read_checkpoint(str(modeldir / "model-1.ckpt"))
    assert_backbone_equal(ckpt["model"], state)
    assert tuple(ckpt["model"]["fc.weight"].shape) == (10, 2048)

    offline = {"TORCH_HOME": str(tmp_path / "empty")}  # test and predict need no weights file
    done = run_main(["--mode", "test", "--modeldir", str(modeldir), "--data_dir", str(data_dir),
                     "--device", "cpu", "--no_download"], env=offline)
    assert done.returncode == 0, done.stderr
    assert "input_size=32" in done.stdout  # the checkpoint's, with no flag given
    assert "model-1.ckpt" in done.stdout and "8" in done.stdout
    private = tmp_path / "private.npy"
    np.save(str(private), make_batch(5, np.random.default_rng(1))[0])
    output = tmp_path / "probs.npy"
    done = run_main(["--mode", "predict", "--modeldir", str(modeldir), "--device", "cpu",
                     "--private_data", str(private), "--output", str(output)], env=offline)
    assert done.returncode == 0, done.stderr
    probs = np.load(str(output))
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
