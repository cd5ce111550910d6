"""``autoattack`` -> ``pyautoattack`` import alias, installed only inside this process.

robustbench 1.1.1 does ``from autoattack import AutoAttack`` and ``from autoattack.state import
EvaluationState``; PyPI has no ``autoattack`` distribution, only ``pyautoattack`` (the same code,
fra31/auto-attack a392200). Instead of installing a top-level ``autoattack`` package (which would
shadow a real one), :func:`install` puts a finder first on ``sys.meta_path`` that maps
``autoattack`` and every ``autoattack.<sub>`` to the already-importable ``pyautoattack[.<sub>]``
module object (the same object: classes compare equal, nothing is loaded twice).
:func:`import_robustbench` is the one door through which tmifpe imports robustbench.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

ALIAS, TARGET = "autoattack", "pyautoattack"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:  # already executed under its real name
        return None


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``autoattack[.x]`` as ``pyautoattack[.x]`` (declines when pyautoattack is not
    installed). Placed first on ``sys.meta_path``, it also takes precedence over a separately
    installed ``autoattack`` (fra31's repository): the same attack code, under one name."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = TARGET + fullname[len(ALIAS):]
        if importlib.util.find_spec(real.split(".")[0]) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real))


_FINDER = _AliasFinder()


def install() -> None:
    """Make ``import autoattack[.x]`` resolve to ``pyautoattack[.x]`` (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def import_robustbench() -> ModuleType:
    """``import robustbench`` with the alias in place; the only way tmifpe imports robustbench.

    Submodules (``robustbench.utils``, ``robustbench.model_zoo``...) can be imported normally
    after this call.
    """
    install()
    return importlib.import_module("robustbench")
