"""Step-size schedules for l∞ PGD (they depend on the total iteration budget N)."""

from __future__ import annotations

import enum
import math


class Schedule(str, enum.Enum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


def step_size(schedule: Schedule, k: int, n_steps: int, eps: float, scale: float = 2.0) -> float:
    """Step η_k at iteration k of N.

    [paper, MIFPE code] cosine: η_k = s·eps·cos(πk/2N); linear: η_k = s·eps·(1 − k/N), s = 2.
    constant [derived here, Madry-style]: η = 2.5·eps/N, so N steps can cross the ball.
    """
    if schedule is Schedule.COSINE:
        return scale * eps * math.cos(math.pi * k / (2 * n_steps))
    if schedule is Schedule.LINEAR:
        return scale * eps * (1.0 - k / n_steps)
    return 2.5 * eps / n_steps
