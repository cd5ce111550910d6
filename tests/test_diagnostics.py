"""Gradient-error diagnostics: exactness of the float64 reference, the CE failure modes of
docs/theory.md §3 on a hand-made model, NaN flagging, binning, the t* recorder and the stage."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from support.suites import complete
from torch import nn

from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.data.sources import save_tensors
from tmifpe.diagnostics import (
    TStarRecorder,
    ce_zero_gradient_verdict,
    gap_bin_edges,
    gap_bins,
    gradient_errors,
    output_paths,
    summarise_bins,
)
from tmifpe.diagnostics.report import tables
from tmifpe.losses import get_loss
from tmifpe.losses.scaling import scale_logits
from tmifpe.losses.tmifpe.tstar import Phase, gap_thresholds, optimal_t
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.pipeline.config import parse_suite
from tmifpe.pipeline.diagnostics_cell import run_diagnostics_cell as run_diagnostics
from tmifpe.precision import Precision, PrecisionModel

pytestmark = pytest.mark.usefixtures("single_thread")
MEASURED = (Precision.FP16, Precision.BF16, Precision.FP32)


def _linear(bias: list[float], seed: int = 0) -> nn.Module:
    """Flatten + Linear(64, K) with small weights: the logit gaps are set by ``bias``."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, len(bias))
    with torch.no_grad():
        lin.weight.copy_(0.05 * torch.randn(lin.weight.shape, generator=gen))
        lin.bias.copy_(torch.tensor(bias))
    return nn.Sequential(nn.Flatten(), lin).eval()


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_float64_against_float64_is_exact(digits, digits_cnn):
    x, y = digits.x_test[:24], digits.y_test[:24]
    for loss in ("ce", "tmifpe"):
        e = gradient_errors(digits_cnn, x, y, loss, Precision.FP64)
        assert torch.equal(e.rel_err, torch.zeros(24, dtype=torch.float64))
        assert torch.allclose(e.cosine, torch.ones(24, dtype=torch.float64), rtol=0, atol=1e-12)
        assert not e.zero_grad.any() and not e.nonfinite_grad.any()
        assert (e.sign_flip == 0).all()
    # a real precision does differ from float64 (the comparison is not vacuous)
    e32 = gradient_errors(digits_cnn, x, y, "ce", Precision.FP32)
    assert (e32.rel_err > 0).any()


def test_huge_gap_zeroes_ce_but_not_mifpe():
    # true class 0 is 200 above the rest: beyond the underflow limits of fp16 (17.3) and fp32
    # (104.0), within fp64's (745.1) [theory §3]
    model = _linear([200.0] + [0.0] * 9)
    x, y = _pixels(16), torch.zeros(16, dtype=torch.int64)
    for p in (Precision.FP16, Precision.FP32):
        ce = gradient_errors(model, x, y, "ce", p)
        assert ce.zero_grad.all() and ce.zero_logit_grad.all() and ce.zero_k_term.all()
        assert (ce.gap > gap_thresholds(p.dtype)[1]).all()
        assert (ce.rel_err == 1).all() and (ce.cosine == 0).all() and (ce.sign_flip == 1).all()
        for loss in ("mifpe", "tmifpe"):
            scaled = gradient_errors(model, x, y, loss, p)
            assert not scaled.zero_grad.any()
            assert (scaled.scaled_gap < gap_thresholds(p.dtype)[0]).all()
            assert (scaled.cosine > 0.99).all()
    assert not gradient_errors(model, x, y, "ce", Precision.FP64).zero_grad.any()
    # a moderate gap (12) loses only the true-class term in fp16 (rounding, 7.6 < 12 < 17.3)
    mid = gradient_errors(_linear([12.0] + [0.0] * 9), x, y, "ce", Precision.FP16)
    assert mid.zero_k_term.all() and not mid.zero_logit_grad.any()


class _NaNRows(nn.Module):
    """Linear model whose logits are NaN for inputs with a bright first pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear([3.0] + [0.0] * 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a NaN added outside the gradient path: only the flagged rows' gradients are NaN
        # (torch.where(mask, z * nan, z) would leak 0 * nan = NaN into every row's gradient)
        return self.inner(x) + torch.where(x[:, :1, 0, 0] > 0.5, math.nan, 0.0).to(x.dtype)


def test_nan_logits_are_flagged_and_counted():
    x, y = _pixels(32, seed=1), torch.zeros(32, dtype=torch.int64)
    bad = x[:, 0, 0, 0] > 0.5
    assert 0 < int(bad.sum()) < 32
    e = gradient_errors(_NaNRows(), x, y, "ce", Precision.FP32)
    assert torch.equal(e.nonfinite_grad, bad) and torch.equal(e.nonfinite_logits, bad)
    assert torch.equal(e.n_nonfinite, torch.where(bad, 64, 0))
    assert e.rel_err[bad].isnan().all() and e.rel_err[~bad].isfinite().all()
    assert e.gap[bad].isnan().all()
    frame = e.frame().with_columns(
        pl.Series("bin", gap_bins(e.gap, gap_bin_edges(MEASURED)).numpy()), pl.lit("x").alias("k"))
    summary = summarise_bins(frame, ["k"])
    assert summary["count"].sum() == 32  # nothing dropped
    nan_bin = summary.filter(pl.col("bin") == -1).row(0, named=True)
    assert nan_bin["count"] == int(bad.sum()) == nan_bin["n_nonfinite_grad"]
    assert nan_bin["n_nonfinite_entries"] == 64 * int(bad.sum())


def test_bin_edges_include_the_thresholds():
    edges = gap_bin_edges(MEASURED)
    assert edges[0] == 0.0 and edges[-1] == math.inf and list(edges) == sorted(set(edges))
    for p in MEASURED:
        for t in gap_thresholds(p.dtype):
            assert t in edges
            i = edges.index(t)
            below, at = math.nextafter(t, 0.0), t
            got = gap_bins(torch.tensor([below, at], dtype=torch.float64), edges).tolist()
            assert got == [i - 1, i]
    assert gap_bins(torch.tensor([math.nan, math.inf, 1e9]), edges).tolist() == [
        -1, -1, len(edges) - 2]
    # fp32 expected values of the theory table
    assert any(abs(e - 16.64) < 0.01 for e in edges) and any(abs(e - 103.97) < 0.01 for e in edges)


def test_verdict_logic():
    p = Precision.FP16
    gap = torch.tensor([1.0] * 12 + [30.0] * 12, dtype=torch.float64)
    phase = torch.full((24,), int(Phase.UNTARGETED_UNSUCCESSFUL))
    agree = ce_zero_gradient_verdict(gap, gap > 20, phase, p)
    assert agree["verdict"] == "agrees" and agree["zero_frac_above"] == 1.0
    assert ce_zero_gradient_verdict(gap, gap > 0, phase, p)["verdict"] == "disagrees"
    assert ce_zero_gradient_verdict(gap[:15], gap[:15] > 20, phase[:15], p)["verdict"] == (
        "too few points")
    phase2 = torch.full((24,), int(Phase.UNTARGETED_SUCCESSFUL))  # not phase (i): not judged
    assert ce_zero_gradient_verdict(gap, gap > 20, phase2, p)["n_below"] == 0


def test_tstar_recorder_matches_optimal_t_and_the_loss(digits, digits_cnn):
    loss = get_loss("tmifpe", tstar_rule="coef")
    rec = TStarRecorder(loss, rule="coef")
    gen = torch.Generator().manual_seed(3)
    logits = 4 * torch.randn(50, 10, generator=gen)
    y = torch.randint(0, 10, (50,), generator=gen)
    tgt = (y + 1) % 10
    out = rec(logits, y, targets=tgt)
    assert torch.equal(out, loss(logits, y, targets=tgt))  # the wrapped loss is unchanged
    t = optimal_t(logits, y, targets=tgt, rule="coef", dtype=logits.dtype)
    assert torch.equal(rec.calls[0]["t_star"], t)
    # the t* recorded is the one the loss used: CE((t*/Δ)·z, y_t) reproduces the loss
    scaled = scale_logits(logits, t)
    assert torch.allclose(-F.cross_entropy(scaled, tgt, reduction="none"), out, atol=1e-6)
    # inside a real attack: one record per iteration, every row the loss received
    rec = TStarRecorder(loss, rule="coef")
    x, yy = digits.x_test[:30], digits.y_test[:30]
    res = run_pgd(PrecisionModel(digits_cnn, Precision.FP32), x, yy, rec,
                  PGDConfig(eps=0.05, steps=3))
    frame = rec.frame(targeted=False)
    assert len(rec.calls) <= 3 and frame["iteration"].max() == len(rec.calls) - 1
    assert int(frame["used"].sum()) == int(res.n_backward.sum())  # the rows PGD stepped with
    assert set(frame["phase"].unique().to_list()) <= {1, 2}


def _tiny_suite(tmp_path, digits):
    raw = {
        "name": "tiny", "threads": 1,
        "datasets": {"digits": {"source": "digits", "n_examples": 40, "eps": 0.2}},
        "model_zoo": {"tiny_std": {"source": "trained", "dataset": "digits", "seed": 0}},
        "models": ["tiny_std"], "losses": ["ce", "mifpe", "tmifpe"], "budgets": [2, 4],
        "precisions": {"bf16": {"n_targets": 1}, "fp32": {"n_targets": 2},
                       "fp64": {"n_targets": 1}},
    }
    suite = parse_suite(complete(raw))
    save_tensors({"x_test": digits.x_test[:40], "y_test": digits.y_test[:40]},
                 tmp_path / "data" / "eval" / "digits.pt")
    torch.manual_seed(0)
    model = SmallCNN()
    (tmp_path / "models" / "tiny_std").mkdir(parents=True)
    torch.save(model.state_dict(), tmp_path / "models" / "tiny_std" / "model.pt")
    return suite


def test_stage_outputs_columns_and_determinism(tmp_path, monkeypatch, digits):
    suite = _tiny_suite(tmp_path, digits)
    monkeypatch.chdir(tmp_path)
    doc = run_diagnostics(suite, "tiny_std")
    paths = output_paths("tiny_std")
    first = [p.read_bytes() for p in paths]
    run_diagnostics(suite, "tiny_std")
    assert [p.read_bytes() for p in paths] == first  # byte-identical rerun
    assert not list(paths[0].parent.glob(".*tmp*"))  # no temporaries left behind
    bins = pl.read_parquet(paths[0])
    for col in ("model", "loss", "targeted", "precision", "point_set", "point_step", "phase",
                "bin", "bin_lo", "bin_hi", "count", "frac_zero_grad", "median_rel_err",
                "median_cosine", "median_sign_flip", "n_nonfinite_grad", "threshold_round"):
        assert col in bins.columns
    assert set(bins["point_set"].unique().to_list()) == {"clean", "pgd5", "pgd10", "pgd20", "all"}
    assert set(bins["precision"].unique().to_list()) == {"bf16", "fp32"}
    per_set = bins.filter(pl.col("point_set") != "all")
    pooled = bins.filter(pl.col("point_set") == "all")
    assert per_set["count"].sum() == pooled["count"].sum()
    tstar = pl.read_parquet(paths[1])
    assert {"targeted", "used", "iteration", "phase", "q050"} <= set(tstar.columns)
    assert set(tstar["targeted"].unique().to_list()) == {False, True}
    checks = {(v["check"], v["loss"], v["precision"], v["targeted"]) for v in doc["verdicts"]}
    assert ("ce_zero_gradient", "ce", "fp32", False) in checks
    # the device measured on is recorded (thresholds are device-dependent; issue 10)
    assert doc["device"] == "cpu" and doc["torch_version"] == torch.__version__
    env = doc["environment"]  # measured under the runtime contract (tmifpe.runtime.numerics)
    assert env["device"] == "cpu" and env["threads"] == 1
    assert set(env["fp32_precision"].values()) == {"ieee"} and env["deterministic"]
    assert all(v["verdict"] in ("agrees", "disagrees", "too few points")
               for v in doc["verdicts"])
    built = tables([paths[0].parent])
    assert [t.key for t in built] == ["diag-gap-bins", "diag-verdicts", "diag-tstar"]
    for t in built:
        assert t.rows and all(len(r) == len(t.headers) == len(t.numeric) for r in t.rows)
    assert [t.rows for t in tables([paths[0].parent])] == [t.rows for t in built]
