"""benchmarks/device_check.py: on CPU the measured CE thresholds are the theory's (true-class
term −ln u, whole logit gradient −ln(s/2)) in every dtype, and the script writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_thresholds_follow_the_theory(device_check):
    rows = {r["dtype"]: r for r in device_check.measure(torch.device("cpu"))}
    assert set(rows) == {"fp16", "bf16", "fp32", "fp64"}
    for r in rows.values():
        assert r["true_class_agrees"] and r["logit_gradient_agrees"], r
        # no gap below the first zero is zero, none above it is non-zero
        assert r["true_class_last_nonzero"] < r["true_class_first_zero"]
        assert r["input_gradient_first_zero"] <= r["logit_gradient_first_zero"]
    assert rows["fp16"]["true_class_first_zero"] == pytest.approx(7.62, abs=0.01)
    assert rows["fp16"]["logit_gradient_first_zero"] == pytest.approx(17.33, abs=0.02)


def test_script_writes_json(tmp_path):
    out = tmp_path / "dc.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["torch_version"] == torch.__version__
    assert [r["dtype"] for r in doc["rows"]] == ["fp16", "bf16", "fp32", "fp64"]
    assert [r["precision"] for r in doc["autocast_rows"]] == ["amp-fp16", "amp-bf16"]
    assert "fp16" in proc.stdout and "theory" in proc.stdout


def test_unusable_device_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "nonsense",
                           "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "device 'nonsense'" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_cpu_autocast_thresholds_follow_the_derivation(device_check):
    """amp-*: CE in fp32, its logit gradient cast to fp16/bf16: the true-class term survives to
    fp32's rounding limit (pure fp16 loses it at 7.62), the whole logit gradient vanishes at the
    dtype's underflow limit (fp16 17.33, as pure fp16)."""
    rows = {r["precision"]: r for r in device_check.measure_autocast(torch.device("cpu"))}
    assert set(rows) == {"amp-fp16", "amp-bf16"}
    for r in rows.values():
        assert r["true_class_agrees"] and r["logit_gradient_agrees"], r
        assert r["true_class_first_zero"] == pytest.approx(16.64, abs=0.12)  # bf16 spacing 1/8
        assert r["true_class_last_nonzero"] < r["true_class_first_zero"]
    assert rows["amp-fp16"]["dtype"] == "fp16"
    assert rows["amp-fp16"]["logit_gradient_first_zero"] == pytest.approx(17.33, abs=0.02)
    assert rows["amp-bf16"]["logit_gradient_first_zero"] == pytest.approx(92.88, abs=0.5)
