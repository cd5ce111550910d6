"""benchmarks/attack_step.py --quick end to end: it runs, prints PASS/MISS and writes the JSON the
README documents. Behaviour only: no assertion on any timing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tmifpe.precision import Precision

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "attack_step.py"
LOSSES = ("ce", "cw", "dlr", "mifpe", "tmifpe")
ROW_KEYS = {"model", "precision", "batch", "what", "seconds_per_iter", "ratio_vs_bare",
            "call_seconds", "divisor", "steps", "repeats", "short_examples", "note"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "attack_step.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_machine_facts(run):
    report, _ = run
    machine = report["machine"]
    assert report["mode"] == "quick"
    assert machine["threads"] == 1
    assert machine["torch_version"] == torch.__version__
    assert machine["cpu_model"] and machine["logical_cores"] >= 1


def test_rows_cover_every_measurement(run):
    report, _ = run
    rows = report["rows"]
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    blocks = {(r["model"], r["precision"]) for r in rows}
    assert {p for _, p in blocks} == {p.value for p in Precision}  # autocast modes too
    assert len({m for m, _ in blocks}) == 2  # digits SmallCNN and ResNet-18
    for model, prec in blocks:
        whats = {r["what"] for r in rows if (r["model"], r["precision"]) == (model, prec)}
        expected = {"bare fwd (no grad)", "bare fwd+bwd", "t* solve"}
        expected |= {f"PGD step {loss}" for loss in LOSSES}
        if prec == "fp32":
            expected.add("APGD-CE iter")
        assert whats == expected, (model, prec)


def test_row_values(run):
    report, _ = run
    for r in report["rows"]:
        assert math.isfinite(r["seconds_per_iter"]) and r["seconds_per_iter"] > 0, r
        assert math.isfinite(r["ratio_vs_bare"]) and r["ratio_vs_bare"] > 0, r
        assert r["call_seconds"] >= r["seconds_per_iter"], r
        assert r["short_examples"] == 0, r  # eps 1e-4 on confident points: nothing flips
        if r["what"] == "bare fwd+bwd":
            assert r["ratio_vs_bare"] == 1.0


def test_tstar_and_targets(run):
    report, stdout = run
    assert [t["K"] for t in report["tstar_throughput"]] == [10, 100, 1000]
    assert all(t["examples_per_second"] > 0 for t in report["tstar_throughput"])
    assert {s["precision"] for s in report["tstar_share"]} == {"fp32"}
    targets = report["targets"]
    assert {t["status"] for t in targets} <= {"PASS", "MISS"}
    names = " ".join(t["target"] for t in targets)
    for phrase in ("bare fwd+bwd", "T-MIFPE step <= 1.03x CE step", "APGD-CE iter"):
        assert phrase in names
    assert sum(stdout.count(s) for s in ("PASS", "MISS")) == len(targets)
