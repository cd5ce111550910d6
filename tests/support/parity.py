"""Shared by the parity tests: one of our attacks against pyautoattack's APGD-CE on the same
points, both re-verified by fresh fp32/fp64 forward passes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyautoattack.autopgd_base import APGDAttack
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDResult
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.verify import in_threat_model, verify

# (fp32 model, x, y, clean-correct mask, eps) -> our attack's result on the masked points
Attack = Callable[[PrecisionModel, Tensor, Tensor, Tensor, float], PGDResult]


def robust_vs_apgd_ce(model: nn.Module, x: Tensor, y: Tensor, eps: float,
                      attack: Attack) -> tuple[float, float, float]:
    """(clean accuracy, robust accuracy under ``attack``, under APGD-CE 100 it., 1 restart)."""
    ref32 = PrecisionModel(model, Precision.FP32)
    ref64 = PrecisionModel(model, Precision.FP64)
    with torch.no_grad():
        correct = ref32(x).argmax(dim=1) == y
    res = attack(ref32, x, y, correct, eps)
    ours = verify(ref32, ref64, x, res.x_adv, y, eps)
    assert ours.valid.all()
    # fp32 attack: its own verdict equals the fresh fp32 re-check on the attacked points
    assert torch.equal(ours.broken(y) & correct, res.success)
    with torch.random.fork_rng():  # APGD seeds the global RNG
        apgd = APGDAttack(ref32, n_iter=100, eps=eps, norm="Linf", loss="ce", n_restarts=1,
                          seed=0, device="cpu")
        x_apgd = apgd.perturb(x, y)
    # APGD clips in float32 arithmetic: about half its x_adv overshoot eps by one float32 ulp
    # (2.4e-8), so it is held to eps + 1e-6 (ours is held to eps exactly)
    assert in_threat_model(x, x_apgd, eps + 1e-6).all()
    theirs = verify(ref32, ref64, x, x_apgd, y, eps + 1e-6)
    return (correct.float().mean().item(),
            (correct & ~ours.broken(y)).float().mean().item(),
            (correct & ~theirs.broken(y)).float().mean().item())
