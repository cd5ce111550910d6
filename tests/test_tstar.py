"""Tests of tmifpe.losses.tmifpe.tstar against closed forms (Lambert W) and float64 brute force.

Measured cost of ``optimal_t`` (float64 logits, CPU, torch 2.14.1, median of 7 runs, range over
three runs on an otherwise idle 2-core machine; phase (i) = h maximisation, phase (ii) = "coef"):
    N=500 K=10    phase (i)  2.0-3.0 ms | phase (ii)  0.9-1.0 ms   (1 thread: 2.4-2.6 | 0.9 ms)
    N=500 K=100   phase (i)  6.8-9.2 ms | phase (ii)  2.0-3.0 ms   (1 thread: 11 | 3.5 ms)
    N=500 K=1000  phase (i)  53-64 ms   | phase (ii)  14-16 ms     (1 thread: 95-105 | 24-25 ms)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import lambertw, logsumexp

from tmifpe.losses.tmifpe.tstar import (
    PHASE23_RULES,
    Phase,
    attack_phase,
    gap_thresholds,
    nonfinite_rows,
    optimal_t,
)

T_TWO = 1.2784645427610738  # 1 + W0(1/e)
TABLE = {  # theory note: (true-class term lost, whole gradient 0)
    torch.float64: (36.7, 745.1),
    torch.float32: (16.6, 104.0),
    torch.bfloat16: (5.5, 92.9),
    torch.float16: (7.6, 17.3),
}


# ---------------------------------------------------------------- independent float64 references
def log_h(t: np.ndarray, z: np.ndarray) -> np.ndarray:
    """ln h(t) for one logit vector z (class of interest on top), t of any shape."""
    zs = np.sort(z)[::-1]
    a = (zs[0] - zs[1:]) / (zs[0] - zs[1])
    lse = logsumexp(-np.multiply.outer(np.asarray(t), a), axis=-1)
    return np.log(t) + lse - np.logaddexp(0.0, lse)


def log_gb(t: np.ndarray, z: np.ndarray, k: int) -> np.ndarray:
    """ln g_B(t) + ln Δ = ln t + ln p_k(t), p = softmax(t·z/Δ)."""
    zs = np.sort(z)[::-1]
    a = (zs[0] - z) / (zs[0] - zs[1])
    tt = np.asarray(t)
    return np.log(tt) - tt * a[k] - logsumexp(-np.multiply.outer(tt, a), axis=-1)


def brute_max(f, lo: float, hi: float, n: int = 2001) -> tuple[float, float, int, float]:
    """Dense log-grid + bounded Brent: (t, f(t), number of grid local maxima, runner-up gap)."""
    u = np.linspace(math.log(lo), math.log(hi), n)
    v = f(np.exp(u))
    i = int(np.argmax(v))
    j0, j1 = max(i - 1, 0), min(i + 1, n - 1)
    res = minimize_scalar(
        lambda x: -f(np.exp(x)), bounds=(u[j0], u[j1]), method="bounded", options={"xatol": 1e-12}
    )
    t, val = (math.exp(res.x), -res.fun) if -res.fun > v[i] else (math.exp(u[i]), v[i])
    peaks = np.flatnonzero((v[1:-1] > v[:-2]) & (v[1:-1] >= v[2:])) + 1
    others = np.sort(v[peaks])[::-1]
    runner_up = val - others[1] if len(others) > 1 else math.inf
    return t, val, len(peaks), runner_up


def random_logits(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Varied scales, near-ties, large gaps and tied runner-up clusters."""
    z = rng.standard_normal((n, k)) * rng.choice([0.05, 1.0, 5.0, 40.0], size=(n, 1))
    order = np.argsort(-z, axis=1)
    rows = np.arange(n)
    kind = rng.integers(0, 5, size=n)
    top, second = order[:, 0], order[:, 1]
    near = kind == 1  # runner-up within 1e-6 of the top (relative to the spread)
    z[rows[near], second[near]] = z[rows[near], top[near]] - 1e-6 * np.ptp(z[near], axis=1)
    far = kind == 2  # the top far ahead of everything
    z[rows[far], top[far]] += 50.0 * (1 + np.ptp(z[far], axis=1))
    if k >= 4:  # a cluster of tied runner-ups
        tied = kind == 3
        for c in range(2, min(k, 6)):
            z[rows[tied], order[tied, c]] = z[rows[tied], second[tied]]
    return z


# ---------------------------------------------------------------------------- closed forms
def test_two_logit_closed_form():
    z = torch.tensor([[3.0, -2.0], [0.0, 7.5], [1.0, 0.0]], dtype=torch.float64)
    t = optimal_t(z, z.argmax(1))
    assert abs(1 + lambertw(1 / math.e).real - T_TWO) < 1e-15
    np.testing.assert_allclose(t.numpy(), T_TWO, rtol=0, atol=1e-9)


def test_two_dominant_logits_among_many():
    z = torch.tensor([[2.0, 1.0] + [-300.0] * 8], dtype=torch.float64)
    assert abs(optimal_t(z, torch.tensor([0])).item() - T_TWO) < 1e-9


@pytest.mark.parametrize("m", [1, 2, 9, 99])
def test_m_tied_runner_ups(m):
    z = torch.tensor([[1.0] + [0.0] * m + [-400.0] * 5], dtype=torch.float64)
    expected = 1 + lambertw(m / math.e).real
    assert optimal_t(z, torch.tensor([0])).item() == pytest.approx(expected, rel=0, abs=1e-9)


# ------------------------------------------------------------------- brute force, phase (i)/(iv)
KS = [2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000]


@pytest.mark.parametrize("k", KS)
def test_h_matches_brute_force(k):
    rng = np.random.default_rng(k)
    n = 200 if k <= 100 else 40
    z = random_logits(rng, n, k)
    labels = torch.from_numpy(z.argmax(1))
    t = optimal_t(torch.from_numpy(z), labels).numpy()
    for i in range(n):
        bt, bval, _, runner_up = brute_max(lambda tt, zi=z[i]: log_h(tt, zi), 1e-3, 1e4)
        ours = float(log_h(t[i], z[i]))
        assert ours >= bval - 1e-12, (k, i, t[i], bt)  # ln h within 1e-12 ⇔ h within 1e-12 rel
        if runner_up > 1e-6:  # unique maximiser
            assert t[i] == pytest.approx(bt, rel=1e-6), (k, i)


def bimodal_cases() -> list[np.ndarray]:
    """Runner-up at gap 1 plus a crowd at a moderate gap: two local maxima of h."""
    return [
        np.r_[10.0, 9.0, np.full(150, 0.0)],  # crowd wins: global max at small t
        np.r_[10.0, 9.0, np.full(200, 0.0)],  # crowd wins by more
        np.r_[10.0, 9.0, np.full(60, 0.0)],  # runner-up wins: global max near 1.28
        np.r_[10.0, np.full(3, 9.0), np.full(3000, 0.0)],  # 3 tied runner-ups win
        np.r_[10.0, np.full(3, 9.0), np.full(6000, 0.0)],  # a bigger crowd wins
    ]


def naive_newton_from_one(z: np.ndarray) -> float:
    """Plain Newton on d ln h / d ln t from t = 1 (finite differences): the hazard."""
    u, e = 0.0, 1e-5
    for _ in range(100):
        f = lambda x: float(log_h(math.exp(x), z))  # noqa: E731
        d1 = (f(u + e) - f(u - e)) / (2 * e)
        d2 = (f(u + e) - 2 * f(u) + f(u - e)) / e**2
        u -= d1 / d2
    return math.exp(u)


@pytest.mark.parametrize("z", bimodal_cases())
def test_bimodal_h_global_max(z):
    bt, bval, peaks, runner_up = brute_max(lambda tt: log_h(tt, z), 1e-3, 1e4, n=20001)
    assert peaks == 2 and runner_up > 1e-4  # really bimodal, with a clear winner
    t = optimal_t(torch.from_numpy(z[None]), torch.tensor([0])).item()
    assert t == pytest.approx(bt, rel=1e-6)
    assert float(log_h(t, z)) >= bval - 1e-12


def test_bimodal_defeats_newton_from_one():
    z = bimodal_cases()[0]
    bt, bval, _, _ = brute_max(lambda tt: log_h(tt, z), 1e-3, 1e4, n=20001)
    tn = naive_newton_from_one(z)
    assert 1.2 < tn < 1.3  # Newton from t = 1 converges to the local max near 1.26 ...
    assert float(log_h(tn, z)) < bval - 1e-2  # ... which is clearly not the global one
    t = optimal_t(torch.from_numpy(z[None]), torch.tensor([0])).item()
    assert t < 0.5 and t == pytest.approx(bt, rel=1e-6)


# -------------------------------------------------------------------------- phase (ii)/(iii)
@pytest.mark.parametrize("k", [2, 3, 10, 100, 1000])
def test_coef_matches_brute_force(k):
    rng = np.random.default_rng(100 + k)
    n = 100 if k <= 100 else 30
    z = random_logits(rng, n, k)
    order = np.argsort(-z, axis=1)
    y = order[np.arange(n), rng.integers(1, k, size=n)]  # any class but the top-1
    t = optimal_t(torch.from_numpy(z), torch.from_numpy(y), rule="coef").numpy()
    for i in range(n):
        zs = np.sort(z[i])[::-1]
        a_k = (zs[0] - z[i, y[i]]) / (zs[0] - zs[1])
        bt, bval, peaks, _ = brute_max(
            lambda tt, zi=z[i], yi=y[i]: log_gb(tt, zi, yi), 1e-2 / a_k, 1e3 / a_k
        )
        assert peaks == 1  # ln g_B is strictly concave
        assert float(log_gb(t[i], z[i], y[i])) >= bval - 1e-12
        assert t[i] == pytest.approx(bt, rel=1e-6)


def test_coef_two_logit_and_targeted():
    z = torch.tensor([[0.0, 2.0]], dtype=torch.float64)  # phase (ii), y = 0
    assert optimal_t(z, torch.tensor([0]), rule="coef").item() == pytest.approx(T_TWO, abs=1e-9)
    z3 = torch.tensor([[5.0, 1.0, -900.0]], dtype=torch.float64)  # phase (iii), target 1
    t = optimal_t(z3, torch.tensor([0]), targets=torch.tensor([1]), rule="coef")
    assert t.item() == pytest.approx(T_TWO, abs=1e-9)


def test_mifpe_rule_is_one_in_phase_ii_only():
    z = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    t = optimal_t(z, torch.tensor([0, 0]), rule="mifpe")
    assert t[0].item() == 1.0
    assert t[1].item() == pytest.approx(float(optimal_t(z[1:], torch.tensor([0]))), rel=1e-15)
    assert t[1].item() != 1.0


@pytest.mark.parametrize("dtype", list(TABLE))
def test_cap_rule_inequality_is_tight(dtype):
    rng = np.random.default_rng(7)
    z = rng.standard_normal((64, 10)) * 3
    order = np.argsort(-z, axis=1)
    y = order[np.arange(64), rng.integers(1, 10, size=64)]
    t = optimal_t(torch.from_numpy(z), torch.from_numpy(y), rule="cap", dtype=dtype).numpy()
    zs = np.sort(z, axis=1)[:, ::-1]
    a = (zs[:, :1] - z) / (zs[:, :1] - zs[:, 1:2])  # (N, K)
    m = t * a[np.arange(64), y]  # scaled gap between the top-1 and the class of interest
    tau = -math.log(torch.finfo(dtype).eps / 2)
    assert abs(tau - TABLE[dtype][0]) < 0.05
    np.testing.assert_allclose(m, tau, rtol=1e-12)  # the defining equality: tight
    above = a <= a[np.arange(64), y][:, None]  # classes ranked at or above k
    assert np.all((t[:, None] * a)[above] <= tau * (1 + 1e-12))
    for mm in (m.min(), m.max()):  # at the cap, e^{-gap} is just still visible next to 1
        inside = torch.tensor(1 + math.exp(-0.99 * mm), dtype=torch.float64).to(dtype)
        outside = torch.tensor(1 + math.exp(-1.01 * mm), dtype=torch.float64).to(dtype)
        assert inside.item() > 1.0 and outside.item() == 1.0


def test_cap_defaults_to_logits_dtype():
    z = torch.tensor([[0.0, 1.0, -3.0]], dtype=torch.float16)
    t = optimal_t(z, torch.tensor([0]), rule="cap")
    assert t.item() == pytest.approx(gap_thresholds(torch.float16)[0], rel=1e-12)
    t32 = optimal_t(z, torch.tensor([0]), rule="cap", dtype=torch.float32)
    assert t32.item() == pytest.approx(gap_thresholds(torch.float32)[0], rel=1e-12)


@pytest.mark.parametrize("dtype", list(TABLE))
def test_threshold_table(dtype):
    rounding, underflow = gap_thresholds(dtype)
    assert rounding == pytest.approx(TABLE[dtype][0], abs=0.05)
    assert underflow == pytest.approx(TABLE[dtype][1], abs=0.05)
    ex = torch.exp(-torch.tensor([0.99 * underflow, 1.01 * underflow], dtype=dtype))
    assert ex[0].item() > 0 and ex[1].item() == 0


# ------------------------------------------------------------------------------------- phases
def test_attack_phase_all_four():
    z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 0, 1])
    assert (
        attack_phase(z, y).tolist()
        == [Phase.UNTARGETED_UNSUCCESSFUL] + [Phase.UNTARGETED_SUCCESSFUL] * 2
    )
    targets = torch.tensor([1, 1, 2])
    assert attack_phase(z, y, targets=targets).tolist() == [
        Phase.TARGETED_UNSUCCESSFUL,
        Phase.TARGETED_SUCCESSFUL,
        Phase.TARGETED_SUCCESSFUL,
    ]
    assert [int(p) for p in Phase] == [1, 2, 3, 4]
    assert attack_phase(z, y).dtype == torch.int64


def test_targeted_successful_uses_h():
    z = torch.tensor([[0.0, 2.0, 1.0]], dtype=torch.float64)  # target 1 on top: phase (iv)
    t = optimal_t(z, torch.tensor([0]), targets=torch.tensor([1]), rule="mifpe")
    expected = optimal_t(z, torch.tensor([1]))  # same h problem as phase (i) with y = 1
    assert t.item() == expected.item() and t.item() != 1.0


# --------------------------------------------------------------------------- extremes, dtypes
def test_extreme_gaps():
    z = torch.tensor(
        [[1e-9, 0.0, -1.0, -2.0], [1e4, 0.0, -1.0, -2.0], [0.0, 1e4, 1e4 - 1e-9, -5.0]],
        dtype=torch.float64,
    )
    t = optimal_t(z, torch.tensor([0, 0, 1]))
    assert torch.isfinite(t).all()
    assert t[0].item() == pytest.approx(T_TWO, abs=1e-9)  # the rest is 1e9 runner-up gaps away
    for i in (1, 2):
        bt, bval, _, _ = brute_max(lambda tt, zi=z[i].numpy(): log_h(tt, zi), 1e-3, 1e4)
        assert t[i].item() == pytest.approx(bt, rel=1e-6)
        assert float(log_h(t[i].item(), z[i].numpy())) >= bval - 1e-12
    # phase (ii) with Δ = 1e-9 and the class of interest 1e4 below: t* ~ 1e-13, finite, > 0
    zc = torch.tensor([[1e-9, 0.0, -1e4]], dtype=torch.float64)
    tc = optimal_t(zc, torch.tensor([2]), rule="coef").item()
    s_star = 1 + lambertw(1 / (2 * math.e)).real  # two tied on top: t·a_k = 1 + W0(1/(2e))
    assert tc == pytest.approx(s_star * 1e-9 / (1e4 + 1e-9), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    rng = np.random.default_rng(3)
    z = torch.from_numpy(rng.standard_normal((50, 10)) * 4).to(dtype)
    y = torch.from_numpy(rng.integers(0, 10, size=50))
    for rule in PHASE23_RULES:
        t = optimal_t(z, y, rule=rule, dtype=torch.float64)
        ref = optimal_t(z.double(), y, rule=rule, dtype=torch.float64)  # exact upcast
        assert t.dtype == torch.float64 and torch.isfinite(t).all()
        torch.testing.assert_close(t, ref, rtol=0, atol=0)


def test_ties_and_all_equal():
    z = torch.tensor(
        [[2.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.0, 3.0, 3.0], [5.0, 5.0, 5.0]], dtype=torch.float64
    )
    for rule in PHASE23_RULES:
        for targets in (None, torch.tensor([2, 2, 0, 1])):
            t = optimal_t(z, torch.tensor([0, 2, 0, 1]), targets=targets, rule=rule)
            assert t.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_k2_every_phase_and_rule():
    z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    assert optimal_t(z, y, rule="coef").tolist() == pytest.approx([T_TWO, T_TWO], abs=1e-9)
    assert optimal_t(z, y, rule="mifpe").tolist() == pytest.approx([T_TWO, 1.0], abs=1e-9)
    cap = optimal_t(z, y, rule="cap", dtype=torch.float32)[1].item()
    assert cap == pytest.approx(gap_thresholds(torch.float32)[0], rel=1e-12)


def test_nonfinite_rows_flagged_never_silent_nan():
    rng = np.random.default_rng(5)
    z = torch.from_numpy(rng.standard_normal((6, 5)))
    z[1, 2] = math.nan
    z[3, 0] = math.inf
    z[4, 4] = -math.inf
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    flags = nonfinite_rows(z)
    assert flags.tolist() == [False, True, False, True, True, False]
    for rule in PHASE23_RULES:
        t = optimal_t(z, y, rule=rule)
        assert torch.isfinite(t).all()
        assert t[flags].tolist() == [1.0, 1.0, 1.0]
        good = ~flags
        torch.testing.assert_close(t[good], optimal_t(z[good], y[good], rule=rule))


# ----------------------------------------------------------------------------------- errors
def test_bad_rule_name():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"'bogus'.*mifpe.*coef.*cap"):
        optimal_t(z, torch.tensor([0, 1]), rule="bogus")


@pytest.mark.parametrize(
    ("logits", "labels", "targets", "match"),
    [
        (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), None, "at least 2 classes"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), None, r"\(N, K\)"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), None, "labels"),
        (torch.zeros(3, 4), torch.zeros(3), None, "labels"),
        (
            torch.zeros(3, 4),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            "targets",
        ),
        (torch.zeros(3, 4), torch.full((3,), 4), None, "out of range"),
        (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), None, "float"),
    ],
)
def test_bad_inputs(logits, labels, targets, match):
    with pytest.raises(ValueError, match=match):
        optimal_t(logits, labels, targets=targets)
    with pytest.raises(ValueError, match=match):
        attack_phase(logits, labels, targets=targets)


def test_bad_dtype():
    with pytest.raises(ValueError, match="int32"):
        optimal_t(torch.zeros(2, 3), torch.tensor([0, 1]), rule="cap", dtype=torch.int32)


# ------------------------------------------------------------------------- gradient, batching
def test_gradient_isolation():
    logits = torch.randn(8, 5, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    y = logits.detach().argsort(1)[:, -2]  # runner-up: phase (ii) ...
    y[:4] = logits.detach()[:4].argmax(1)  # ... and top-1: phase (i) for the first four rows
    t = optimal_t(logits, y)
    assert not t.requires_grad and t.grad_fn is None and t.dtype == torch.float64
    (t.to(logits.dtype) * logits.sum(1)).sum().backward()
    expected = t.to(logits.dtype)[:, None].expand_as(logits)
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=0)  # no dt/dz term


def test_batch_equals_rows():
    rng = np.random.default_rng(11)
    z = torch.from_numpy(random_logits(rng, 30, 20))
    y = torch.from_numpy(rng.integers(0, 20, size=30))
    for rule in PHASE23_RULES:
        batch = optimal_t(z, y, rule=rule)
        rows = torch.cat([optimal_t(z[i : i + 1], y[i : i + 1], rule=rule) for i in range(30)])
        torch.testing.assert_close(batch, rows, rtol=1e-13, atol=0)


def test_empty_batch():
    t = optimal_t(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert t.shape == (0,) and t.dtype == torch.float64


@pytest.mark.parametrize("every", [4, 7])
def test_newton_result_does_not_depend_on_how_often_convergence_is_checked(monkeypatch, every):
    """Off the CPU the solver checks convergence every few rounds (each check synchronises an
    accelerator with the host); converged entries stay put, so t* is bitwise the same, while
    fewer host reads happen."""
    from tmifpe.losses.tmifpe import tstar as solver

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(400, 10, generator=gen, dtype=torch.float64) * 6
    labels = torch.randint(0, 10, (400,), generator=gen)
    targets = (labels + 1 + torch.randint(0, 9, (400,), generator=gen)) % 10
    reads = {"n": 0}
    original_bool = torch.Tensor.__bool__

    def counted(self):
        reads["n"] += 1
        return original_bool(self)

    def solve():
        reads["n"] = 0
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "__bool__", counted)
            out = [solver.optimal_t(logits, labels, rule="coef"),
                   solver.optimal_t(logits, labels, targets=targets, rule="coef")]
        return out, reads["n"]

    real = solver.convergence_check_every
    assert real(torch.device("cpu")) == 1 and real(torch.device("meta")) > 1
    reference, n_each = solve()
    monkeypatch.setattr(solver, "convergence_check_every", lambda device: every)
    got, n_every = solve()
    for a, b in zip(reference, got, strict=True):
        assert torch.equal(a, b)
    assert n_every < n_each
