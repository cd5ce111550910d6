"""APGD engine: feasibility for every loss and dtype, determinism, the checkpoint schedule, the
step-size rule on constructed loss sequences, bookkeeping, and parity with pyautoattack's APGD-CE.

Parity measured when written (single thread, 150 digits test points, 100 iterations, 1 restart,
robust accuracy ours / pyautoattack, torch 2.14.1 CPU): standard CNN eps 0.1 43.3% / 43.3%;
PGD-AT CNN eps 0.1 68.7% / 68.7%, eps 0.2 14.0% / 14.7%. On the pipeline's 360 digits points
(eps 0.2, fp32): digits_std 3.6% / 3.6%, digits_at 51.9% / 52.5% (20 iterations) and 51.1% /
51.1% (100 iterations).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from math import ceil

import pytest
import torch
from support.parity import robust_vs_apgd_ce
from torch import Tensor, nn

from tmifpe.attacks.apgd import (
    APGDConfig,
    Progress,
    checkpoint_fractions,
    checkpoints,
    default_progress,
    paper_checkpoints,
    run_apgd,
    uniform_start,
)
from tmifpe.attacks.pgd import NEVER, attack_targets
from tmifpe.attacks.projection import linf_box
from tmifpe.losses import LossName, get_loss
from tmifpe.precision import Precision, PrecisionModel

pytestmark = pytest.mark.usefixtures("single_thread")
N_PARITY = 150
MAX_GAP = 0.03  # |ours − pyautoattack| robust accuracy, as a fraction


# --- checkpoint schedule -----------------------------------------------------------------------

def _formula_checkpoints(n: int) -> tuple[int, ...]:
    """Independent evaluation of the APGD paper's recursion with exact rationals."""
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        p.append(nxt)
    return tuple(sorted({ceil(q * n) for q in p[1:] if ceil(q * n) >= 1}))


def test_checkpoint_fractions_follow_the_recursion():
    assert checkpoint_fractions() == (22, 41, 57, 70, 80, 87, 93, 99)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 20, 37, 50, 100, 101, 250, 1000, 1001])
def test_paper_checkpoints_match_formula(n):
    ws = paper_checkpoints(n)
    assert ws == _formula_checkpoints(n)
    assert all(1 <= w <= n for w in ws) and list(ws) == sorted(set(ws))


def _autoattack_checkpoints(n: int) -> tuple[int, ...]:
    """The iterations (1-based) at which pyautoattack's ``attack_single_run`` checks the step
    size, from its own counters: ``counter3 == k`` after iteration i, then
    ``k = max(k - size_decr, n_iter_min)`` (read from the installed package, not re-derived)."""
    from pyautoattack.autopgd_base import APGDAttack

    apgd = APGDAttack(nn.Identity(), n_iter=n, eps=0.1, device="cpu")
    k, counter, out = apgd.n_iter_2, 0, []
    for i in range(n):
        counter += 1
        if counter == k:
            out.append(i + 1)
            k = max(k - apgd.size_decr, apgd.n_iter_min)
            counter = 0
    return tuple(out)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 20, 37, 50, 100, 101, 250, 1000, 1001])
def test_checkpoints_match_autoattack(n):
    assert checkpoints(n) == _autoattack_checkpoints(n)


def test_checkpoints_for_100_and_20_iterations():
    # AutoAttack's schedule, which the engine runs; the paper's ⌈p_j·N⌉ agrees at N = 100 only
    assert checkpoints(100) == paper_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert checkpoints(20) == (4, 7, 9, *range(10, 21))
    assert paper_checkpoints(20) == (5, 9, 12, 14, 16, 18, 19, 20)


def test_default_progress_is_the_margin_for_scaled_losses():
    """Before issue 10 the default was the loss for every loss, which the module docstring
    calls meaningless for MIFPE/T-MIFPE."""
    assert APGDConfig(eps=0.1, steps=5).progress is None
    for name in ("mifpe", "tmifpe"):
        assert default_progress(get_loss(name)) is Progress.MARGIN
    for name in ("ce", "cw", "dlr"):
        assert default_progress(get_loss(name)) is Progress.LOSS


def test_nonfinite_loss_takes_a_random_step():
    """A step whose loss is NaN is not skipped but taken in a random sign direction (issue 19:
    a skipped step left the iterate where it was, and the deterministic recomputation repeated
    the NaN for the rest of the run); it counts as no progress. Before issue 10 the NaN
    gradient entries were zeroed and the step taken."""
    n, eps = 6, 0.1
    xs_ok, start = _scripted_run([float(k) for k in range(n + 1)], n, eps)
    assert not torch.equal(xs_ok[1], start)  # a finite loss: the first step moves
    xs, _ = _scripted_run([float("nan"), float("nan"), *map(float, range(2, n + 1))], n, eps)
    lo, hi = linf_box(torch.full((3, 1, 4, 4), 0.5), eps)
    for k in (1, 2):  # the two NaN steps move the iterate, not along the scripted gradient
        assert not torch.equal(xs[k], xs[k - 1]) and not torch.equal(xs[k], xs_ok[k])
        assert ((xs[k] >= lo) & (xs[k] <= hi)).all()
    again, _ = _scripted_run([float("nan"), float("nan"), *map(float, range(2, n + 1))], n, eps)
    assert all(torch.equal(a, b) for a, b in zip(xs, again, strict=True))  # deterministic


# --- feasibility, determinism, bookkeeping ----------------------------------------------------

@pytest.fixture(scope="module")
def small(digits, digits_cnn):
    x, y = digits.x_test[:40], digits.y_test[:40]
    with torch.no_grad():
        clean = PrecisionModel(digits_cnn, Precision.FP32)(x)
    return x, y, clean


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
@pytest.mark.parametrize("loss", list(LossName))
@pytest.mark.parametrize("targeted", [False, True])
def test_every_x_adv_is_feasible(small, digits_cnn, in_ball, precision, loss, targeted):
    x, y, clean = small
    eps = 0.1
    targets = attack_targets(clean, 2) if targeted else None
    progress = Progress.MARGIN if loss in (LossName.MIFPE, LossName.TMIFPE) else Progress.LOSS
    cfg = APGDConfig(eps=eps, steps=8, targeted=targeted, n_targets=2, progress=progress)
    res = run_apgd(PrecisionModel(digits_cnn, precision), x, y, get_loss(loss), cfg,
                   targets=targets)
    assert res.x_adv.dtype == torch.float32
    in_ball(x, res.x_adv, eps)
    for t in (res.success, res.first_success_iter, res.n_forward, res.n_backward):
        assert t.shape == (x.shape[0],) and t.device.type == "cpu"


def test_same_seed_same_result_other_seed_other_start(small, digits_cnn_at):
    x, y, _ = small
    model = PrecisionModel(digits_cnn_at, Precision.FP32)
    cfg = APGDConfig(eps=0.15, steps=12)
    a = run_apgd(model, x, y, get_loss("tmifpe"), cfg)
    b = run_apgd(model, x, y, get_loss("tmifpe"), cfg)
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name
    c = run_apgd(model, x, y, get_loss("tmifpe"), dataclasses.replace(cfg, seed=1))
    assert not torch.equal(a.x_adv, c.x_adv)


def test_bookkeeping_of_one_run(small, digits_cnn):
    x, y, clean = small
    model = PrecisionModel(digits_cnn, Precision.FP32)
    mask = clean.argmax(dim=1) == y
    mask[::4] = False
    n = 15
    res = run_apgd(model, x, y, get_loss("ce"), APGDConfig(eps=0.15, steps=n), attack_mask=mask)
    assert (res.n_forward[~mask] == 0).all() and not res.success[~mask].any()
    assert torch.equal(res.x_adv[~mask], x[~mask])  # untouched
    hit, robust = res.success, mask & ~res.success
    assert hit.any() and robust.any()
    assert ((res.first_success_iter[hit] >= 0) & (res.first_success_iter[hit] <= n)).all()
    assert (res.first_success_iter[~hit] == NEVER).all()
    assert torch.equal(res.n_forward[hit], res.first_success_iter[hit] + 1)
    assert torch.equal(res.n_backward[hit], res.first_success_iter[hit])
    assert (res.n_forward[robust] == n + 1).all() and (res.n_backward[robust] == n).all()
    with torch.no_grad():  # the attack's verdict is a fresh fp32 misclassification
        pred = model(res.x_adv).argmax(dim=1)
    assert torch.equal(pred[hit] != y[hit], torch.ones_like(y[hit], dtype=torch.bool))


def test_targets_run_one_after_another(small, digits_cnn_at):
    x, y, clean = small
    targets = attack_targets(clean, 3)
    cfg = APGDConfig(eps=0.15, steps=6, targeted=True, n_targets=3)
    res = run_apgd(PrecisionModel(digits_cnn_at, Precision.FP32), x, y, get_loss("ce"), cfg,
                   targets=targets)
    hit = res.success
    assert (res.success_target[~hit] == -1).all()
    assert (res.success_target[hit][:, None] == targets[hit]).any(dim=1).all()
    robust = ~hit
    assert (res.n_forward[robust] == 3 * 7).all()  # 3 targets × (N + 1) forwards


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"eps": 0.0, "steps": 5}, "eps must be in"),
    ({"eps": 0.1, "steps": 0}, "steps must be"),
    ({"eps": 0.1, "steps": 5, "restarts": 0}, "restarts must be"),
    ({"eps": 0.1, "steps": 5, "rho": 1.5}, "rho must be"),
    ({"eps": 0.1, "steps": 5, "progress": "best"}, "unknown progress measure 'best'"),
    ({"eps": 0.1, "steps": 5, "targeted": True, "n_targets": 0}, "n_targets must be"),
])
def test_config_errors_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        APGDConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_input_errors_are_one_line(small, digits_cnn):
    x, y, _ = small
    model = PrecisionModel(digits_cnn, Precision.FP32)
    cfg = APGDConfig(eps=0.1, steps=2)
    ce = get_loss("ce")
    cases = [
        (lambda: run_apgd(model, x.double(), y, ce, cfg), "x must be float32"),
        (lambda: run_apgd(model, x, y.int(), ce, cfg), "labels must be int64"),
        (lambda: run_apgd(model, x, y, ce, dataclasses.replace(cfg, targeted=True)),
         "needs targets"),
        (lambda: run_apgd(model, x, y + 10, ce, cfg), "label 1[0-9] out of range"),
        (lambda: run_apgd(model, x, y, ce, cfg, attack_mask=torch.ones(3, dtype=torch.bool)),
         "attack_mask must be"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


# --- the step-size rule on a constructed problem ----------------------------------------------

class _Linear(nn.Module):
    """Logits (1000, w·x): class 0 always wins, so no example is ever frozen."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        s = (x * self.w).flatten(1).sum(dim=1)
        return torch.stack([torch.full_like(s, 1000.0), s], dim=1)


def _scripted_run(values: list[float], n: int, eps: float = 0.1) -> tuple[list[Tensor], Tensor]:
    """Run APGD whose loss *value* at iterate k is ``values[k]`` (same for all rows) while its
    gradient is w, pointing from the random start x_s towards the far side of the ball (so an
    unclipped step of size s moves every pixel by exactly s). Returns the iterates and x_s."""
    x0 = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.int64)
    lo, hi = linf_box(x0, eps)
    start = uniform_start(x0, eps, lo, hi, torch.Generator().manual_seed(7))
    w = torch.where(start > x0, -1.0, 1.0)
    model = PrecisionModel(_Linear(w), Precision.FP64)
    calls = iter(values)

    def scripted(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
        s = logits[:, 1]
        return s - s.detach() + next(calls)

    run_apgd(model, x0, y, scripted, APGDConfig(eps=eps, steps=n),
             generator=torch.Generator().manual_seed(7))
    xs = [t.float() for t in model.inner.inputs]
    assert len(xs) == n + 1 and torch.equal(xs[0], start)
    return xs, start


def _restarted(xs: list[Tensor], start: Tensor, k: int, step: float) -> bool:
    """Iterate k+1 was taken from the start point with momentum reset: x = x_s + 0.75·step·s."""
    moved = (xs[k + 1] - start).abs().flatten(1).amax(dim=1)
    return bool(torch.allclose(moved, torch.full_like(moved, 0.75 * step), atol=1e-6))


def test_stalled_loss_halves_the_step_at_every_checkpoint():
    # constant loss: no increase ((a) fires) and no new best; x_max stays the start point
    n, eps = 100, 0.1
    xs, start = _scripted_run([5.0] * (n + 1), n, eps)
    for j, w in enumerate(checkpoints(n), start=1):
        if w < n:
            assert _restarted(xs, start, w, 2 * eps / 2**j), (j, w)
        if w + 2 <= n:
            assert not torch.equal(xs[w + 2], xs[w + 1])  # then it moves on again
    # between checkpoints the iterates move away from the start, not back to it
    assert not _restarted(xs, start, 30, 2 * eps / 4)


def test_increasing_loss_never_halves():
    n, eps = 60, 0.1
    xs, start = _scripted_run([float(k) for k in range(n + 1)], n, eps)
    # full steps of 2·eps: after one step every pixel sits on the far face and stays there
    for k in range(2, n + 1):
        assert torch.equal(xs[k], xs[1]), k
    assert not any(torch.equal(xs[w + 1], start) for w in checkpoints(n) if w < n)


def test_condition_b_fires_without_condition_a():
    # values 100 at the start, then k mod 10: ≥ 84% increases in every interval ((a) silent)
    # and the best stays 100: (b) halves at 22, not at 41 (halved just before), again at 57
    n, eps = 100, 0.1
    xs, start = _scripted_run([100.0] + [float(k % 10) for k in range(1, n + 1)], n, eps)
    assert _restarted(xs, start, 22, eps)
    assert torch.equal(xs[42], xs[41])  # no restart at 41: it stays on the far face
    assert _restarted(xs, start, 57, eps / 2)


# --- parity with pyautoattack -----------------------------------------------------------------

def _parity(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[float, float, float]:
    """(clean, our APGD-CE, pyautoattack's APGD-CE) accuracies, 100 iterations each."""
    return robust_vs_apgd_ce(model, x, y, eps, lambda m, x, y, mask, eps: run_apgd(
        m, x, y, get_loss("ce"), APGDConfig(eps=eps, steps=100), attack_mask=mask))


def test_apgd_ce_matches_pyautoattack_standard_model(digits, digits_cnn):
    x, y = digits.x_test[:N_PARITY], digits.y_test[:N_PARITY]
    clean, ours, theirs = _parity(digits_cnn, x, y, eps=0.1)
    assert clean > 0.9 and 0.15 < theirs < clean - 0.2  # a non-trivial regime
    assert abs(ours - theirs) <= MAX_GAP, (ours, theirs)


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_apgd_ce_matches_pyautoattack_adversarially_trained_model(digits, digits_cnn_at, eps):
    x, y = digits.x_test[:N_PARITY], digits.y_test[:N_PARITY]
    clean, ours, theirs = _parity(digits_cnn_at, x, y, eps=eps)
    assert clean > 0.85 and 0.05 < theirs < clean
    assert abs(ours - theirs) <= MAX_GAP, (ours, theirs)
