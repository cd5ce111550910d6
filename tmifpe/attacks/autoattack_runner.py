"""Compatibility path until every caller imports the new modules; remove then.

The runner now lives in :mod:`tmifpe.attacks.autoattack` (cascade, counting, snapping, state);
the verified frame in :mod:`tmifpe.evaluation.autoattack`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tmifpe.attacks.autoattack import (
    ATTACKS,
    SNAP_TOL,
    AAConfig,
    AAResult,
    match_rows,
    run_autoattack,
    snap_to_ball,
)
from tmifpe.verify import Verdict

__all__ = ["ATTACKS", "SNAP_TOL", "AAConfig", "AAResult", "autoattack_frame", "match_rows",
           "run_autoattack", "snap_to_ball"]


def autoattack_frame(result: AAResult, verdict: Verdict, x: Tensor, y: Tensor,
                     clean_correct: Tensor, meta: dict[str, Any]) -> Any:
    """Old signature of :func:`tmifpe.evaluation.autoattack.autoattack_frame` (``x`` and
    ``meta["suite"]`` unused)."""
    from tmifpe.evaluation.autoattack import autoattack_frame as frame

    return frame(result, verdict, y, clean_correct, dataset=meta["dataset"], model=meta["model"])
