"""tmifpe: floating-point error in adversarial-attack gradients, measured and fixed (T-MIFPE).

``tmifpe.evaluate(model, x, y, loss=..., eps=..., budget=..., precision=..., targets=...)`` runs
a verified PGD evaluation and returns an :class:`tmifpe.api.EvalResult`;
``tmifpe.evaluate_fast(model, x, y, eps=...)`` runs the fast preset (see :mod:`tmifpe.api`);
``tmifpe.evaluate_autoattack(model, x, y, eps=...)`` runs verified standard AutoAttack
(:mod:`tmifpe.evaluation.autoattack`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AutoAttackEval", "EvalResult", "FastRun", "__version__", "evaluate",
           "evaluate_autoattack", "evaluate_fast"]


def __getattr__(name: str) -> Any:  # torch is imported only when the API is used
    if name in ("evaluate", "evaluate_fast", "EvalResult", "FastRun"):
        from tmifpe import api

        return getattr(api, name)
    if name in ("evaluate_autoattack", "AutoAttackEval"):
        from tmifpe.evaluation import autoattack

        return getattr(autoattack, name)
    raise AttributeError(f"module 'tmifpe' has no attribute {name!r}")
