"""The fast preset: verified successes, pass counting against a hand count, the masking guard,
the split, the aggregate ``fast`` metrics and the report section."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import polars as pl
import pytest
import torch
from support.synthetic_results import (
    aa_frame,
    cell_frame,
    write_autoattack,
    write_cell,
    write_timing,
)
from torch import Tensor, nn

from tmifpe.aggregate import aggregate, metrics_json
from tmifpe.attacks.fast import FastConfig, Kind, Phase, run_fast
from tmifpe.pipeline.fast_cell import HELD_OUT, TUNING, split_labels, tuning_mask
from tmifpe.report import html_report, latex_tables
from tmifpe.report.fast import fast_section
from tmifpe.verify import in_threat_model, margin

SHAPE = (1, 6, 6)
K = 5


class Linear(nn.Module):
    """Linear classifier on 6x6 images. Every fp32 forward logs its rows, and every backward
    the rows that received a nonzero input gradient, in a class-level list (which survives the
    deep copies PrecisionModel makes)."""

    calls: ClassVar[list[int]] = []

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(scale * torch.randn(36, K, generator=g))

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            Linear.calls.append(x.shape[0])
            if torch.is_grad_enabled() and x.requires_grad:
                x.register_hook(lambda g: Linear.calls.append(
                    int((g.flatten(1) != 0).any(dim=1).sum())))
        return self.features(x) @ self.w.to(x.dtype)


class Detached(Linear):
    """The linear logits, detached (plus 0·x to stay differentiable): the input gradient is
    exactly zero everywhere, while the decision is the linear model's (gradient masking)."""

    def forward(self, x: Tensor) -> Tensor:
        z = super().forward(x)
        return z.detach() + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)


def points(model: nn.Module, n: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return x, y


def test_successes_are_verified_and_robust_points_untouched() -> None:
    model = Linear().eval()
    x, y = points(model, 24)
    y[:2] = (y[:2] + 1) % K  # two clean-incorrect points: never attacked, never a success
    cfg = FastConfig(eps=0.15, phases=(Phase(Kind.UNTARGETED, 5),
                                       Phase(Kind.TARGETED, 3, n_targets=2)), guard_queries=20)
    res = run_fast(model, x, y, cfg)
    assert 0 < int(res.success.sum()) < int(res.clean_correct.sum())
    assert not res.success[:2].any() and (res.passes[:2] == 0).all()
    ok = in_threat_model(x, res.x_adv, cfg.eps)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(dim=1)
    assert (ok & (pred != y))[res.success].all()
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert torch.equal(res.success, res.clean_correct & res.verdict.broken(y))
    assert all((b != "") == bool(s) for b, s in zip(res.broken_by, res.success.tolist(),
                                                   strict=True))


def test_deterministic() -> None:
    model = Linear().eval()
    x, y = points(model, 16)
    cfg = FastConfig(eps=0.15, phases=(Phase(Kind.UNTARGETED, 4),), guard_queries=10)
    a, b = run_fast(model, x, y, cfg), run_fast(model, x, y, cfg)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.passes, b.passes)


@pytest.mark.parametrize("eps", [1e-4, 0.15])
def test_pass_count_equals_hand_count(eps: float) -> None:
    """The model logs its own passes: one per row of every forward, one per row that a backward
    reached (nonzero input gradient). Minus the two clean passes and the final verification
    (not counted, as in the cells and AA), the total equals the preset's ``passes``."""
    model = Linear(seed=3).eval()
    x, y = points(model, 12, seed=4)
    steps, k, q = 4, 2, 15
    cfg = FastConfig(eps=eps, phases=(Phase(Kind.UNTARGETED, steps),
                                      Phase(Kind.TARGETED, 3, n_targets=k)), guard_queries=q)
    Linear.calls.clear()
    res = run_fast(model, x, y, cfg)
    hand = sum(Linear.calls) - 3 * x.shape[0]
    assert int(res.passes.sum()) == hand
    if eps == 1e-4:  # nothing breaks: every point runs every phase in full
        per_point = (2 * steps + 1) + k * (2 * 3 + 1) + 3  # 3 verification forwards
        assert (res.n_forward + res.n_backward + res.n_verify == per_point).all()
        assert not res.success.any()


def test_guard_flags_a_zero_gradient_model() -> None:
    model = Detached(seed=5).eval()
    x, y = points(model, 40, seed=6)
    cfg = FastConfig(eps=0.1, phases=(Phase(Kind.UNTARGETED, 3),), guard_queries=100)
    res = run_fast(model, x, y, cfg)
    attacked = res.n_backward > 0
    assert attacked.any()
    assert (res.zero_grad_steps[attacked] == res.n_backward[attacked]).all()
    assert res.flag_zero_grad[attacked].all()
    assert res.guard_broken.any()  # Square breaks points the gradient phase could not
    assert all(res.broken_by[i] == "square" for i in res.guard_broken.nonzero().squeeze(1))


def test_split_is_deterministic_and_partitions() -> None:
    a, b = tuning_mask(361, 0, 0.5), tuning_mask(361, 0, 0.5)
    assert torch.equal(a, b) and int(a.sum()) == round(0.5 * 361)
    assert not torch.equal(a, tuning_mask(361, 1, 0.5))
    labels = split_labels(10, 0, 0.3)
    assert labels.count(TUNING) == 3 and labels.count(HELD_OUT) == 7
    with pytest.raises(ValueError, match="fraction"):
        tuning_mask(10, 0, 1.0)


def test_phase_rejects_targets_mismatch() -> None:
    with pytest.raises(ValueError, match="n_targets"):
        Phase(Kind.TARGETED, 10)
    with pytest.raises(ValueError, match="unknown loss"):
        Phase(Kind.UNTARGETED, 10, loss="nope")


# ---------------------------------------------------------------- aggregate and report

def _fast_file(tmp_path, robust: list[bool], passes: list[int], split: list[str],
               guard: list[bool], wall: float):
    n = len(robust)
    frame = pl.DataFrame({
        "dataset": ["digits"] * n, "model": ["m1"] * n,
        "preset": ["p"] * n, "example": list(range(n)), "split": split,
        "clean_correct": [True] * n, "robust_fp32": robust, "robust_fp64": robust,
        "passes": passes, "guard_broken": guard, "flag_zero_grad": [False] * n,
        "flag_nonfinite": [False] * n, "randomized": [False] * n,
    })
    path = tmp_path / "fast" / "m1.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    path.with_name("m1.timing.json").write_text(json.dumps({"total": wall}))
    return path


@pytest.fixture
def fast_tables(tmp_path):
    # 6 points: 0-3 held out, 4-5 tuning. AA: robust {0, 1, 4}; fast: robust {0, 2, 4, 5}.
    aa_robust = [True, True, False, False, True, False]
    aa_broken = ["", "", "apgd-ce", "apgd-t", "", "square"]
    aa = aa_frame([{"example": i, "clean_correct": True, "robust_fp32": r, "robust_fp64": r,
                    "broken_by": b, "n_grad": 100, "n_queries": 200 * i}
                   for i, (r, b) in enumerate(zip(aa_robust, aa_broken, strict=True))],
                  model="m1")
    aa_path = write_autoattack(aa, tmp_path)
    aa_timing = write_timing(aa_path, {"apgd-ce": 10.0, "total": 40.0})
    cell = cell_frame([{"example": i, "precision": "fp32", "targeted": False,
                        "clean_correct": True, "robust_fp32": True} for i in range(6)],
                      model="m1", loss="ce", budget=10)
    split = [HELD_OUT] * 4 + [TUNING] * 2
    fast = _fast_file(tmp_path, [True, False, True, False, True, True], [10, 20, 30, 40, 1, 1],
                      split, [False, False, True, False, False, False], wall=4.0)
    return aggregate([write_cell(cell, tmp_path)], [aa_path], [aa_timing], fast_files=[fast])


def test_fast_table_and_metrics(fast_tables) -> None:
    t = fast_tables["fast"]
    held = t.filter(pl.col("split") == "held_out").row(0, named=True)
    assert held["n"] == 4
    assert held["robust_acc"] == pytest.approx(0.5)  # {0, 2}
    assert held["aa_robust_acc"] == pytest.approx(0.5)  # {0, 1}
    assert held["gap_vs_aa_pts"] == pytest.approx(0.0)
    assert held["n_broken_fast_only"] == 1 and held["n_broken_aa_only"] == 1  # 1 and 2
    assert held["n_aa_only_apgd_ce"] == 1
    aa_passes = sum(2 * 100 + 200 * i for i in range(4)) / 4
    assert held["pass_ratio"] == pytest.approx(25.0 / aa_passes)
    assert held["time_ratio"] == pytest.approx(0.1)
    assert held["n_guard_broken"] == 1
    assert held["target_met"] is True  # gap 0, pass ratio 25/500 = 0.05
    tune = t.filter(pl.col("split") == "tuning").row(0, named=True)
    assert tune["robust_acc"] == 1.0 and tune["gap_vs_aa_pts"] == pytest.approx(50.0)
    m = metrics_json(fast_tables)["default"]["m1"]["fast"]
    assert m["split"] == "held_out" and m["gap_vs_aa_pts"] == 0.0
    assert m["pass_ratio"] == round(25.0 / aa_passes, 4)
    assert m["time_ratio"] == 0.1 and m["n_broken_aa_only"] == 1


def test_report_section_renders(fast_tables) -> None:
    html = html_report(fast_tables, title="t", meta={})
    assert '<section id="fast">' in html and 'href="#fast"' in html
    assert "m1 (p), held-out points (n = 4)" in html
    assert "Square broke 1 point(s)" in html
    tex = latex_tables(fast_tables)
    assert "tab:tmifpe-fast" in tex and "Gap (points)" in tex


def test_report_says_by_how_much_a_missed_target_is_missed(fast_tables) -> None:
    held = pl.col("split") == "held_out"
    missed = fast_tables["fast"].with_columns(
        gap_vs_aa_pts=pl.when(held).then(1.5).otherwise(pl.col("gap_vs_aa_pts")),
        pass_ratio=pl.when(held).then(0.125).otherwise(pl.col("pass_ratio")),
        target_met=pl.when(held).then(False).otherwise(pl.col("target_met")))
    (verdict,) = fast_section({**fast_tables, "fast": missed}).verdicts
    assert "target NOT met" in verdict
    assert "gap +1.50 pts, 1.50 pts above the target" in verdict
    assert "first broken by apgd-ce: 1" in verdict
    assert "pass ratio 0.1250, 0.0250 above the target 0.1" in verdict


def test_focus_mask_takes_the_smallest_margins_of_the_alive_rows() -> None:
    from tmifpe.attacks.fast import focus_mask

    alive = torch.tensor([True, True, False, True, True, True])
    closest = torch.tensor([5.0, 1.0, -9.0, 3.0, 1.0, 0.5])
    # 5 alive rows, ceil(0.5 * 5) = 3: margins 0.5 (row 5), 1.0 (rows 1 and 4, stable order)
    assert focus_mask(alive, closest, 0.5).tolist() == [False, True, False, False, True, True]
    assert focus_mask(alive, closest, 0.01).tolist() == [False] * 5 + [True]
    assert torch.equal(focus_mask(alive, closest, 1.0), alive)
    with pytest.raises(ValueError, match="focus must be in"):
        Phase(Kind.UNTARGETED, 3, focus=0.0)
    assert Phase(Kind.TARGETED, 100, n_targets=9, targets="malt", focus=0.15).name == \
        "tmifpe-t100-t9m@0.15"


def test_a_focused_phase_attacks_only_the_points_closest_to_breaking() -> None:
    """eps too small to break anything: phase 1 runs on every point and records each one's
    margin; the focused phase 2 then attacks exactly the ceil(focus·n) smallest of them."""
    model = Linear(seed=7).eval()
    x, y = points(model, 20, seed=8)
    base = (Phase(Kind.UNTARGETED, 3),)
    focused = (*base, Phase(Kind.UNTARGETED, 4, focus=0.25))
    one = run_fast(model, x, y, FastConfig(eps=1e-4, phases=base, guard_queries=0))
    two = run_fast(model, x, y, FastConfig(eps=1e-4, phases=focused, guard_queries=0))
    assert not two.success.any()
    extra = two.n_backward - one.n_backward
    attacked = extra > 0
    assert int(attacked.sum()) == math.ceil(0.25 * 20) and (extra[attacked] == 4).all()
    # the attacked points are those with the smallest fp32 margin after phase 1 (eps 1e-4:
    # within 1e-2 of the clean margin, far below the gaps between points here)
    with torch.no_grad():
        m = margin(model(x), y)
    assert m[attacked].max() < m[~attacked].min()
    # focus 1 is the unfocused phase: the same result, bit for bit
    full = run_fast(model, x, y, FastConfig(eps=0.15, phases=(*base, Phase(Kind.UNTARGETED, 4)),
                                            guard_queries=0))
    same = run_fast(model, x, y, FastConfig(eps=0.15, phases=(*base, Phase(Kind.UNTARGETED, 4,
                                                                           focus=1.0)),
                                            guard_queries=0))
    assert torch.equal(full.x_adv, same.x_adv) and torch.equal(full.passes, same.passes)
