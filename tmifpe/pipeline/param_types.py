"""Building blocks of the params models: a frozen, closed base model and the validated types
several sections share (so a rule is checked the same way wherever it appears)."""

from __future__ import annotations

from tmifpe.losses.tmifpe.tstar import Phase23Rule
from tmifpe.params import Frozen

# T-MIFPE's phase (ii)/(iii) rule (tmifpe.losses.tmifpe.tstar), parsed by pydantic
TStarRule = Phase23Rule

__all__ = ["Frozen", "TStarRule"]
