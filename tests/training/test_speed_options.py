"""The speed options of issue 18 (airbench94's techniques, each a flag of its own): lookahead,
alternating flip, translation, six-view test-time augmentation, a separate rate for batch-norm
biases, the decoupled parametrisation and a whitening bias that learns only early; each exact
under --resume."""
import numpy as np
import pytest
import torch

import ImageUtils
import Model
from cifar_files import make_batch
from configure import Config
from Model import MyModel
from trainer.evaluation.evaluate import evaluate_batch
from trainer.run import checkpoints, contents
from trainer.training import lookahead, runtime
from trainer.training.batches import epoch_plan
from trainer.training.runtime import Runtime, parameter_groups
from test_training import pause_at_last_step_then_sigint


def tiny_config(tmp_path, **overrides) -> Config:
    values = dict(resnet_size=1, first_num_filters=4, batch_size=8, max_epoch=3, save_interval=100,
                  lr_decay_epochs=(), device="cpu", modeldir=str(tmp_path / "model"),
                  eval_batch_size=64, amp="off")  # fp32: --amp auto would time bf16
    values.update(overrides)
    return Config(**values).validate()


def tiny_model(tmp_path, **overrides) -> MyModel:
    return MyModel(tiny_config(tmp_path, **overrides), log=lambda *a: None)


def data(n: int, seed: int = 0):
    return make_batch(n, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------
# Every option exact under --resume

OPTIONS = {
    "lookahead": dict(lookahead=True, lookahead_every=2),
    "flip": dict(flip="alternating"),
    "translate": dict(translate=2, pad_mode="reflect"),
    "bias_lr_scale": dict(bias_lr_scale=8.0),
    "decoupled": dict(decoupled=True, learning_rate=20.0, nesterov=True),
    # the whitening layer's bias learns in steps 1 to 3 of 6, so it stops after the resume
    "whiten_bias_share": dict(network="airbench", width_scale=0.125, whiten=True,
                              whiten_bias_share=0.4),
    "muon_lr": dict(network="airbench", width_scale=0.125, whiten=True, muon_lr=0.2,
                    nesterov=True, momentum=0.5),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_resumes_mid_epoch_bit_for_bit(tmp_path, monkeypatch, name):
    x, y = data(16)  # 2 steps an epoch, 6 in the run
    options = OPTIONS[name]
    straight = tiny_model(tmp_path / "straight", **options)
    straight.train(x, y)

    modeldir = tmp_path / "split"
    pause_at_last_step_then_sigint(monkeypatch, 2, 0)  # global step 3: between two lookahead updates
    with pytest.raises(Model.TrainingStopped) as stopped:
        tiny_model(modeldir, **options).train(x, y)
    ckpt = checkpoints.read_checkpoint(stopped.value.path, for_resume=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)
    assert (ckpt["lookahead"] is not None) == bool(options.get("lookahead"))
    monkeypatch.delenv(Model.PAUSE_ENV)
    resumed = tiny_model(modeldir, **options)
    resumed.train(x, y, resume="latest")

    pairs = [(straight.network.state_dict(), resumed.network.state_dict())]
    if straight.lookahead is not None:
        pairs.append((straight.lookahead.state_dict(), resumed.lookahead.state_dict()))
    for a, b in pairs:
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{k} differs after resuming"
    states = (straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"])
    assert len(states[0]) == len(states[1]) and states[0]
    for a, b in zip(*(s.values() for s in states), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


# --------------------------------------------------------------------------------------------
# Lookahead

def test_lookahead_decay_is_a_cubic_ramp_of_progress():
    final = 0.95 ** 5
    assert lookahead.decay_at(final, 0.0) == 0.0
    assert lookahead.decay_at(final, 0.5) == pytest.approx(final / 8)
    assert lookahead.decay_at(final, 1.0) == pytest.approx(final)


def test_lookahead_folds_every_k_steps_and_hands_over_its_weights_at_the_end():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    slow = lookahead.Lookahead(net, 0.5, every=3)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    moved = net[0].weight.clone()
    slow.after_step(net, 1, 1 / 7)  # not a multiple of 3: nothing happens
    assert torch.equal(net[0].weight, moved)
    slow.after_step(net, 3, 3 / 7)  # decay 0.5 * (3/7)**3
    decay = 0.5 * (3 / 7) ** 3
    expected = start["0.weight"] + (moved - start["0.weight"]) * (1 - decay)
    assert torch.allclose(slow.state_dict()["0.weight"], expected)
    assert torch.equal(net[0].weight, slow.state_dict()["0.weight"])
    with torch.no_grad():
        net[0].weight.add_(1.0)
    slow.after_step(net, 7, 1.0)  # not a multiple of 3: nothing happens
    assert not torch.equal(net[0].weight, slow.state_dict()["0.weight"])
    slow.finish(net)  # the run's end: the slow weights win
    assert torch.equal(net[0].weight, slow.state_dict()["0.weight"])
    assert torch.allclose(net[0].weight, expected)
    assert torch.equal(slow.state_dict()["1.num_batches_tracked"], net[1].num_batches_tracked)


def test_lookahead_changes_training_and_its_weights_are_checkpointed(tmp_path):
    x, y = data(16)
    plain = tiny_model(tmp_path / "plain", max_epoch=2)
    plain.train(x, y)
    # 4 steps, a fold at step 3: the last step's weights are dropped for the slow ones.
    ahead = tiny_model(tmp_path / "ahead", max_epoch=2, lookahead=True, lookahead_every=3)
    ahead.train(x, y)
    assert not all(torch.equal(a, b) for a, b in zip(plain.network.parameters(),
                                                     ahead.network.parameters()))
    ckpt = checkpoints.read_checkpoint(str(tmp_path / "ahead" / "model" / "model-2.ckpt"))
    for k, v in ahead.lookahead.state_dict().items():
        assert torch.equal(ckpt["lookahead"][k], v)
        assert torch.equal(ckpt["model"][k], v)  # the run ended by taking the slow weights
    old = checkpoints.read_checkpoint(str(tmp_path / "plain" / "model" / "model-2.ckpt"))
    assert old["lookahead"] is None


def test_checkpoints_without_the_lookahead_key_load_as_off(tmp_path):
    x, y = data(16)
    tiny_model(tmp_path, max_epoch=1, save_interval=1).train(x, y)
    path = str(tmp_path / "model" / "model-1.ckpt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["lookahead"]
    for key in ("lookahead", "lookahead_decay", "lookahead_every", "translate", "flip",
                "bias_lr_scale", "decoupled"):
        del ckpt["config"][key]
    torch.save(ckpt, path)
    read = checkpoints.read_checkpoint(path, for_resume=True)
    assert read["config"]["lookahead"] is False and read["config"]["translate"] == 4
    assert read["config"]["flip"] == "random" and read["config"]["bias_lr_scale"] == 1.0
    history = tiny_model(tmp_path, max_epoch=2, save_interval=1).train(x, y, resume="latest")
    assert [m["epoch"] for m in history] == [1, 2]


def test_a_damaged_lookahead_entry_is_named():
    ckpt = {"format": 1, "epoch": 1, "step": 0, "model": {"w": torch.zeros(1)}, "optimizer": {},
            "scaler": {}, "config": {}, "data": "", "rng": {}, "metrics": [],
            "lookahead": {"w": 1.0}}
    assert "'lookahead'" in contents.structure_problem(ckpt, for_resume=False)


# --------------------------------------------------------------------------------------------
# Alternating flip and translation

def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    n, seed = 200, 3
    by_epoch = []
    for epoch in (1, 2, 3, 4):
        order, offsets, flips = epoch_plan(n, epoch, seed, flip="alternating")
        r_order, r_offsets, r_flips = epoch_plan(n, epoch, seed)
        assert torch.equal(order, r_order) and torch.equal(offsets, r_offsets)
        if epoch == 1:  # the first epoch is the random one
            assert torch.equal(flips, r_flips)
        per_image = torch.empty_like(flips)
        per_image[order] = flips
        by_epoch.append(per_image)
    assert 60 < int(by_epoch[0].sum()) < 140
    for before, after in zip(by_epoch, by_epoch[1:]):
        assert torch.equal(after, ~before)


def test_translate_draws_offsets_within_its_padding_and_crops_like_the_reference():
    _, offsets, flips = epoch_plan(500, 1, 0, pad=2)
    assert int(offsets.min()) == 0 and int(offsets.max()) == 4
    x = torch.from_numpy(data(8)[0]).view(-1, 3, 32, 32).float()
    offsets, flips = offsets[:8], flips[:8]
    batched = ImageUtils.crop_flip_batch(x, offsets, flips, "reflect", pad=2)
    for b in range(8):
        one = ImageUtils.crop_flip(x[b].numpy(), int(offsets[b, 0]), int(offsets[b, 1]),
                                   bool(flips[b]), "reflect", pad=2)
        assert np.array_equal(batched[b].numpy(), one)


def test_translate_reaches_the_training_batches(tmp_path):
    rt = Runtime(tiny_config(tmp_path, translate=1))
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).view(1, 3, 32, 32)
    out = rt.prepare_images(x, True, torch.tensor([[2, 2]]), torch.tensor([False]))
    expected = ImageUtils.preprocess_batch(x, True, torch.tensor([[2, 2]]),
                                           torch.tensor([False]), pad=1)
    assert torch.equal(out, expected)
    assert not torch.equal(out, ImageUtils.preprocess_batch(x, True, torch.tensor([[2, 2]]),
                                                            torch.tensor([False])))


# --------------------------------------------------------------------------------------------
# Six-view test-time augmentation

def test_six_views_are_weighted_as_published(tmp_path):
    rt = Runtime(tiny_config(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.randn(4, 3, 32, 32)
    # airbench94's tta_level 2, built independently: reflect-pad one pixel, take the windows
    # at (0, 0) and (2, 2); the plain views weigh 1/4 with their mirrors, the shifted 1/8.
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), "reflect"))
    views = [(x, 0.25), (padded[:, :, 0:32, 0:32], 0.125), (padded[:, :, 2:34, 2:34], 0.125)]
    with torch.no_grad():
        expected = sum(w * (net(v) + net(v.flip(3))) for v, w in views)
        got = evaluate_batch(net, x, rt, "six")
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, evaluate_batch(net, x, rt, "off"), atol=1e-3)


# --------------------------------------------------------------------------------------------
# The rate of batch-norm biases, and the decoupled parametrisation

def test_batch_norm_biases_get_their_own_rate_and_the_same_decay(tmp_path):
    net = runtime.build(tiny_config(tmp_path), Runtime(tiny_config(tmp_path)))
    bn_biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    groups = parameter_groups(net, 5e-4, no_decay_bn_bias=False, bias_lr_scale=64.0)
    assert {id(p) for p in groups[-1]["params"]} == bn_biases
    assert groups[-1]["lr_scale"] == 64.0 and groups[-1]["weight_decay"] == 5e-4 / 64
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    exempt = parameter_groups(net, 5e-4, no_decay_bn_bias=True, bias_lr_scale=64.0)
    assert [g["weight_decay"] for g in exempt] == [5e-4, 0.0, 0.0]
    assert {id(p) for p in exempt[-1]["params"]} == bn_biases


def bn_bias_step(tmp_path, scale: float) -> torch.Tensor:
    model = tiny_model(tmp_path / str(scale), max_epoch=1, momentum=0.0, weight_decay=0.0,
                       bias_lr_scale=scale)
    bn = next(m for m in model.network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.bias.detach().clone()
    x, y = data(8)  # one step
    model.train(x, y)
    return bn.bias.detach() - before


def test_a_bias_rate_scale_scales_the_first_step_of_the_batch_norm_biases(tmp_path):
    plain, scaled = bn_bias_step(tmp_path, 1.0), bn_bias_step(tmp_path, 4.0)
    assert plain.abs().max() > 0
    assert torch.allclose(scaled, 4 * plain, rtol=1e-4, atol=1e-7)


def test_decoupled_rate_and_decay_follow_airbench94(tmp_path):
    # airbench94: lr 11.5 and weight decay 0.0153 per 1024 examples, momentum 0.85, batch 1024,
    # summed loss: SGD lr = 11.5 / kilostep with kilostep = 1024 * (1 + 1 / (1 - 0.85)), and
    # SGD decay = 0.0153 * 1024 / kilostep / lr. Here the loss is a batch mean, so the rate
    # carries the batch size and the step's shrink (rate times decay) must match.
    cfg = tiny_config(tmp_path, decoupled=True, learning_rate=11.5, weight_decay=0.0153,
                      momentum=0.85, batch_size=1024, nesterov=True)
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    assert runtime.rate_scale(cfg) * 11.5 == pytest.approx(11.5 / kilostep * 1024)
    net = runtime.build(cfg, Runtime(cfg))
    group = runtime.optimizer(net, cfg).param_groups[0]
    assert group["lr"] == pytest.approx(1.5)
    assert group["lr"] * group["weight_decay"] == pytest.approx(0.0153 * 1024 / kilostep)
    assert runtime.rate_scale(tiny_config(tmp_path)) == 1.0


def test_decoupled_training_uses_the_scaled_rate(tmp_path):
    model = tiny_model(tmp_path, max_epoch=1, decoupled=True, learning_rate=4.0, momentum=0.5)
    model.train(*data(8))
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(4.0 * 8 / (1024 * 3))
