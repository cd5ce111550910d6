"""Losses against independent float64 references written here from the formulas (numpy), hand-made
logits with known values, detached scales (Δ, t*), guards, errors, and the finite-precision
phenomenon that motivates MIFPE/T-MIFPE."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tmifpe.losses import LOSSES, LossName, get_loss, parse_loss
from tmifpe.losses.scaling import guarded_gap, scale_factor, scale_logits
from tmifpe.losses.tmifpe.tstar import optimal_t

ROOT = Path(__file__).resolve().parents[1]
ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
RULES = ["mifpe", "coef", "cap"]
T_TWO_LOGITS = 1.2784645427610738  # 1 + W0(1/e): phase (i) optimum with two dominant logits


# ---------------------------------------------------------------- float64 numpy references


def _lse(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _pick(z: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return z[np.arange(z.shape[0]), idx]


def _max_other(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    masked = z.copy()
    masked[np.arange(z.shape[0]), y] = -np.inf
    return masked.max(axis=1)


def _ref_ce(z, y, t):
    return _lse(z) - _pick(z, y) if t is None else -(_lse(z) - _pick(z, t))


def _ref_cw(z, y, t):
    other = _max_other(z, y) if t is None else _pick(z, t)
    return other - _pick(z, y)


def _ref_dlr(z, y, t):
    s = -np.sort(-z, axis=1)
    if t is None:
        return -(_pick(z, y) - _max_other(z, y)) / (s[:, 0] - s[:, 2] + 1e-12)
    return -(_pick(z, y) - _pick(z, t)) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


def _gap(z: np.ndarray) -> np.ndarray:
    s = -np.sort(-z, axis=1)
    gap = s[:, 0] - s[:, 1]
    return np.where(gap > 0, gap, 1.0)


def _ref_scaled_ce(z, y, t, scale):
    return _ref_ce(z * scale[:, None], y, t)


def _ref_mifpe(z, y, t):
    return _ref_scaled_ce(z, y, t, 1.0 / _gap(z))


def _tstar(logits: torch.Tensor, y, t, rule: str) -> np.ndarray:
    """t* as the loss computes it (same rule, same dtype limits), evaluated on float64 logits."""
    tgt = None if t is None else torch.as_tensor(t)
    out = optimal_t(logits.double(), torch.as_tensor(y), targets=tgt, rule=rule, dtype=logits.dtype)
    return out.double().numpy()


REFS = {"ce": _ref_ce, "cw": _ref_cw, "dlr": _ref_dlr, "mifpe": _ref_mifpe}


def _random_case(n: int = 64, k: int = 10, seed: int = 0, spread: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * spread
    y = torch.randint(0, k, (n,), generator=g)
    t = (y + torch.randint(1, k, (n,), generator=g)) % k  # t != y
    return z, y, t


def _reference(name: str, z64: torch.Tensor, y, t, *, dtype, rule: str = "coef") -> np.ndarray:
    zn, yn = z64.numpy(), y.numpy()
    tn = None if t is None else t.numpy()
    if name == "tmifpe":
        ts = _tstar(z64.to(dtype), y, t, rule)
        return _ref_scaled_ce(zn, yn, tn, ts / _gap(zn))
    return REFS[name](zn, yn, tn)


# ---------------------------------------------------------------- values against references


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", [n.value for n in LossName])
def test_loss_matches_float64_reference(name, targeted):
    z64, y, t = _random_case()
    t = t if targeted else None
    fn = get_loss(name)
    out64 = fn(z64, y, targets=t)
    ref = _reference(name, z64, y, t, dtype=torch.float64)
    assert out64.shape == (64,) and out64.dtype == torch.float64
    np.testing.assert_allclose(out64.numpy(), ref, rtol=1e-10, atol=1e-10)

    z32 = z64.float()
    out32 = fn(z32, y, targets=t)
    assert out32.shape == (64,) and out32.dtype == torch.float32
    # reference on the very same (fp32-representable) logits; the scaled logits can be large
    # (c = 1/Δ with small Δ), so the tolerance follows their magnitude.
    ref32 = _reference(name, z32.double(), y, t, dtype=torch.float32)
    zn = z32.double().numpy()
    scale = {"mifpe": 1 / _gap(zn), "tmifpe": 4 / _gap(zn)}.get(name, np.ones(64))
    atol = 3e-6 * (1 + np.abs(zn).max(axis=1) * scale)
    assert np.all(np.abs(out32.double().numpy() - ref32) <= atol + 1e-5 * np.abs(ref32))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_tmifpe_rules_match_reference(rule, targeted):
    z64, y, t = _random_case(seed=1)
    t = t if targeted else None
    out = get_loss("tmifpe", tstar_rule=rule)(z64, y, targets=t)
    ref = _reference("tmifpe", z64, y, t, dtype=torch.float64, rule=rule)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_hand_made_values():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    y0, y1, t1 = torch.tensor([0]), torch.tensor([1]), torch.tensor([1])
    cw, dlr, ce, mifpe = (get_loss(n) for n in ("cw", "dlr", "ce", "mifpe"))
    assert cw(z[:, :3], y0).item() == -2.0  # margin of [3,1,0], y=0
    assert cw(z[:, :3], torch.tensor([2])).item() == 3.0
    assert cw(z[:, :3], y0, targets=torch.tensor([2])).item() == -3.0
    assert dlr(z, y0).item() == pytest.approx(-2.0 / 3.0, abs=1e-12)
    assert dlr(z, y1).item() == pytest.approx(2.0 / 3.0, abs=1e-12)
    assert dlr(z, y0, targets=t1).item() == pytest.approx(-2.0 / 3.5, abs=1e-12)
    two = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    assert ce(two, y0).item() == pytest.approx(math.log(4.0), abs=1e-15)
    assert ce(two, y0, targets=t1).item() == pytest.approx(-math.log(4.0 / 3.0), abs=1e-15)
    # MIFPE on [3,1,0]: Δ = 2, scaled logits [1.5, 0.5, 0]
    lse = math.log(math.exp(1.5) + math.exp(0.5) + 1.0)
    assert mifpe(z[:, :3], y0).item() == pytest.approx(lse - 1.5, abs=1e-15)
    assert mifpe(z[:, :3], y1).item() == pytest.approx(lse - 0.5, abs=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_tmifpe_two_dominant_logits(rule):
    """Phase (i) with two dominant logits: t* = 1 + W0(1/e) for every rule (rules differ only
    in phases ii/iii), so the loss is CE of the logits scaled by t*/Δ."""
    z = torch.tensor([[10.0, 8.0, -100.0, -120.0, -150.0]], dtype=torch.float64)
    y = torch.tensor([0])
    t = T_TWO_LOGITS / 2.0
    expected = math.log(math.exp(10 * t) + math.exp(8 * t)) - 10 * t  # far logits: e^-100t
    out = get_loss("tmifpe", tstar_rule=rule)(z, y)
    assert out.item() == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- gradients, detached scales


def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def _grad(fn, z: torch.Tensor, y, t) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z, y, targets=t).sum(), z)
    return g


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_mifpe_gradient_treats_gap_as_constant(targeted):
    z, y, t = _random_case(seed=2)
    t = t if targeted else None
    c = (1.0 / torch.from_numpy(_gap(z.numpy())))[:, None]
    k = y if t is None else t
    onehot = torch.nn.functional.one_hot(k, z.shape[1]).double()
    sign = 1.0 if t is None else -1.0
    expected = sign * c * (_softmax(c * z) - onehot)
    torch.testing.assert_close(_grad(get_loss("mifpe"), z, y, t), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_tmifpe_gradient_treats_tstar_as_constant(targeted, rule):
    z, y, t = _random_case(seed=3)
    t = t if targeted else None
    ts = torch.from_numpy(_tstar(z, y, t, rule))
    c = (ts / torch.from_numpy(_gap(z.numpy())))[:, None]
    k = y if t is None else t
    onehot = torch.nn.functional.one_hot(k, z.shape[1]).double()
    sign = 1.0 if t is None else -1.0
    expected = sign * c * (_softmax(c * z) - onehot)
    got = _grad(get_loss("tmifpe", tstar_rule=rule), z, y, t)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", ["mifpe", "tmifpe"])
def test_top2_tie_gives_finite_loss_and_gradient(name, dtype):
    z = torch.tensor([[2.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    y = torch.tensor([0, 3])
    for t in (None, torch.tensor([1, 2])):
        zz = z.clone().requires_grad_(True)
        loss = get_loss(name)(zz, y, targets=t)
        (g,) = torch.autograd.grad(loss.sum(), zz)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        assert (g != 0).any(dim=1).all()  # a tie still yields a usable gradient
    # Δ = 0 falls back to unscaled logits: MIFPE equals CE there (T = 1).
    if name == "mifpe":
        torch.testing.assert_close(get_loss("mifpe")(z, y), get_loss("ce")(z, y))


@pytest.mark.parametrize("name", ["mifpe", "tmifpe"])
def test_subnormal_gap_fp16_is_finite(name):
    """fp16 top-2 logits one ulp apart near 0.01 (Δ = 2^-17): 1/Δ overflows fp16 (> 65504);
    such a gap is numerically a tie and must not turn the loss or gradient into NaN/Inf."""
    a = torch.tensor(0.01, dtype=torch.float16)
    b = torch.nextafter(a, torch.tensor(0.0, dtype=torch.float16))
    z = torch.stack([a, b, torch.tensor(-0.5, dtype=torch.float16)])[None].requires_grad_(True)
    assert 0 < (a - b).item() < torch.finfo(torch.float16).tiny
    loss = get_loss(name)(z, torch.tensor([0]))
    (g,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()


def test_near_tie_fp16_tmifpe_gradient_not_smaller_than_ce():
    """fp16 logits [0.01, 0.01 − ulp, −0.5, −1], target 2: Δ = 2^-17 is below fp16's smallest
    normal, a tie for the guard. The scale and t* must see the same guarded Δ (t* = 1, c = 1),
    so T-MIFPE's logit gradient is CE's. Before issue 10 t* saw Δ = 2^-17 while the scale saw 1:
    c ≈ 1.5e-5 and a gradient of 1e-5 against CE's 0.34, the vanishing gradient T-MIFPE exists
    to prevent."""
    a = torch.tensor(0.01, dtype=torch.float16)
    b = torch.nextafter(a, torch.tensor(0.0, dtype=torch.float16))
    z = torch.stack([a, b, *torch.tensor([-0.5, -1.0], dtype=torch.float16)])[None]
    y, tgt = torch.tensor([0]), torch.tensor([2])
    for rule in RULES:
        g_tm = _grad(get_loss("tmifpe", tstar_rule=rule), z, y, tgt).float()
        g_ce = _grad(get_loss("ce"), z, y, tgt).float()
        assert g_ce.norm() > 0.3
        assert g_tm.norm() >= g_ce.norm() * (1 - 2**-10), rule  # not smaller (fp16 rounding)
    assert optimal_t(z, y, targets=tgt).item() == 1.0  # the tie rule of the one guarded Δ


# near-ties at a large logit: fp16 [20, 19.953, …] (Δ = 0.047), bf16 [20, 19.875, …]
FAR_LOGITS = {
    torch.float16: [20.0, 19.953, 15.0, 12.0, 10.0, 5.0, 0.0, -3.0, -5.0, -8.0],
    torch.bfloat16: [20.0, 19.875, 15.0, 12.0, 10.0, 5.0, 0.0, -3.0, -5.0, -8.0],
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_scaled_gaps_exact_after_max_subtraction(dtype):
    """The scaled top-2 gap is t up to two roundings (c and the product), and the logit gradient
    of MIFPE/T-MIFPE matches the float64 formula c·(softmax(c·z) − e_y) at the same (exactly
    upcast) logits within 1%. Before issue 10 the logits were scaled without subtracting the row
    max: c·20 ≈ 544 lands where fp16's spacing is 0.5, so the gap was 1.5 instead of 1.278 and
    the gradient 16% off (bf16 18-25%)."""
    z = torch.tensor([FAR_LOGITS[dtype]], dtype=dtype)
    y = torch.tensor([0])
    eps = torch.finfo(dtype).eps
    t = optimal_t(z, y, dtype=dtype)
    assert t.item() == pytest.approx(T_TWO_LOGITS, abs=1e-3)  # two dominant logits
    top = scale_logits(z, t).double().topk(2, dim=1).values
    assert (top[:, 0] - top[:, 1]).item() == pytest.approx(t.item(), rel=eps)
    z64 = z.double()
    top64 = z64.topk(2, dim=1).values
    delta = (top64[:, 0] - top64[:, 1])[:, None]
    onehot = torch.nn.functional.one_hot(y, 10).double()
    for name, tt in (("mifpe", torch.ones(1, dtype=torch.float64)), ("tmifpe", t)):
        c = tt[:, None] / delta
        expected = c * (torch.softmax(c * z64, dim=1) - onehot)
        got = _grad(get_loss(name), z, y, None).double()
        err = ((got - expected).norm() / expected.norm()).item()
        assert err < 0.01, (name, err)


def test_scale_is_finite_and_capped():
    """c = t/Δ is computed in float64 and capped at the dtype's largest finite number: t = 8 on
    fp16's smallest normal Δ = 2^-14 would be 131072 > 65504."""
    tiny = torch.finfo(torch.float16).smallest_normal
    z = torch.tensor([[tiny, 0.0, -1.0]], dtype=torch.float16)
    c = scale_factor(z, torch.tensor([8.0], dtype=torch.float64))
    assert c.dtype == torch.float16 and c.item() == torch.finfo(torch.float16).max
    assert scale_factor(z, torch.tensor([1.0], dtype=torch.float64)).item() == 2**14
    delta, tie = guarded_gap(z[:, [1, 1, 2]])  # exact tie
    assert tie.item() and delta.item() == 1.0


# ---------------------------------------------------------------- errors and registry


def test_dlr_needs_enough_classes():
    dlr = get_loss("dlr")
    with pytest.raises(ValueError, match=r"untargeted DLR needs at least 3 classes, got K=2"):
        dlr(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targeted DLR needs at least 4 classes, got K=3"):
        dlr(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), targets=torch.ones(4).long())
    assert dlr(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)).shape == (4,)


@pytest.mark.parametrize("name", [n.value for n in LossName])
def test_bad_shapes_raise(name):
    fn = get_loss(name)
    z, y = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits must have shape \(N, K\)"):
        fn(torch.randn(10), y[:1])
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        fn(z, y[:, None])
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        fn(z, y[:3])
    with pytest.raises(ValueError, match=r"targets must have shape \(4,\)"):
        fn(z, y, targets=y[:2] + 1)


def test_unknown_loss_name_lists_allowed():
    allowed = "ce, cw, dlr, mifpe, tmifpe"
    with pytest.raises(ValueError, match=f"unknown loss 'xent'; expected one of: {allowed}"):
        parse_loss("xent")
    with pytest.raises(ValueError, match="expected one of"):
        get_loss("CE ")
    assert parse_loss("dlr") is LossName.DLR and get_loss(LossName.CE) is LOSSES[LossName.CE].fn


@pytest.mark.parametrize("name", list(LossName), ids=lambda n: n.value)
def test_registry_entries(name):
    spec = LOSSES[name]
    assert spec.name is name
    assert (ROOT / "tmifpe/losses" / name.value / "__init__.py").exists()  # its own package
    z, y = torch.randn(5, 10), torch.arange(5)
    assert spec.fn(z, y).shape == (5,)


# ---------------------------------------------------------------- the finite-precision phenomenon


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_ce_gradient_lost_mifpe_survives(dtype):
    """Top-2 gap 20 (table in tmifpe-theory.md): fp16 loses the whole CE gradient (all gaps >
    17.3), bf16/fp32 lose the true-class term (gap > 5.5 / 16.6); fp64 keeps both. MIFPE's
    gradient is non-zero and points where its fp64 reference points."""
    z = torch.tensor([[20.0, 0.0, -1.0, -3.0]])
    y = torch.tensor([0])
    ce, mifpe = get_loss("ce"), get_loss("mifpe")
    g_ce = _grad(ce, z.to(dtype), y, None)
    g_ce64 = _grad(ce, z.double(), y, None)
    assert (g_ce64 != 0).all()
    if dtype == torch.float16:
        assert (g_ce == 0).all()
    else:
        assert g_ce[0, 0] == 0 and (g_ce[0, 1:] > 0).all()
    g_m = _grad(mifpe, z.to(dtype), y, None)
    g_m64 = _grad(mifpe, z.double(), y, None)
    assert (g_m != 0).all() and g_m[0, 0] < 0
    assert _cosine(g_m, g_m64) > 0.999
    torch.testing.assert_close(g_m.double(), g_m64, rtol=2e-2, atol=1e-3)
