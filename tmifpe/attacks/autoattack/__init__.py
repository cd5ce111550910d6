"""Standard AutoAttack, stage by stage, with measured per-example costs and resumable state.

:mod:`.cascade` runs the attacks (:func:`run_autoattack`), :mod:`.counting` charges every model
call to its example, :mod:`.snapping` repairs float32 rounding at the ball's edge,
:mod:`.state` saves and checks resumable progress. Verified frames:
:mod:`tmifpe.evaluation.autoattack`.
"""

from tmifpe.attacks.autoattack.cascade import ATTACKS, AAConfig, AAResult, Progress, run_autoattack
from tmifpe.attacks.autoattack.counting import CallCounter, match_rows
from tmifpe.attacks.autoattack.snapping import SNAP_TOL, snap_to_ball

__all__ = ["ATTACKS", "SNAP_TOL", "AAConfig", "AAResult", "CallCounter", "Progress",
           "match_rows", "run_autoattack", "snap_to_ball"]
