"""The feasible box eps-ball ∩ [0,1] in float32, checked with exact rational arithmetic, and
the re-verification of adversarial examples (:mod:`tmifpe.verify`)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from tmifpe.attacks.projection import linf_box, project, random_start
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.verify import in_threat_model, verify

EPSILONS = [0.25, 8 / 255, 0.1, 0.3]  # 0.25 is exact in float32, the others are not


def _x0_cases(eps: float) -> torch.Tensor:
    """Random pixels, digits-like k/16 levels and the edges of [0,1] and of the ball."""
    g = torch.Generator().manual_seed(0)
    f32 = torch.float32
    e32 = torch.tensor(eps, dtype=f32)
    edges = torch.stack([torch.tensor(0.0), torch.tensor(1.0), e32, 1 - e32,
                         torch.nextafter(e32, torch.tensor(0.0)),
                         torch.nextafter(e32, torch.tensor(1.0)),
                         torch.nextafter(1 - e32, torch.tensor(0.0)),
                         torch.nextafter(1 - e32, torch.tensor(1.0))]).to(f32)
    levels = torch.arange(17, dtype=f32) / 16
    return torch.cat([torch.rand(2000, generator=g), levels, edges])


@pytest.mark.parametrize("eps", EPSILONS)
def test_linf_box_is_exact_and_tight(eps):
    x0 = _x0_cases(eps)
    lo, hi = linf_box(x0, eps)
    assert lo.dtype == hi.dtype == torch.float32
    assert (lo <= x0).all() and (x0 <= hi).all()
    e = Fraction(eps)
    down = torch.nextafter(lo, torch.full_like(lo, -1.0))
    up = torch.nextafter(hi, torch.full_like(hi, 2.0))
    for a, l, h, dl, uh in zip(*(t.tolist() for t in (x0, lo, hi, down, up)), strict=True):
        lo_true = max(Fraction(0), Fraction(a) - e)
        hi_true = min(Fraction(1), Fraction(a) + e)
        assert lo_true <= Fraction(l) and Fraction(h) <= hi_true  # sound: inside the ball
        assert Fraction(dl) < lo_true and Fraction(uh) > hi_true  # tight: next float is outside


@pytest.mark.parametrize("eps", EPSILONS)
def test_project_and_random_start_stay_inside(eps, in_ball):
    x0 = _x0_cases(eps)[None]  # (1, P)
    lo, hi = linf_box(x0, eps)
    g = torch.Generator().manual_seed(1)
    wild = x0 + (torch.rand(x0.shape, generator=g) - 0.5) * 4 * eps
    p = project(wild, lo, hi)
    in_ball(x0, p, eps)
    inside = (wild >= lo) & (wild <= hi)
    assert torch.equal(p[inside], wild[inside])  # identity inside the box
    assert torch.equal(project(p, lo, hi), p)  # idempotent
    start = random_start(x0, eps, lo, hi, torch.Generator().manual_seed(2))
    in_ball(x0, start, eps)


def test_random_start_on_surface_and_seeded():
    eps = 8 / 255
    x0 = torch.full((4, 1, 8, 8), 0.5)
    lo, hi = linf_box(x0, eps)
    a = random_start(x0, eps, lo, hi, torch.Generator().manual_seed(0))
    b = random_start(x0, eps, lo, hi, torch.Generator().manual_seed(0))
    c = random_start(x0, eps, lo, hi, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    ulp = torch.finfo(torch.float32).eps
    near_lo = (a - lo).abs() <= ulp
    near_hi = (a - hi).abs() <= ulp
    assert (near_lo ^ near_hi).all()  # every pixel on one face of the ball
    assert 0.35 < near_hi.float().mean().item() < 0.65  # signs roughly uniform
    # clipped by [0,1]: pixels at 0 can only start at 0 or at the upper face
    zeros = torch.zeros(1, 1, 8, 8)
    lo0, hi0 = linf_box(zeros, eps)
    s0 = random_start(zeros, eps, lo0, hi0, torch.Generator().manual_seed(0))
    assert ((s0 == 0) | ((s0 - hi0).abs() <= ulp)).all() and (s0 == 0).any()


def test_in_threat_model_rejects_one_ulp_outside():
    eps = 0.1
    x0 = torch.full((5, 1, 2, 2), 0.5)
    x0[4] = 0.0
    lo, hi = linf_box(x0, eps)
    x = hi.clone()
    x[1] = torch.nextafter(hi[1], torch.full_like(hi[1], 2.0))  # one float32 ulp too far
    x[2, 0, 0, 0] = float("nan")
    x[3] = lo[3]
    x[4, 0, 0, 0] = -1e-8  # below 0 (x0 = 0 there)
    assert in_threat_model(x0, x, eps).tolist() == [True, False, False, True, False]


def test_verify_margins_and_broken():
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3, 4))
    model = nn.Sequential(nn.Flatten(), lin)
    ref32, ref64 = PrecisionModel(model, Precision.FP32), PrecisionModel(model, Precision.FP64)
    x0 = torch.tensor([[0.5, 0.3, 0.1, 0.0], [0.2, 0.4, 0.1, 0.0]]).reshape(2, 1, 2, 2)
    y = torch.tensor([0, 0])
    v = verify(ref32, ref64, x0, x0.clone(), y, 0.1)
    assert v.valid.all() and v.pred_fp32.tolist() == [0, 1] == v.pred_fp64.tolist()
    torch.testing.assert_close(v.margin_fp64, torch.tensor([0.2, -0.2], dtype=torch.float64))
    assert v.broken(y).tolist() == [False, True] and not v.nonfinite_fp32.any()
    far = x0.clone()
    far[1, 0, 0, 0] = 0.9  # misclassified point moved outside the ball: not broken
    assert verify(ref32, ref64, x0, far, y, 0.1).broken(y).tolist() == [False, False]
