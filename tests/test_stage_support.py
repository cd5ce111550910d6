"""Stages take their process settings from params: the hash seed is applied by re-executing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.suites import write_params

from tmifpe.pipeline import stage_support

ROOT = Path(__file__).resolve().parents[1]
SUITE = {"name": "t", "hash_seed": 7,
         "datasets": {"digits": {"source": "digits", "n_examples": 20, "eps": 0.2}},
         "model_zoo": {"m": {"source": "trained", "dataset": "digits"}}, "models": ["m"],
         "losses": ["ce"], "budgets": [2], "precisions": {"fp32": {"n_targets": 0}}}


def test_stage_process_reexecutes_itself_with_the_hash_seed(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "stages.data", "--dataset", "x"])
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append((exe, argv)))
    monkeypatch.setenv("PYTHONHASHSEED", "123")
    stage_support.apply_hash_seed(7)
    assert os.environ["PYTHONHASHSEED"] == "7"
    assert calls == [(sys.executable, [sys.executable, "-m", "stages.data", "--dataset", "x"])]
    stage_support.apply_hash_seed(7)  # already right: no second exec
    assert len(calls) == 1


def test_in_process_callers_are_never_replaced(monkeypatch) -> None:
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("exec from a test process"))
    monkeypatch.setenv("PYTHONHASHSEED", "123")
    stage_support.apply_hash_seed(7)
    assert os.environ["PYTHONHASHSEED"] == "123"


def test_stage_started_with_another_hash_seed_runs_to_completion(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", SUITE)
    env = {**os.environ, "PYTHONHASHSEED": "123",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "stages.data", "--dataset", "digits"],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("data digits:") == 1  # the body ran once, after the re-exec
    assert (tmp_path / "data/eval/digits.pt").is_file()
