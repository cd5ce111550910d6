"""benchmarks/fast_validation.py's pieces: the greedy selection rule, the paired bootstrap, the
protocol lock, and the validation table in metrics.json and the report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tmifpe.aggregate.fast import load_validation, validation_metrics, with_validation
from tmifpe.report.fast import fast_section, validation_table

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("fast_validation",
                                                  ROOT / "benchmarks/fast_validation.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


fv = _bench()
RULE = {"guard_queries": 0, "budget_pass_ratio": 1.0}


def aa(n: int, cost: int = 100) -> pl.DataFrame:
    return pl.DataFrame({"example": list(range(n)), "clean_correct": [True] * n,
                         "n_grad": [cost // 2] * n, "n_queries": [0] * n})


def comp(robust: list[bool], passes: int) -> dict:
    return {"robust": robust, "passes": [passes] * len(robust)}


def test_greedy_picks_gain_per_pass_then_stops_at_no_gain() -> None:
    # a breaks points 0,1 for 10 passes; b breaks 0,1,2 for 40; c breaks 3 for 5
    T, F = True, False
    comps = {"m": {"a": comp([F, F, T, T, T], 10), "b": comp([F, F, F, T, T], 40),
                   "c": comp([T, T, T, F, T], 5)}}
    chosen, log = fv.select(comps, {"m": aa(5)}, {**RULE, "budget_pass_ratio": 0.17})
    # c: 1 point / 5 passes; a: 2/10; equal ratio -> cheaper c first; then a (2/8 per point),
    # then b adds point 2; budget 0.17: c 5 + a 4·10 + b 2·40... exceeds -> b inadmissible
    assert chosen[:2] == ["c", "a"]
    assert "b" not in chosen
    assert log[0]["added"] == "c" and log[0]["gain_points"] == 1


def test_greedy_fill_adds_reliable_attacks_within_budget() -> None:
    T, F = True, False
    comps = {"m": {"a": comp([F, T, T, T], 10), "b": comp([F, T, T, T], 10),
                   "c": comp([T, T, T, T], 1)}}
    chosen, log = fv.select(comps, {"m": aa(4)}, RULE)
    assert chosen[0] in {"a", "b"} and log[0]["why"] == "gain/cost"
    assert {r["why"] for r in log[1:]} == {"fill"}


def test_bootstrap_is_paired_and_covers_the_estimate() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.5
    f = a.copy()
    f[:3] = True  # three extra robust points for the preset
    ci = fv.bootstrap(f, a, np.full(200, 5.0), np.full(200, 100.0),
                      {"n_resamples": 500, "seed": 0, "level": 0.95})
    gap = 100 * (f.mean() - a.mean())
    assert ci["gap_ci_low"] <= gap <= ci["gap_ci_high"]
    assert ci["gap_ci_low"] >= 0  # paired: the preset is never below AA on a resample
    assert ci["pass_ratio_ci_low"] == ci["pass_ratio_ci_high"] == 0.05
    same = fv.bootstrap(a, a, np.ones(200), np.ones(200),
                        {"n_resamples": 100, "seed": 0, "level": 0.95})
    assert same["gap_ci_low"] == same["gap_ci_high"] == 0


def test_protocol_lock_refuses_a_changed_protocol(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    proto = repo / "benchmarks/p.json"
    proto.write_text("{}")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t",
                                               "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    old_root = fv.ROOT
    fv.ROOT = repo
    try:
        work = tmp_path / "work"
        sha = fv.check_protocol(proto, work, fresh=False)
        assert json.loads((work / "state.json").read_text())["protocol_sha256"] == sha
        proto.write_text('{"changed": 1}')  # modified after scoring started, not committed
        with pytest.raises(SystemExit, match="not committed"):
            fv.check_protocol(proto, work, fresh=False)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam",
                        "q"], cwd=repo, check=True)
        with pytest.raises(SystemExit, match="protocol may not change"):
            fv.check_protocol(proto, work, fresh=False)
        assert fv.check_protocol(proto, work, fresh=True) != sha
    finally:
        fv.ROOT = old_root


def _doc() -> dict:
    row = {"model": "at_s1", "role": "validation", "eps": 0.2, "n": 10, "robust_acc": 0.5,
           "aa_robust_acc": 0.4, "gap_vs_aa_pts": 10.0, "gap_ci_low": 0.0, "gap_ci_high": 20.0,
           "pass_ratio": 0.04, "pass_ratio_ci_low": 0.03, "pass_ratio_ci_high": 0.05,
           "fwd_eq_ratio": 0.05, "time_ratio": 0.1, "n_missed": 1, "n_broken_fast_only": 0,
           "n_escalated": 0, "preset": "p",
           "missed": [{"example": 7, "aa_broken_by": "apgd-t"}]}
    return {"protocol": "benchmarks/fast_protocol.json", "protocol_sha256": "ab" * 32,
            "preset": "p", "models": [row],
            "verdict": {"validation_models": 1, "gap_le_0_on_every_validation_model": False,
                        "worst_validation_gap_pts": 10.0, "worst_validation_pass_ratio": 0.04}}


def test_validation_metrics_and_report(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text(json.dumps(_doc()))
    doc = load_validation(path)
    m = with_validation({"default": {}}, doc)
    fast = m["fast_validation"]["models"]["at_s1"]
    assert fast["gap_vs_aa_pts"] == 10.0 and fast["gap_ci_high"] == 20.0
    assert set(validation_metrics(doc)) == {"at_s1"}
    assert with_validation({"x": 1}, None) == {"x": 1}
    table = validation_table(doc)
    assert table is not None and "#7 (apgd-t)" in table.rows[0]
    assert "NO" in table.verdict
    section = fast_section({}, validation_path=path)  # no pipeline fast results: still shown
    assert section is not None and section.validation == table
    assert fast_section({}, validation_path=tmp_path / "absent.json") is None
    path.write_text("[]")
    with pytest.raises(ValueError, match="models"):
        load_validation(path)
