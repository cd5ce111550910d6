"""benchmarks/seed_spread.py: the seed override of the training recipe, the spread statistics
and claims, and a --quick end-to-end run (JSON structure, stats from the per-seed values,
resume from the cache)."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tmifpe.data.digits import digits_split
from tmifpe.pipeline.config import load_params
from tmifpe.pipeline.model_stage import train_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "seed_spread.py"


def _bench():
    spec = importlib.util.spec_from_file_location("seed_spread", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["seed_spread"] = mod
    spec.loader.exec_module(mod)
    return mod


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for _, t in sorted(model.state_dict().items())]


def test_train_recipe_seed_override(single_thread):
    suite = load_params(ROOT / "params.yaml")
    params = suite.model_zoo["digits_std"].model_copy(update={"epochs": 1})
    split = digits_split(test_size=0.2, seed=0)
    x, y = split.x_train[:128], split.y_train[:128]
    recipe, _ = train_recipe(params, "digits", x, y)  # the recipe's own seed (0)
    same, _ = train_recipe(params, "digits", x, y, seed=params.seed)
    other, _ = train_recipe(params, "digits", x, y, seed=params.seed + 1)
    assert all(torch.equal(a, b) for a, b in zip(_weights(recipe), _weights(same), strict=True))
    assert not all(torch.equal(a, b)
                   for a, b in zip(_weights(recipe), _weights(other), strict=True))
    with pytest.raises(ValueError, match="training recipe"):
        train_recipe(params.model_copy(update={"source": "robustbench", "id": "x"}),
                     "digits", x, y)


def test_spread_and_claims_from_per_seed_values():
    bench = _bench()
    s = bench.spread([1.0, 2.0, 6.0])
    assert s == {"mean": 3.0, "sd": statistics.stdev([1.0, 2.0, 6.0]), "min": 1.0, "max": 6.0}
    assert bench.spread([4.0])["sd"] is None
    with pytest.raises(ValueError, match="non-finite"):
        bench.spread([1.0, math.nan])
    # T-MIFPE below CE at every budget: holds on seed 0 (margins 2, 1), not on seed 1 (0 at b20)
    plan = bench.Plan(20, 100, (10, 20), 50, 100, 50)
    figs = {0: {"ce_minus_tmifpe_b10_pts": 2.0, "ce_minus_tmifpe_b20_pts": 1.0},
            1: {"ce_minus_tmifpe_b10_pts": 3.0, "ce_minus_tmifpe_b20_pts": 0.0}}
    claim = next(c for c in bench.claims(plan) if c.id == "tmifpe_below_ce_every_budget")
    assert claim.rule(figs[0]) == (True, 1.0)
    assert claim.rule(figs[1]) == (False, 0.0)


def test_cached_only_raises_missing(tmp_path):
    bench = _bench()
    with pytest.raises(bench.Missing):
        bench.cached(tmp_path / "run.json", {"a": 1}, lambda: {"x": 1}, offline=True)
    assert bench.cached(tmp_path / "run.json", {"a": 1}, lambda: {"x": 1}) == {"x": 1}
    assert bench.cached(tmp_path / "run.json", {"a": 1}, lambda: {"x": 2}, offline=True) == {"x": 1}
    with pytest.raises(bench.Missing):  # other settings: the cached summary does not apply
        bench.cached(tmp_path / "run.json", {"a": 2}, lambda: {"x": 1}, offline=True)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, dict, str]:
    tmp = tmp_path_factory.mktemp("seed_spread")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--seeds", "0", "1", "--n-examples", "6",
           "--models", "digits_std", "--threads", "1", "--work", str(tmp / "work")]
    first = subprocess.run([*cmd, "--out", str(tmp / "a.json")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-4000:]
    again = subprocess.run([*cmd, "--out", str(tmp / "b.json")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    return (json.loads((tmp / "a.json").read_text()), json.loads((tmp / "b.json").read_text()),
            first.stdout)


@pytest.mark.slow  # two subprocess runs that train two models (< 60 s idle)
def test_quick_run_structure(quick):
    report, _, stdout = quick
    assert report["mode"] == "quick" and report["seeds"] == [0, 1]
    env = report["environment"]
    assert env["threads"] == 1 and env["torch_version"] == torch.__version__
    assert env["cpu_model"] and set(env["isa_flags"]) == {"avx2", "avx512f", "avx512_bf16",
                                                          "amx_bf16"}
    seeds = report["models"]["digits_std"]["seeds"]
    assert set(seeds) == {"0", "1"}
    assert seeds["0"]["train"]["parameters_sha256"] != seeds["1"]["train"]["parameters_sha256"]
    names = {f["figure"] for f in report["figures"]}
    assert {"clean_acc_pct", "ce_u_b5_fp16_pct", "ce_u_b5_fp16_zero_grad_pct", "aa_robust_pct",
            "aa_passes_per_point", "fast_gap_pts", "fast_pass_ratio"} <= names
    assert {c["id"] for c in report["claims"]} == {
        "fp16_ce_breaks", "scaled_losses_low_at_every_precision", "fast_target_met_digits_std"}
    assert "Headline figures across seeds" in stdout and "Claims per seed" in stdout


@pytest.mark.slow  # two subprocess runs that train two models (< 60 s idle)
def test_quick_run_stats_come_from_per_seed_values(quick):
    report, _, _ = quick
    seeds = report["models"]["digits_std"]["seeds"]
    for f in report["figures"]:
        vals = [seeds[s]["figures"][f["figure"]] for s in ("0", "1")]
        assert [f["per_seed"][s] for s in ("0", "1")] == vals
        assert all(math.isfinite(v) for v in vals), f
        assert f["mean"] == pytest.approx(statistics.fmean(vals))
        assert f["sd"] == pytest.approx(statistics.stdev(vals))
        assert (f["min"], f["max"]) == (min(vals), max(vals))
    for c in report["claims"]:
        per = c["per_seed"]
        assert c["n_holds"] == sum(per[s]["holds"] for s in per) and c["n_seeds"] == 2
        assert c["margin_min"] == min(per[s]["margin"] for s in per)
        assert c["margin_max"] == max(per[s]["margin"] for s in per)


@pytest.mark.slow  # two subprocess runs that train two models (< 60 s idle)
def test_quick_rerun_resumes_from_cache(quick):
    first, again, _ = quick
    assert again["figures"] == first["figures"] and again["claims"] == first["claims"]
    assert again["models"] == first["models"]  # incl. cached training/attack compute times
