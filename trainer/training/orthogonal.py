"""Orthogonalized updates for convolution filters (``--muon_lr``): SGD for every parameter but the
filters, and for the filters a momentum step whose direction is replaced by the nearest
semi-orthogonal matrix, as the Muon optimizer does (Jordan et al. 2024, "Muon: an optimizer for
hidden layers", which brought airbench to 94% on CIFAR-10 in 8 epochs where SGD needs 10).

For a filter W of shape (out, in, k, k), read as the matrix G = momentum direction reshaped to
(out, in * k * k):
- the momentum buffer is b = momentum * b + grad, the direction d = grad + momentum * b with
  Nesterov's momentum, else b;
- d is orthogonalized by a few Newton-Schulz steps of the quintic X <- a X + (b A + c A A) X,
  A = X X^T, from X = d / |d| (coefficients 3.4445, -4.7750, 2.0315, which push every singular
  value quickly toward [0.7, 1.2] rather than converge exactly: as good for training, and cheap);
- W is first rescaled to norm sqrt(out) (so each output channel has norm about 1: the filters
  feed batch norms, which do not care about scale, and weight decay has nothing to do), then
  W <- W - lr * orth(d).

The other groups take exactly torch.optim.SGD's step (momentum without dampening, Nesterov's as
configured, L2 weight decay added to the gradient), so one optimizer object holds the whole run:
its state dict, the loss scaler (fp16) and the training loop's per-group rates work unchanged.
A group is orthogonalized when its ``orthogonal`` entry is true.
"""
import torch

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3  # the public airbench94_muon's number of steps
EPS = 1e-7


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """The 2-D tensor g with its singular values pushed toward 1 (its orthogonal factor U V^T,
    roughly), in float32; the result has g's shape."""
    if g.dim() != 2:
        raise ValueError(f"orthogonalize takes a matrix, not a tensor of shape {tuple(g.shape)}")
    a, b, c = NEWTON_SCHULZ
    x = g.float()
    x = x / (x.norm() + EPS)  # every singular value at most 1
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class OrthogonalSGD(torch.optim.Optimizer):
    """SGD with momentum whose ``orthogonal`` groups (4-D filters) take orthogonalized steps."""

    def __init__(self, groups, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must not be negative, not {lr}, "
                             f"{momentum} and {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov's momentum needs a momentum above 0")
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, orthogonal=False))
        for group in self.param_groups:
            if group["orthogonal"] and any(p.dim() != 4 for p in group["params"]):
                raise ValueError("an orthogonal group holds convolution filters (4-D) only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["orthogonal"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if momentum:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(momentum).add_(g)
                    g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
                if group["orthogonal"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(EPS))
                    g = orthogonalize(g.reshape(len(g), -1)).view_as(p).to(p.dtype)
                p.add_(g, alpha=-lr)
        return loss
