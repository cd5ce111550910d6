"""Randomized models are refused, one way, in every door (issue 19 item 4).

On 01eb413 ``tmifpe.evaluate`` silently evaluated an eval-mode copy of a train-mode dropout
model (``PrecisionModel`` forces ``.eval()``): these tests fail there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tmifpe
from tmifpe.evaluation.autoattack import evaluate_autoattack
from tmifpe.precision import check_deterministic

pytestmark = pytest.mark.usefixtures("single_thread")
MESSAGE = (r"model .* is randomized: two forward passes of the same points differ "
           r"\(train-mode Dropout active\)")


def _dropout_model(net: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Dropout(0.3), net).train()


def test_check_leaves_model_mode_and_rng_unchanged(digits_cnn, digits) -> None:
    model = _dropout_model(digits_cnn)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=MESSAGE):
        check_deterministic(model, digits.x_test[:16])
    assert model.training and torch.equal(torch.get_rng_state(), state)
    check_deterministic(model.eval(), digits.x_test[:16])  # eval mode: deterministic, accepted
    model.train()


@pytest.mark.parametrize("door", ["evaluate", "evaluate_fast", "evaluate_autoattack"])
def test_every_door_refuses_a_train_mode_dropout_model(digits_cnn, digits, door) -> None:
    model = _dropout_model(digits_cnn)
    x, y = digits.x_test[:16], digits.y_test[:16]
    with pytest.raises(ValueError, match=MESSAGE):
        if door == "evaluate":
            tmifpe.evaluate(model, x, y, eps=0.2, budget=2)
        elif door == "evaluate_fast":
            tmifpe.evaluate_fast(model, x, y, eps=0.2)
        else:
            evaluate_autoattack(model, x, y, eps=0.2, device="cpu")
    assert model.training  # the caller's model is left in its mode


def test_a_stochastic_eval_mode_model_is_refused_too(digits_cnn, digits) -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = digits_cnn

        def forward(self, x):
            return self.net(x + 0.01 * torch.randn_like(x))

    with pytest.raises(ValueError, match=r"Noisy is randomized.*forward pass is stochastic"):
        tmifpe.evaluate(Noisy().eval(), digits.x_test[:8], digits.y_test[:8], eps=0.2, budget=2)
