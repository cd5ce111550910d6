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


def _commit_all(repo: Path) -> None:
    """``git init`` ``repo`` and commit every file in it (the protocol lock asks git)."""
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t",
                                               "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)


def test_protocol_lock_refuses_a_changed_protocol(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    proto = repo / "benchmarks/p.json"
    proto.write_text("{}")
    _commit_all(repo)
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


def _row(gap: float, ratio: float, missed: int = 0) -> dict:
    return {"gap_vs_aa_pts": gap, "pass_ratio": ratio, "n_missed": missed}


V2_RULE = {"budget_pass_ratio": 0.10}


def test_v2_rule_picks_the_cheapest_admissible_candidate() -> None:
    scores = {"cheap_miss": {"a": _row(0.33, 0.03, 1), "b": _row(-1.0, 0.03)},
              "ok_dear": {"a": _row(0.0, 0.09), "b": _row(-0.3, 0.08)},
              "ok_cheap": {"a": _row(-0.3, 0.06), "b": _row(0.0, 0.05)},
              "over_budget": {"a": _row(-2.0, 0.11), "b": _row(-2.0, 0.02)}}
    chosen, fallback, table = fv.select_cheapest(scores, V2_RULE)
    assert (chosen, fallback) == ("ok_cheap", False)
    by = {t["candidate"]: t for t in table}
    assert not by["cheap_miss"]["admissible"] and by["cheap_miss"]["models_gap_gt_0"] == 1
    assert not by["over_budget"]["admissible"] and not by["over_budget"]["within_budget"]
    assert by["ok_cheap"]["mean_pass_ratio"] == 0.055


def test_v2_rule_ties_then_fallback() -> None:
    tie = {"x": {"a": _row(0.0, 0.05, 2)}, "y": {"a": _row(0.0, 0.05, 0)},
           "z": {"a": _row(0.0, 0.05, 0)}}
    assert fv.select_cheapest(tie, V2_RULE)[:2] == ("y", False)  # fewer missed, then order
    none_ok = {"two_bad": {"a": _row(0.3, 0.02), "b": _row(0.3, 0.02)},
               "one_bad_big": {"a": _row(1.0, 0.09), "b": _row(0.0, 0.09)},
               "one_bad_small": {"a": _row(0.3, 0.08), "b": _row(-1.0, 0.08)}}
    assert fv.select_cheapest(none_ok, V2_RULE)[:2] == ("one_bad_small", True)
    with pytest.raises(SystemExit, match=r"pass ratio 0\.1"):
        fv.select_cheapest({"x": {"a": _row(0.0, 0.2)}}, V2_RULE)


def test_v2_candidate_phases_keep_restarts() -> None:
    spec = [{"kind": "untargeted", "steps": 20, "loss": "tmifpe", "n_targets": 0,
             "targets": "rank", "restarts": 1},
            {"kind": "targeted", "steps": 100, "loss": "dlr", "n_targets": 3,
             "targets": "malt", "restarts": 2}]
    cfg = fv.candidate_config(spec, 0.2, {"guard": {"guard_queries": 100,
                                                    "escalate_queries": 5000,
                                                    "tstar_rule": "coef", "seed": 0}})
    assert cfg.name == "tmifpe-u20+dlr-t100-t3mx2+sq100+esc5000"
    v1 = {k: v for k, v in spec[0].items() if k != "restarts"}  # v1 protocol: no restarts key
    assert fv.phase_of(v1).restarts == 1


def test_v2_protocol_file_is_well_formed() -> None:
    proto = json.loads((ROOT / "benchmarks/fast_protocol_v2.json").read_text())
    v1 = json.loads((ROOT / "benchmarks/fast_protocol.json").read_text())
    roles = {k: s["role"] for k, s in proto["models"].items()}
    assert {k for k, r in roles.items() if r == "tuning"} == set(v1["models"])
    assert sum(r == "validation" for r in roles.values()) >= 4
    assert proto["reference"] in proto["candidates"]
    for spec in proto["candidates"].values():
        fv.candidate_config(spec, 0.2, proto)  # every candidate is a valid preset


def test_v3_protocol_file_is_well_formed() -> None:
    """v3 tunes on every model v2 scored and validates on models no protocol scored before."""
    proto = json.loads((ROOT / "benchmarks/fast_protocol_v3.json").read_text())
    v2 = json.loads((ROOT / "benchmarks/fast_protocol_v2.json").read_text())
    roles = {k: s["role"] for k, s in proto["models"].items()}
    assert {k for k, r in roles.items() if r == "tuning"} == set(v2["models"])
    fresh = {k for k, r in roles.items() if r == "validation"}
    assert len(fresh) >= 5 and not fresh & set(v2["models"])
    seen = [s["train"] for s in v2["models"].values()]
    assert all(proto["models"][k]["train"] not in seen for k in fresh)  # new draws, not renames
    assert proto["candidates"][proto["reference"]] == [
        {**p, "focus": 1.0} for p in v2["candidates"]["u20+t100k3m+u100"]]
    for spec in proto["candidates"].values():
        fv.candidate_config(spec, 0.2, proto)  # every candidate is a valid preset


def test_protocol_lock_is_per_protocol_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    p1, p2 = repo / "benchmarks/fast_protocol.json", repo / "benchmarks/v2.json"
    p1.write_text("{}")
    p2.write_text('{"v": 2}')
    _commit_all(repo)
    old_root = fv.ROOT
    fv.ROOT = repo
    try:
        work = tmp_path / "work"
        work.mkdir()
        # a v1-era state file (one hash, no per-file map) belongs to the v1 protocol
        (work / "state.json").write_text(json.dumps({"protocol_sha256": "0" * 64}))
        with pytest.raises(SystemExit, match="protocol may not change"):
            fv.check_protocol(p1, work, fresh=False)
        (work / "candidates").mkdir()
        sha2 = fv.check_protocol(p2, work, fresh=False, scoring_dirs=fv.V2_DIRS)
        assert (work / "candidates").exists()  # another protocol's run: nothing discarded
        state = json.loads((work / "state.json").read_text())
        assert state["protocols"] == {"benchmarks/fast_protocol.json": "0" * 64,
                                      "benchmarks/v2.json": sha2}
    finally:
        fv.ROOT = old_root


def test_preset_is_protocol_v3s_selection_in_code_and_suites() -> None:
    import yaml

    from tmifpe.attacks.fast import (
        PRESET_PHASES,
        V1_PRESET_PHASES,
        V2_PRESET_PHASES,
        FastConfig,
    )

    doc = json.loads((ROOT / "benchmarks/results/fast_validation_v3.json").read_text())
    proto = json.loads((ROOT / "benchmarks/fast_protocol_v3.json").read_text())
    assert doc["protocol_sha256"] == fv.protocol_sha256(ROOT / "benchmarks/fast_protocol_v3.json")
    # the committed adoption rule of protocol v3 allowed the switch
    assert doc["verdict"]["passes"] or doc["verdict"]["at_least_as_good_as_v1_on_validation"]
    selected = tuple(fv.phase_of(p) for p in doc["selected_phases"])
    assert selected == PRESET_PHASES
    assert FastConfig(eps=0.2).name == doc["preset"]
    # v2's preset (v3's reference) and v1's stay reproducible under their old names
    v2 = tuple(fv.phase_of(p) for p in proto["candidates"][proto["reference"]])
    assert v2 == V2_PRESET_PHASES
    assert FastConfig(eps=0.2, phases=V2_PRESET_PHASES).name == doc["reference"]["preset"]
    doc2 = json.loads((ROOT / "benchmarks/results/fast_validation_v2.json").read_text())
    assert tuple(fv.phase_of(p) for p in doc2["selected_phases"]) == V2_PRESET_PHASES
    v1 = json.loads((ROOT / "benchmarks/fast_protocol_v2.json").read_text())["candidates"]["v1"]
    assert tuple(fv.phase_of(p) for p in v1) == V1_PRESET_PHASES
    assert FastConfig(eps=0.2, phases=V1_PRESET_PHASES).name == doc2["reference"]["preset"]
    for suite in ("default", "paper"):
        fast = yaml.safe_load((ROOT / f"conf/suite/{suite}.yaml").read_text())["fast"]
        assert tuple(fv.phase_of(p) for p in fast["phases"]) == PRESET_PHASES, suite
