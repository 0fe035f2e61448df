"""Lookahead (``--lookahead``): slow weights that the network is pulled back to every few steps.

Every ``every`` steps the slow weights move toward the network, ``slow = decay * slow + (1 - decay)
* network``, and the network is set to them; when the run ends (``finish``) the network takes the
slow weights. The decay is a pure function of the run's progress p (trainer.training.schedules:
steps done over the run's steps, continued across a --budget_minutes replan so that it never goes
back): ``final_decay * p**3``, so it starts near 0 (the slow weights follow the network) and
tightens toward the end (airbench94: every 5 steps, final decay 0.95**5; Zhang et al. 2019 for
lookahead).
Every floating entry of the state dict (weights and batch-norm running statistics) takes part;
integer entries (batch counters) are the network's, copied. The slow weights go into every
checkpoint.
"""
import copy

import torch


def decay_at(final_decay: float, progress: float) -> float:
    """The slow weights' decay at ``progress`` (in [0, 1]) of the run."""
    return final_decay * progress ** 3


class Lookahead:
    def __init__(self, network: torch.nn.Module, final_decay: float, every: int):
        if not 0 <= final_decay <= 1 or every < 1:
            raise ValueError(f"final_decay must lie in [0, 1] and every be positive, not "
                             f"{final_decay} and {every}")
        self.final_decay, self.every = final_decay, every
        # A copy of the network (not of its tensors alone), so that under torchrun its buffers
        # can be broadcast like the network's.
        self.network = copy.deepcopy(network)
        self.network.requires_grad_(False)

    def after_step(self, network: torch.nn.Module, step: int, progress: float) -> None:
        """Call after optimizer step ``step`` (counted from 1 over the whole run), at the run's
        ``progress`` after it."""
        if step % self.every == 0:
            self.fold(network, decay_at(self.final_decay, progress))

    def finish(self, network: torch.nn.Module) -> None:
        """The run's end: the network takes the slow weights."""
        self.fold(network, 1.0)

    @torch.no_grad()
    def fold(self, network: torch.nn.Module, decay: float) -> None:
        """slow = decay * slow + (1 - decay) * network; then network = slow."""
        current = network.state_dict()
        for name, slow in self.network.state_dict().items():
            value = current[name]
            if slow.is_floating_point():
                slow.lerp_(value.to(slow.dtype), 1 - decay)
                value.copy_(slow)
            else:
                slow.copy_(value)

    def state_dict(self) -> dict:
        return self.network.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state)
