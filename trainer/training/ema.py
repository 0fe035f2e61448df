"""An exponential moving average of a network's weights (``--ema DECAY``).

After every optimizer step each floating entry of the network's state dict (weights and batch-norm
running statistics alike) is folded in: ``avg = decay * avg + (1 - decay) * current``; integer
entries (batch counters) are copied. The average starts as a copy of the initial network.
Validation, test and predict use the average; the raw weights go on training.
"""
import copy

import torch


class WeightAverage:
    def __init__(self, network: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.network = copy.deepcopy(network)
        self.network.requires_grad_(False)
        self.network.eval()

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        current = network.state_dict()
        for name, avg in self.network.state_dict().items():
            value = current[name]
            if avg.is_floating_point():
                avg.mul_(self.decay).add_(value.to(avg.dtype), alpha=1 - self.decay)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict:
        return self.network.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state)
