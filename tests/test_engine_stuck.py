"""Issue 19, item 3: a non-finite step does not freeze an example for the rest of a run.

The network is a small fp16 ResNet (stem + 4 residual blocks, 9 convolutions, random
weights) whose pooled features go through a BatchNorm with a tiny learned scale (γ = 1e-5)
into a large-weight head: logits ~0.4, top-2 gaps ~4e-3, so MIFPE's scale c = 1/Δ is ~300 and
its logit gradient c·(p − e_y) overflows fp16 in the head's backward, while CE's (entries ≤ 1)
and the fp64 backward are finite. On 01eb413 such a step was skipped, the next recomputation
was the same, and the example never left its start (``nonfinite_steps`` = steps). Now the
network backward runs on the logit gradient rescaled by a power of two
(:func:`tmifpe.attacks.runs.input_gradient`): its sign is checked against float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tmifpe.attacks.apgd import APGDConfig, run_apgd, uniform_start
from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.attacks.projection import linf_box, random_start
from tmifpe.losses import get_loss
from tmifpe.precision import Precision, PrecisionModel

pytestmark = pytest.mark.usefixtures("single_thread")
MIFPE, CE = get_loss("mifpe"), get_loss("ce")
EPS, STEPS = 8 / 255, 4


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class _ResNet(nn.Module):
    def __init__(self, c: int = 8, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.Sequential(*[_Block(c) for _ in range(blocks)])
        self.norm = nn.BatchNorm1d(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.stem(x)).mean(dim=(2, 3))))


@pytest.fixture(scope="module")
def setup():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = _ResNet()
    with torch.no_grad():
        net.norm.weight.fill_(1e-5)
        net.head.weight.mul_(1000.0)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net.norm.momentum = None  # calibrate the BatchNorm statistics on the data, then freeze
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    fp16 = PrecisionModel(net, Precision.FP16)
    with torch.no_grad():
        y = fp16.reference(x).argmax(dim=1)
    return net, fp16, x, y


def _plain_grad(model: nn.Module, x: Tensor, y: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
    xk = x.clone().requires_grad_(True)
    logits = model(xk)
    (g,) = torch.autograd.grad(loss_fn(logits, y).sum(), xk)
    return g, logits.detach()


def _overflowing(fp16: PrecisionModel, start: Tensor, y: Tensor) -> Tensor:
    g, z = _plain_grad(fp16, start, y, MIFPE)
    assert torch.isfinite(z).all()
    return ~torch.isfinite(g.flatten(1)).all(dim=1)


def test_rescaled_backward_is_finite_and_agrees_with_fp64(setup):
    from tmifpe.attacks.runs import input_gradient  # new in issue 19

    net, fp16, x, y = setup
    bad = _overflowing(fp16, x, y)
    assert bad.sum() >= 5, "the scenario needs rows whose fp16 MIFPE backward overflows"
    g_ce, _ = _plain_grad(fp16, x, y, CE)
    assert torch.isfinite(g_ce).all()  # CE's backward is fine: the scale c is the cause
    xk = x[bad].clone().requires_grad_(True)
    logits = fp16(xk)
    g = input_gradient(MIFPE(logits, y[bad]), logits, xk, torch.ones_like(y[bad], dtype=bool))
    assert torch.isfinite(g).all() and (g != 0).flatten(1).any(dim=1).all()
    g64, _ = _plain_grad(PrecisionModel(net, Precision.FP64), x[bad], y[bad], MIFPE)
    assert torch.isfinite(g64).all()
    agree = (g.sign() == g64.sign()).double().mean()
    assert agree >= 0.9, f"sign agreement with the float64 gradient {agree:.3f}"


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
def test_overflowing_examples_are_not_stuck(setup, engine):
    _, fp16, x, y = setup
    lo, hi = linf_box(x, EPS)
    gen = torch.Generator().manual_seed(0)
    start = (random_start if engine == "pgd" else uniform_start)(x, EPS, lo, hi, gen)
    bad = _overflowing(fp16, start, y)
    assert bad.sum() >= 5, "the scenario needs examples whose first step overflows"
    if engine == "pgd":
        res = run_pgd(fp16, x, y, MIFPE, PGDConfig(eps=EPS, steps=STEPS))
    else:
        res = run_apgd(fp16, x, y, MIFPE, APGDConfig(eps=EPS, steps=STEPS))
    rows = bad & ~(res.success & (res.first_success_iter == 0))
    assert rows.any()
    # before the fix: every step of these rows was non-finite and skipped, x never moved
    assert (res.nonfinite_steps[rows] < res.n_backward[rows]).all()
    assert (res.nonfinite_steps[rows] == 0).all()
    moved = (res.x_adv[rows] != start[rows]).flatten(1).any(dim=1)
    assert moved.all()
