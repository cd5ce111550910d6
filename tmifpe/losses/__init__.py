"""Loss registry: every loss is ``(logits, labels, *, targets=None) -> (N,)``, maximised.

One package per loss (``tmifpe/losses/<loss>/``; T-MIFPE's holds its t* solver) so that DVC
re-runs only the cells of the loss whose folder changed (the attack cell of a loss depends on its
own package only: tmifpe/pipeline/code_deps.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from tmifpe.choices import parse_enum
from tmifpe.losses.ce import ce_loss
from tmifpe.losses.cw import cw_loss
from tmifpe.losses.dlr import dlr_loss
from tmifpe.losses.mifpe import mifpe_loss
from tmifpe.losses.tmifpe import tmifpe_loss

LossFn = Callable[..., Tensor]


class LossName(str, enum.Enum):
    CE = "ce"
    CW = "cw"
    DLR = "dlr"
    MIFPE = "mifpe"
    TMIFPE = "tmifpe"


@dataclass(frozen=True)
class LossSpec:
    name: LossName
    fn: LossFn
    label: str  # display name for reports


LOSSES: dict[LossName, LossSpec] = {
    LossName.CE: LossSpec(LossName.CE, ce_loss, "CE"),
    LossName.CW: LossSpec(LossName.CW, cw_loss, "C&W"),
    LossName.DLR: LossSpec(LossName.DLR, dlr_loss, "DLR"),
    LossName.MIFPE: LossSpec(LossName.MIFPE, mifpe_loss, "MIFPE"),
    LossName.TMIFPE: LossSpec(LossName.TMIFPE, tmifpe_loss, "T-MIFPE"),
}


def parse_loss(name: str) -> LossName:
    return parse_enum(LossName, name, "loss")


def get_loss(name: str | LossName, *, tstar_rule: str = "coef") -> LossFn:
    """The loss function for ``name``; ``tstar_rule`` only affects T-MIFPE."""
    spec = LOSSES[parse_loss(name) if isinstance(name, str) else name]
    if spec.name is LossName.TMIFPE:
        return partial(tmifpe_loss, rule=tstar_rule)
    return spec.fn


__all__ = ["LOSSES", "LossFn", "LossName", "LossSpec", "get_loss", "parse_loss"]
