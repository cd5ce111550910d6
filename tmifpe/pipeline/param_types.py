"""Building blocks of the params models: a frozen, closed base model and the validated types
several sections share (so a rule is checked the same way wherever it appears)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from tmifpe.losses.tmifpe.tstar import PHASE23_RULES


class Frozen(BaseModel):
    """Immutable params section; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_rule(value: str) -> str:
    if value not in PHASE23_RULES:
        raise ValueError(f"expected one of {', '.join(PHASE23_RULES)}")
    return value


# T-MIFPE's phase (ii)/(iii) rule (tmifpe.losses.tmifpe.tstar)
TStarRule = Annotated[str, AfterValidator(_check_rule)]
