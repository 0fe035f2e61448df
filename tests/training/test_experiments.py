"""The course experiments' options in training: the L1 penalty, dataset normalization, and the
weight summary of the test report."""
import numpy as np
import pytest
import torch

import ImageUtils
from trainer.reports import reports
from cifar_files import make_batch
from configure import Config
from Model import MyModel
from trainer.evaluation.evaluate import logits as logits_of


def tiny_config(modeldir, **overrides) -> Config:
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=1, save_interval=1,
                  lr_decay_epochs=(), device="cpu", modeldir=str(modeldir), eval_batch_size=64,
                  amp="off")  # fp32: --amp auto would time bf16
    values.update(overrides)
    return Config(**values)


def test_the_l1_objective_is_the_cross_entropy_plus_the_penalty(tmp_path):
    model = MyModel(tiny_config(tmp_path, l1=1e-3), log=lambda *a: None)
    logits = torch.randn(5, 10)
    y = torch.tensor([0, 3, 9, 2, 2])
    total, cross_entropy = model.objective(logits, y)
    by_hand = sum(float(p.detach().abs().sum()) for p in model.network.parameters())
    ce = float(torch.nn.functional.cross_entropy(logits, y))
    assert float(cross_entropy) == pytest.approx(ce)
    assert float(total.detach()) == pytest.approx(ce + 1e-3 * by_hand, rel=1e-6)
    plain = MyModel(tiny_config(tmp_path, l1=0.0), log=lambda *a: None)
    assert float(plain.objective(logits, y)[0]) == pytest.approx(ce)


def test_l1_training_leaves_more_small_weights_than_l2(tmp_path):
    x, y = make_batch(32, np.random.default_rng(0))
    shares = {}
    for name, changes in (("l2", dict(weight_decay=5e-4)), ("l1", dict(weight_decay=0.0, l1=2e-3))):
        model = MyModel(tiny_config(tmp_path / name, max_epoch=8, **changes), log=lambda *a: None)
        model.train(x, y)
        w = torch.cat([p.detach().abs().flatten() for p in model.network.parameters()]).numpy()
        shares[name] = reports.weight_summary(w)["below_1e-2"]
    assert shares["l1"] > shares["l2"], shares


def test_channel_stats_by_hand():
    rows = np.zeros((2, 3072), np.uint8)
    rows[0, :1024] = 10  # red of image 0
    rows[1, :1024] = 30  # red of image 1
    rows[:, 1024:2048] = 100  # green: constant
    mean, std = ImageUtils.channel_stats(rows)
    np.testing.assert_allclose(mean, [20, 100, 0])
    np.testing.assert_allclose(std, [10, ImageUtils.MIN_STD, ImageUtils.MIN_STD], rtol=1e-6)


def test_dataset_normalization_is_stored_and_used_at_test_time(tmp_path):
    x, y = make_batch(24, np.random.default_rng(1))
    trainer = MyModel(tiny_config(tmp_path, normalize="dataset"), log=lambda *a: None)
    trainer.train(x, y)
    ckpt = torch.load(tmp_path / "model-1.ckpt", weights_only=True)
    mean, std = ImageUtils.channel_stats(x)
    np.testing.assert_allclose(ckpt["normalization"]["mean"].numpy(), mean)
    np.testing.assert_allclose(ckpt["normalization"]["std"].numpy(), std)
    # A fresh model, as test and predict build it, takes the statistics from the checkpoint ...
    fresh = MyModel(tiny_config(tmp_path, normalize="dataset"), log=lambda *a: None)
    fresh.load(1)
    images = torch.from_numpy(x[:5]).view(-1, 3, 32, 32).float()
    by_hand = (images - torch.from_numpy(mean).view(1, 3, 1, 1)) / torch.from_numpy(std).view(1, 3, 1, 1)
    fresh.network.eval()
    with torch.no_grad():
        expected = fresh.network(by_hand)
    torch.testing.assert_close(logits_of(fresh, x[:5]), expected, atol=1e-5, rtol=1e-5)
    # ... and not from the data it is given.
    other = make_batch(5, np.random.default_rng(9))[0]
    assert not np.allclose(ImageUtils.channel_stats(other)[0], mean)


def test_weight_summary_by_hand():
    w = np.array([0.0, 5e-4, 2e-3, 5e-3, 0.05, 0.5, 2.0, -0.0005])
    summary = reports.weight_summary(np.abs(w))
    assert summary["parameters"] == 8
    assert summary["below_1e-3"] == pytest.approx(3 / 8)
    assert summary["below_1e-2"] == pytest.approx(5 / 8)
    assert [b["count"] for b in summary["histogram"]] == [1, 2, 2, 1, 2]
    lines = reports.format_weights(summary)
    assert "37.5% with |w| < 1e-3" in lines[0] and "62.5% with |w| < 1e-2" in lines[0]
    assert len(lines) == 6


# --------------------------------------------------------------------------------------------
# From the command line (sweeps: test_sweep.py)

def test_downsample_d_with_the_pad_shortcut_is_refused_as_a_flag(tmp_path, capsys):
    import main
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--mode", "train", "--downsample", "d", "--shortcut", "pad",
                   "--modeldir", str(tmp_path / "m"), "--no_download", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--downsample d" in err[0] and "--shortcut pad" in err[0]
