"""Parity with the reference implementation: our PGD-CE (100 steps) against pyautoattack's
APGD-CE (100 iterations, 1 restart, seed 0) on the same 150 digits test points.

Measured when written (single thread, torch 2.14.1 CPU): standard CNN eps 0.1: PGD-CE 42.0%,
APGD-CE 43.3%; PGD-AT CNN eps 0.1: 68.7% vs 68.7%, eps 0.2: 14.7% vs 14.7% (robust accuracy).
"""

from __future__ import annotations

import pytest
from support.parity import robust_vs_apgd_ce
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.losses import get_loss

pytestmark = pytest.mark.usefixtures("single_thread")
N_POINTS = 150
MAX_GAP = 0.05  # |PGD-CE − APGD-CE| robust accuracy, as a fraction


def _robust_accuracies(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[float, ...]:
    """(clean, PGD-CE 100 steps, APGD-CE) accuracies; both attacks re-verified."""
    return robust_vs_apgd_ce(model, x, y, eps, lambda m, x, y, mask, eps: run_pgd(
        m, x, y, get_loss("ce"), PGDConfig(eps=eps, steps=100), attack_mask=mask))


def test_pgd_ce_matches_apgd_ce_standard_model(digits, digits_cnn):
    x, y = digits.x_test[:N_POINTS], digits.y_test[:N_POINTS]
    clean, ours, theirs = _robust_accuracies(digits_cnn, x, y, eps=0.1)
    assert clean > 0.9
    assert 0.15 < theirs < clean - 0.2 and 0.15 < ours < clean - 0.2  # a non-trivial regime
    assert abs(ours - theirs) <= MAX_GAP, (ours, theirs)


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_pgd_ce_matches_apgd_ce_adversarially_trained_model(digits, digits_cnn, digits_cnn_at,
                                                            eps):
    x, y = digits.x_test[:N_POINTS], digits.y_test[:N_POINTS]
    clean, ours, theirs = _robust_accuracies(digits_cnn_at, x, y, eps=eps)
    assert clean > 0.85
    assert 0.05 < theirs < clean and 0.05 < ours < clean
    assert abs(ours - theirs) <= MAX_GAP, (ours, theirs)
    if eps == 0.1:  # adversarial training must buy robustness over the standard model
        _, std_ours, _ = _robust_accuracies(digits_cnn, x, y, eps=eps)
        assert ours > std_ours + 0.1
