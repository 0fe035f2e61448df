"""--muon_lr: orthogonalized steps for the convolution filters, SGD for the rest
(trainer/training/orthogonal.py); its resume is in test_speed_options.py."""
import subprocess
import sys

import pytest
import torch

from configure import Config
from trainer.training import orthogonal, runtime
from trainer.training.steps import set_rates


def singular_values(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(m.double())


@pytest.mark.parametrize("shape", [(8, 72), (72, 8), (16, 16)])
def test_orthogonalize_pushes_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(0, 2, k)) @ v.T  # singular values 1 to 100
    out = orthogonal.orthogonalize(g, steps=5)
    assert out.shape == g.shape
    s = singular_values(out)
    assert s.min() > 0.5 and s.max() < 1.5, s
    # the same singular directions as g: out is (close to) U V^T of g's SVD
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), out.double().flatten(),
                                                 dim=0) > 0.95


def test_orthogonalize_takes_matrices_only():
    with pytest.raises(ValueError, match="matrix"):
        orthogonal.orthogonalize(torch.ones(2, 2, 2))


def sgd_pair(nesterov: bool, weight_decay: float):
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = torch.optim.SGD([{"params": params, "weight_decay": weight_decay}], lr=0.1,
                                momentum=0.8, nesterov=nesterov)
    ours = orthogonal.OrthogonalSGD([{"params": twins, "weight_decay": weight_decay}], lr=0.1,
                                    momentum=0.8, nesterov=nesterov)
    return (params, reference), (twins, ours)


@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 0.01)])
def test_groups_that_are_not_orthogonal_step_as_torch_sgd_does(nesterov, weight_decay):
    (params, reference), (twins, ours) = sgd_pair(nesterov, weight_decay)
    for step in range(4):
        for group, opt in ((params, reference), (twins, ours)):
            torch.manual_seed(10 + step)  # the same gradients for both
            for p in group:
                p.grad = torch.randn_like(p)
            opt.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_an_orthogonal_step_renormalizes_the_filter_and_moves_it_along_the_orthogonal_factor():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(6, 2, 3, 3) * 5)
    opt = orthogonal.OrthogonalSGD([{"params": [w], "orthogonal": True, "momentum": 0.0,
                                     "weight_decay": 0.1}], lr=0.05)
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt.step()
    renormed = before * (6 ** 0.5 / before.norm())
    expected = renormed - 0.05 * orthogonal.orthogonalize(w.grad.reshape(6, -1)).view_as(w)
    torch.testing.assert_close(w.detach(), expected)  # no weight decay in the filter group
    assert (w.detach() - renormed).norm() > 0.01


def test_only_filters_may_be_orthogonal():
    with pytest.raises(ValueError, match="4-D"):
        orthogonal.OrthogonalSGD([{"params": [torch.nn.Parameter(torch.ones(3))],
                                   "orthogonal": True}], lr=0.1)


class _Model:  # what set_rates reads
    def __init__(self, config, optimizer):
        self.config, self.optimizer = config, optimizer


def test_muon_lr_puts_every_filter_in_one_group_at_its_own_rate():
    config = Config(network="airbench", width_scale=0.25, whiten=True, batch_size=512,
                    decoupled=True, learning_rate=11.5, momentum=0.85, nesterov=True,
                    bias_lr_scale=64.0, weight_decay=0.0153, muon_lr=0.24, muon_momentum=0.6,
                    lr_schedule="triangle", max_epoch=4, device="cpu").validate()
    network = runtime.network_for(config)
    opt = runtime.optimizer(network, config)
    *sgd_groups, filters = opt.param_groups
    assert filters["orthogonal"] and filters["momentum"] == 0.6 and filters["weight_decay"] == 0
    four_d = {id(p) for p in network.parameters() if p.dim() == 4}
    first = id(network.whiten.weight)  # no batch norm follows it: it stays with SGD
    assert {id(p) for p in filters["params"]} == four_d - {first}
    assert {id(p) for g in sgd_groups for p in g["params"]} & four_d == {first}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(network.parameters()))
    # at the schedule's peak (the triangle's top, 23% of the run) the filters' rate is muon_lr
    model = _Model(config, opt)
    steps = 100
    peak = max(range(steps), key=lambda s: set_rates(model, 1, s, steps))
    set_rates(model, 1, peak, steps)
    assert filters["lr"] == pytest.approx(0.24)
    assert sgd_groups[0]["lr"] == pytest.approx(11.5 * runtime.rate_scale(config))


def test_without_muon_lr_the_optimizer_is_torch_sgd():
    config = Config(network="airbench", width_scale=0.25, device="cpu").validate()
    assert type(runtime.optimizer(runtime.network_for(config), config)) is torch.optim.SGD


@pytest.mark.parametrize("flag,value", [("--muon_lr", "-0.1"), ("--muon_momentum", "1")])
def test_a_bad_muon_flag_is_one_sentence(tmp_path, flag, value):
    done = subprocess.run([sys.executable, "main.py", "--mode", "train", flag, value,
                           "--modeldir", str(tmp_path / "m"), "--data_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert flag in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()
