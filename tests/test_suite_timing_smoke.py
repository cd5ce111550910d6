"""benchmarks/suite_timing.py --quick end to end (tiny: a few points, budget 2, no stage runs):
it measures every precision of the suite natively and under the AVX2 emulation, reports native
bf16 support, and predicts; --reuse predicts again from the JSON. No assertion on any timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tmifpe.pipeline.config import load_params

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "suite_timing.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "suite_timing.json"
    proc = _run("--quick", "--no-fixed", "--points", "6", "--budget", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "predicted cold repro (avx2_emulated)" in proc.stdout
    return json.loads(out.read_text()), out


def test_every_precision_and_kind_in_both_modes(report) -> None:
    doc, _ = report
    suite = load_params(ROOT / "params.yaml")
    want = {(m, p.value, k) for m in suite.models for p in suite.precisions
            for k in ("untargeted", "targeted")}
    assert set(doc["modes"]) == {"native", "avx2_emulated"}
    for mode in doc["modes"].values():
        rows = mode["rows"]
        assert {(r["model"], r["precision"], r["kind"]) for r in rows} == want
        assert all(r["points"] > 0 and r["cpu_s_per_point_step"] > 0 for r in rows)
    emulated = doc["modes"]["avx2_emulated"]["cpu"]["torch_cpu_capability"]
    assert emulated in {"AVX2", "DEFAULT", "NO AVX"}  # never AVX512 under the cap
    assert doc["emulation"]["avx2_emulated"]["ATEN_CPU_CAPABILITY"] == "avx2"


def test_machine_facts(report) -> None:
    doc, _ = report
    cpu = doc["cpu"]
    assert cpu["native_bf16"] == bool(cpu["bf16_flags"])
    assert set(cpu["bf16_flags"]) <= {"avx512_bf16", "amx_bf16"}
    assert doc["environment"]["torch"]
    assert doc["threads"] == load_params(ROOT / "params.yaml").threads


def test_prediction_is_incomplete_without_stage_measurements(report, tmp_path) -> None:
    doc, path = report
    for pred in doc["prediction"].values():
        assert pred["complete"] is False and pred["other_stages_compute_s"] is None
        assert pred["cold_repro_s"] == pytest.approx(pred["attack_compute_s"], abs=0.2)
        assert pred["n_stages"] > 0
    again = tmp_path / "again.json"
    proc = _run("--reuse", str(path), "--out", str(again))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(again.read_text())["prediction"] == doc["prediction"]


def test_stage_seconds_come_from_the_run_log(tmp_path: Path) -> None:
    """cold_repro's per-stage walls and suite_timing's per-kind sums read one parser: a stage
    without its done line (a crash) is not counted."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cold_repro import stage_walls
    from suite_timing import other_stages

    log = tmp_path / "runs.jsonl"
    rows = [("start", "aggregate", 1.0), ("done", "aggregate", 3.5), ("start", "fast@a", 2.0),
            ("done", "fast@a", 2.25), ("start", "fast@b", 2.0), ("done", "fast@b", 3.0),
            ("start", "report", 4.0)]
    log.write_text("\n".join(json.dumps({"event": e, "stage": s, "time": t})
                             for e, s, t in rows) + "\n")
    assert stage_walls(log) == {"aggregate": 2.5, "fast@a": 0.25, "fast@b": 1.0}
    assert other_stages(log) == {"aggregate": 2.5, "fast": 1.25}
    assert other_stages(None) is None
