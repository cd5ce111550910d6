"""The ``fast:`` section of a suite in params.yaml: the fast preset and its tuning split.

Types only (no attack code): loading params must not import the attacks; the stage turns these
into a :class:`tmifpe.attacks.fast.FastConfig` (:func:`tmifpe.pipeline.fast_cell.preset_config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tmifpe.losses import LossName
from tmifpe.pipeline.param_types import Frozen, TStarRule

# The loss packages dvc.yaml's `fast` stage depends on: a phase may use only these, so a change
# to another loss never re-runs the preset, and a phase using another loss cannot go unnoticed.
FAST_STAGE_LOSSES = (LossName.TMIFPE, LossName.DLR)


class FastPhaseParams(Frozen):
    kind: Literal["untargeted", "targeted"]
    steps: int = Field(ge=1)
    loss: LossName  # only the losses of FAST_STAGE_LOSSES: the fast stage depends on those
    n_targets: int = Field(ge=0, le=99)
    restarts: int = Field(ge=1)
    # target choice of a targeted phase: clean logit rank or MALT's linearised distance
    # (tmifpe.attacks.fast.malt_targets); default "rank" keeps older suite files valid
    targets: Literal["rank", "malt"] = "rank"
    # fraction of the survivors the phase attacks, smallest fp32 margin first
    # (tmifpe.attacks.fast.Phase.focus); default 1 (every survivor) keeps older suite files valid
    focus: float = Field(default=1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _targets(self) -> FastPhaseParams:
        if (self.kind == "targeted") != (self.n_targets > 0):
            raise ValueError(f"a targeted phase needs n_targets >= 1 and an untargeted one 0, "
                             f"got {self.kind} with n_targets={self.n_targets}")
        if self.loss not in FAST_STAGE_LOSSES:
            allowed = ", ".join(name.value for name in FAST_STAGE_LOSSES)
            raise ValueError(f"loss {self.loss.value!r}: the fast stage depends only on the loss "
                             f"packages {allowed} (dvc.yaml); add its package there first")
        return self


class FastParams(Frozen):
    """The preset's phases and guard, and the deterministic tuning/held-out split of the points:
    a permutation of the example indices drawn with ``split_seed``, its first
    ``round(tuning_fraction·N)`` entries are the tuning split."""

    # no defaults: every setting that changes results is written in the suite file
    phases: list[FastPhaseParams] = Field(min_length=1)
    guard_queries: int = Field(ge=0)
    guard_p_init: float = Field(gt=0.0, le=1.0)
    # Square queries on flagged survivors (tmifpe.attacks.fast.escalation_mask); AutoAttack's
    # 5000 by default so older suite files get the acting guard; 0 disables
    escalate_queries: int = Field(default=5000, ge=0)
    split_seed: int
    tuning_fraction: float = Field(gt=0.0, lt=1.0)
    tstar_rule: TStarRule
    batch_size: int = Field(ge=1)
    seed: int
