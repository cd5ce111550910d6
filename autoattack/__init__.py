"""Import alias: ``autoattack`` -> ``pyautoattack``.

robustbench 1.1.1 does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``; PyPI has no ``autoattack``
distribution, only ``pyautoattack`` (the same code, fra31/auto-attack a392200).
This package re-exports it under the name robustbench expects.
"""

import sys

import pyautoattack
from pyautoattack import *  # noqa: F403
from pyautoattack import state as state

sys.modules.setdefault("autoattack.state", state)
__all__ = getattr(pyautoattack, "__all__", [])
