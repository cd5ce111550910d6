"""Fixed cost per stage (issue 19, item 7): a stage process imports only what it needs, and the
heavy libraries it does not use (scipy, matplotlib, pyautoattack) stay unloaded. The runtime
contract's public ``torch.use_deterministic_algorithms`` imports torch's compiler config (dynamo,
sympy); the project uses public APIs only, so that cost stays (benchmarks/suite_timing.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("scipy", "matplotlib", "pyautoattack")
PROBE = """
import json, sys, torch
import stages.{stage}
from tmifpe.runtime import numerics
with numerics(1):
    state = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
print(json.dumps({{"state": state, "after": torch.are_deterministic_algorithms_enabled(),
                   "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("stage", ["attack", "model", "data"])
def test_stage_imports_stay_light(stage: str) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(stage=stage, heavy=HEAVY)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["state"] == [True, True]  # the contract still holds inside numerics
    assert got["after"] is False  # and is restored after it
    assert got["loaded"] == []


def test_hash_seed_reexec_happens_before_torch_is_imported() -> None:
    """Started without PYTHONHASHSEED (plain `dvc repro`), a stage re-executes itself with
    suite.hash_seed before importing torch: torch is imported once, not once per process image."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([sys.executable, "-m", "stages.data", "--dataset", "no_such_dataset"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]  # the one-line error of a bad dataset key
    torch_imports = [ln for ln in proc.stderr.splitlines()
                     if ln.startswith("import time:") and ln.split("|")[-1].strip() == "torch"]
    assert len(torch_imports) == 1
