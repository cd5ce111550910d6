"""Shared fixtures: tiny digits CNNs trained once per session (standard and PGD-AT).

CPU time is shared with other processes: the model fixtures run single-threaded (on a loaded
2-core machine OpenMP spinning makes small convolutions 10-50x slower with 2 threads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction

import pytest
import torch
from torch import Tensor, nn

from tmifpe.data.digits import Split, digits_split
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.pipeline.train import TrainConfig, train_model
from tmifpe.verify import in_threat_model


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker() -> Iterator[None]:
    """pytest-xdist runs one worker per core: one intra-op thread each avoids oversubscription."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for the module using it, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits() -> Split:
    """sklearn digits, 25% stratified test split (450 points), seed 0."""
    return digits_split(test_size=0.25, seed=0)


def _trained_cnn(split: Split, cfg: TrainConfig) -> nn.Module:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():  # keep the global RNG of other tests untouched
            torch.manual_seed(cfg.seed)
            model = SmallCNN(width=16)
            train_model(model, split.x_train, split.y_train, cfg)
    finally:
        torch.set_num_threads(previous)
    return model.eval()


@pytest.fixture(scope="session")
def digits_cnn(digits: Split) -> nn.Module:
    """Standard training, 8 epochs (~2 s single-threaded); ~95% clean test accuracy."""
    return _trained_cnn(digits, TrainConfig(epochs=8, seed=0))


@pytest.fixture(scope="session")
def digits_cnn_at(digits: Split) -> nn.Module:
    """PGD-AT (eps 0.1, 5 steps), 6 epochs (~2-3 s single-threaded)."""
    return _trained_cnn(digits, TrainConfig(epochs=6, seed=0, adv_eps=0.1, adv_steps=5))


def _exact_in_ball(x0: Tensor, x: Tensor, eps: float) -> bool:
    """|x − x0| ≤ eps and 0 ≤ x ≤ 1 as real numbers (float values converted exactly)."""
    e = Fraction(eps)
    return all(abs(Fraction(b) - Fraction(a)) <= e and 0 <= b <= 1
               for a, b in zip(x0.flatten().tolist(), x.flatten().tolist(), strict=True))


def assert_in_ball_exact(x0: Tensor, x: Tensor, eps: float) -> None:
    """float32 ``x`` lies in the eps-ball around ``x0`` and in [0,1]: checked in float64, by
    :func:`tmifpe.verify.in_threat_model`, and exactly (rationals) near the boundary."""
    assert x.dtype == torch.float32 and x.shape == x0.shape
    assert torch.isfinite(x).all()
    diff = (x.double() - x0.double()).abs()
    assert (diff <= eps).all(), f"float64 |x - x0| max {diff.max().item()!r} > eps {eps!r}"
    assert ((x >= 0) & (x <= 1)).all()
    assert in_threat_model(x0, x, eps).all()
    # pixels further than 1e-9 inside are decided above with a margin far beyond float64
    # rounding; the ones near the boundary are checked exactly
    near = (diff > eps - 1e-9).flatten()
    assert _exact_in_ball(x0.flatten()[near], x.flatten()[near], eps)


@pytest.fixture(scope="session")
def in_ball() -> Callable[[Tensor, Tensor, float], None]:
    """The exact eps-ball ∩ [0,1] assertion, as a fixture (tests are not a package)."""
    return assert_in_ball_exact
