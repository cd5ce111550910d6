"""Building blocks of the params models: a frozen, closed base model and the validated types
several sections share (so a rule is checked the same way wherever it appears)."""

from __future__ import annotations

from typing import Literal

from tmifpe.params import Frozen

# T-MIFPE's phase (ii)/(iii) rule, parsed by pydantic: tmifpe.losses.tmifpe.tstar.PHASE23_RULES
# (tests/test_config.py checks they agree; not imported, so that loading params does not make
# every stage depend on the T-MIFPE package)
TStarRule = Literal["mifpe", "coef", "cap"]

__all__ = ["Frozen", "TStarRule"]
