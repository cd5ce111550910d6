"""A testbed of small models with known gradient masking (the fast preset's guard must act on
them; tests/test_fast_guard.py). Each wraps a working classifier ``base``:

- :class:`QuantizedInput`: x -> round(x·levels)/levels first (zero input gradient almost
  everywhere) [Athalye et al. 2018, "obfuscated gradients": shattered gradients];
- :class:`SaturatedOutput`: logits·temperature (a saturated softmax: CE's gradient underflows to
  exactly zero on confident points) [Carlini & Wagner 2017, defensive distillation];
- :class:`ThresholdInput`: x -> 1[x > 0.5] (a non-differentiable binarising preprocessing);
- :class:`NoisyInput`: x + N(0, sigma²) on every call (a randomized model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QuantizedInput(nn.Module):
    def __init__(self, base: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)


class SaturatedOutput(nn.Module):
    def __init__(self, base: nn.Module, temperature: float = 1e4) -> None:
        super().__init__()
        self.base, self.temperature = base, temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) * self.temperature


class ThresholdInput(nn.Module):
    def __init__(self, base: nn.Module, threshold: float = 0.5) -> None:
        super().__init__()
        self.base, self.threshold = base, threshold

    def forward(self, x: Tensor) -> Tensor:
        # + 0·x keeps the graph (autograd engines need a grad_fn); the gradient is zero
        return self.base((x > self.threshold).to(x.dtype) + 0.0 * x)


class NoisyInput(nn.Module):
    def __init__(self, base: nn.Module, sigma: float = 0.05) -> None:
        super().__init__()
        self.base, self.sigma = base, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x + self.sigma * torch.randn_like(x))
