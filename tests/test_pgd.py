"""l∞ PGD: feasibility, freeze-on-success bookkeeping, targets, restarts, masks, schedules,
determinism, and a linear model where the optimal attack is known in closed form."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

from tmifpe.attacks.pgd import NEVER, PGDConfig, PGDResult, attack_targets, run_pgd
from tmifpe.attacks.projection import linf_box, random_start
from tmifpe.attacks.schedule import Schedule, step_size
from tmifpe.losses import LossName, get_loss
from tmifpe.precision import Precision, PrecisionModel

pytestmark = pytest.mark.usefixtures("single_thread")
CE = get_loss("ce")
EPSILONS = [0.25, 8 / 255, 0.1, 0.3]  # 0.25 is exact in float32, the others are not


class Recorder(nn.Module):
    """Wraps a model and records every attack forward: (inputs, predicted classes); the fp32
    confirmation passes go to the wrapped model's (unrecorded) reference."""

    def __init__(self, model: PrecisionModel) -> None:
        super().__init__()
        self.model = model
        self.reference = model.reference
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        self.calls.append((x.detach().clone(), out.detach().argmax(dim=1)))
        return out


def _owners(
    calls: list[tuple[Tensor, Tensor]], x0: Tensor, eps: float
) -> tuple[list[list[int]], dict[int, Tensor]]:
    """Per example: the predictions of every forward row that lies in its eps-box (each row
    must belong to exactly one example, which is asserted), and the last such row."""
    lo, hi = linf_box(x0, eps)
    preds: list[list[int]] = [[] for _ in range(x0.shape[0])]
    last: dict[int, Tensor] = {}
    for xs, ps in calls:
        inside = ((xs[:, None] >= lo[None]) & (xs[:, None] <= hi[None])).flatten(2).all(dim=2)
        assert (inside.sum(dim=1) == 1).all(), "eps-boxes of the test points overlap"
        for row, owner in enumerate(inside.float().argmax(dim=1).tolist()):
            preds[owner].append(int(ps[row]))
            last[owner] = xs[row]
    return preds, last


@pytest.fixture(scope="module")
def batch(digits, digits_cnn):
    """48 digits test points, the fp32 model, clean predictions and an attack mask that leaves
    out the clean-misclassified points and every 5th point."""
    x, y = digits.x_test[:48], digits.y_test[:48]
    model = PrecisionModel(digits_cnn, Precision.FP32)
    with torch.no_grad():
        clean = model(x)
    correct = clean.argmax(dim=1) == y
    mask = correct & (torch.arange(48) % 5 != 0)
    assert mask.sum() >= 30
    return x, y, model, clean, mask


def _fields(r: PGDResult) -> dict[str, Tensor]:
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}


def _assert_untouched(r: PGDResult, x: Tensor, off: Tensor) -> None:
    assert torch.equal(r.x_adv[off], x[off])
    assert not r.success[off].any()
    assert (r.first_success_iter[off] == NEVER).all() and (r.success_target[off] == -1).all()
    for counter in (r.n_forward, r.n_backward, r.zero_grad_steps, r.nonfinite_steps):
        assert (counter[off] == 0).all()


# ---------------------------------------------------------------- feasibility at every precision


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("precision", list(Precision), ids=lambda p: p.value)
def test_x_adv_inside_ball_every_precision(digits, digits_cnn, precision, eps, in_ball):
    n, steps = (8, 3) if precision is Precision.FP16 else (32, 5)
    x, y = digits.x_test[:n], digits.y_test[:n]
    model = PrecisionModel(digits_cnn, precision)
    cfg = PGDConfig(eps=eps, steps=steps, restarts=2)
    r = run_pgd(model, x, y, CE, cfg)
    in_ball(x, r.x_adv, eps)
    with torch.no_grad():
        pred = model(r.x_adv).argmax(dim=1)
    assert (pred[r.success] != y[r.success]).all()  # misclassified at the attack dtype


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", list(LossName), ids=lambda n: n.value)
def test_every_loss_runs_inside_ball(batch, name, targeted, in_ball):
    x, y, model, clean, mask = batch
    cfg = PGDConfig(eps=0.1, steps=3, targeted=targeted, n_targets=2)
    tg = attack_targets(clean, 2) if targeted else None
    r = run_pgd(model, x, y, get_loss(name), cfg, attack_mask=mask, targets=tg)
    in_ball(x, r.x_adv, 0.1)
    _assert_untouched(r, x, ~mask)
    runs = 2 if targeted else 1
    robust = mask & ~r.success
    assert (r.n_forward[robust] == runs * 4).all() and (r.n_backward[robust] == runs * 3).all()
    assert (r.nonfinite_steps == 0).all()


# ---------------------------------------------------------------- freeze on success


@pytest.mark.parametrize("precision", [Precision.FP16, Precision.BF16, Precision.FP32],
                         ids=lambda p: p.value)
def test_freeze_on_success_semantics(digits, digits_cnn, batch, precision):
    x, y, ref32, _, mask = batch
    if precision is Precision.FP16:  # fp16 convolutions are slow on CPU
        x, y, mask = x[:12], y[:12], mask[:12]
    steps, eps = 10, 0.1
    model = PrecisionModel(digits_cnn, precision)
    rec = Recorder(model)
    r = run_pgd(rec, x, y, CE, PGDConfig(eps=eps, steps=steps), attack_mask=mask)
    preds, last = _owners(rec.calls, x, eps)
    succ, robust = r.success, mask & ~r.success
    assert succ.any() and robust.any(), "test needs both outcomes"
    assert not (succ & ~mask).any()
    _assert_untouched(r, x, ~mask)
    per_iterate = 1 if precision is Precision.FP32 else 2  # + the fp32 confirmation (issue 19)
    for i in range(x.shape[0]):
        assert per_iterate * len(preds[i]) == r.n_forward[i]  # counters match what ran
        # every attack-dtype misclassification before the end is a counted dtype-only hit
        wrong = sum(p != y[i].item() for p in preds[i]) - int(succ[i])
        assert r.dtype_only_hits[i] == wrong
        if robust[i]:  # never a confirmed success, full budget spent
            assert r.first_success_iter[i] == NEVER
            assert r.n_forward[i] == per_iterate * (steps + 1) and r.n_backward[i] == steps
        elif succ[i]:  # frozen at the first confirmed success
            k = r.first_success_iter[i].item()
            assert 0 <= k <= steps and len(preds[i]) == k + 1 and preds[i][k] != y[i]
            assert r.n_backward[i] == k
    if precision is Precision.FP32:
        assert (r.dtype_only_hits == 0).all()
    # the stored point is the iterate that succeeded, bit for bit, misclassified in both dtypes
    for i in succ.nonzero().squeeze(1).tolist():
        assert torch.equal(r.x_adv[i], last[i])
    with torch.no_grad():
        assert (model(r.x_adv[succ]).argmax(dim=1) != y[succ]).all()
        assert (ref32(r.x_adv[succ]).argmax(dim=1) != y[succ]).all()
    assert (r.success_target == -1).all()


# ---------------------------------------------------------------- targets, restarts, masks


def test_attack_targets_ranks():
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.9], [4.0, 3.0, 2.0, 1.0]])
    assert attack_targets(logits, 2).tolist() == [[1, 2], [1, 2]]
    assert attack_targets(logits, 9).tolist() == [[1, 2, 0], [1, 2, 3]]  # K−1 = 3 at most
    assert attack_targets(torch.randn(5, 3), 9).shape == (5, 2)


class _LossRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor | None]] = []

    def __call__(self, logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
        self.calls.append((labels.clone(), None if targets is None else targets.clone()))
        return CE(logits, labels, targets=targets)


def test_targeted_runs_one_target_after_another(batch):
    x, y, model, clean, mask = batch
    steps, nt = 5, 3
    tg = attack_targets(clean, nt)
    assert torch.equal(tg, clean.argsort(dim=1, descending=True)[:, 1:4])
    loss = _LossRecorder()
    cfg = PGDConfig(eps=0.1, steps=steps, targeted=True, n_targets=nt)
    r = run_pgd(model, x, y, loss, cfg, attack_mask=mask, targets=tg)
    labels0, targets0 = loss.calls[0]  # first call: every masked point, first target
    assert torch.equal(labels0, y[mask]) and torch.equal(targets0, tg[mask, 0])
    succ, robust = r.success, mask & ~r.success
    assert succ.any() and robust.any()
    _assert_untouched(r, x, ~mask)
    assert (r.n_forward[robust] == nt * (steps + 1)).all()
    assert (r.n_backward[robust] == nt * steps).all()
    assert (r.success_target[robust] == -1).all()
    for i in succ.nonzero().squeeze(1).tolist():
        col = tg[i].tolist().index(r.success_target[i].item())  # a target of this point
        k = r.first_success_iter[i].item()
        assert r.n_forward[i] == col * (steps + 1) + k + 1
        assert r.n_backward[i] == col * steps + k


def _linear_model(w: Tensor, b: Tensor) -> nn.Module:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin)


def test_targeted_with_few_classes_uses_fewer_targets():
    g = torch.Generator().manual_seed(0)
    model = PrecisionModel(_linear_model(torch.randn(3, 16, generator=g), torch.zeros(3)),
                           Precision.FP32)
    x = torch.rand(6, 1, 4, 4, generator=g)
    with torch.no_grad():
        clean = model(x)
    y = clean.argmax(dim=1)
    tg = attack_targets(clean, 9)
    assert tg.shape == (6, 2)
    cfg = PGDConfig(eps=1e-3, steps=4, targeted=True, n_targets=9)
    r = run_pgd(model, x, y, CE, cfg, targets=tg)
    robust = ~r.success
    assert robust.any()
    assert (r.n_forward[robust] == 2 * 5).all() and (r.n_backward[robust] == 2 * 4).all()


def test_restarts_only_on_still_robust_points(batch):
    x, y, model, _, mask = batch
    steps = 4
    one = run_pgd(model, x, y, CE, PGDConfig(eps=0.1, steps=steps), attack_mask=mask)
    three = run_pgd(model, x, y, CE, PGDConfig(eps=0.1, steps=steps, restarts=3),
                    attack_mask=mask)
    # restart 0 is the single run (same generator stream): its successes are identical
    s1 = one.success
    assert s1.any()
    for f in ("x_adv", "first_success_iter", "n_forward", "n_backward"):
        assert torch.equal(getattr(three, f)[s1], getattr(one, f)[s1])
    assert (three.success | ~s1).all() and three.success.sum() >= s1.sum()
    run_len = steps + 1
    later = three.success & ~s1  # broken in restart 1 or 2, after full earlier runs
    spent = three.n_forward[later] - three.first_success_iter[later] - 1
    assert ((spent == run_len) | (spent == 2 * run_len)).all()
    robust = mask & ~three.success
    assert (three.n_forward[robust] == 3 * run_len).all()
    assert (three.n_backward[robust] == 3 * steps).all()
    _assert_untouched(three, x, ~mask)


# ---------------------------------------------------------------- schedules, config, determinism


def test_schedules():
    eps, n = 0.1, 10
    assert step_size(Schedule.COSINE, 0, n, eps) == pytest.approx(0.2)
    assert step_size(Schedule.COSINE, n // 2, n, eps) == pytest.approx(0.2 * math.sqrt(0.5))
    assert step_size(Schedule.COSINE, n - 1, n, eps) == pytest.approx(0.2 * math.sin(math.pi / 20))
    assert step_size(Schedule.LINEAR, 0, n, eps) == pytest.approx(0.2)
    assert step_size(Schedule.LINEAR, n // 2, n, eps) == pytest.approx(0.1)
    assert step_size(Schedule.LINEAR, n - 1, n, eps) == pytest.approx(0.02)
    for k in (0, n // 2, n - 1):
        assert step_size(Schedule.CONSTANT, k, n, eps) == pytest.approx(0.025)
    assert Schedule("cosine") is Schedule.COSINE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"eps": 0.0, "steps": 1}, "eps must be in"), ({"eps": 1.5, "steps": 1}, "eps must be in"),
     ({"eps": 0.1, "steps": 0}, "steps must be"), ({"eps": 0.1, "steps": 1, "restarts": 0},
                                                  "restarts must be"),
     ({"eps": 0.1, "steps": 1, "momentum": 1.5}, "momentum must be"),
     ({"eps": 0.1, "steps": 1, "targeted": True, "n_targets": 0}, "n_targets must be")],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PGDConfig(**kwargs)


def test_run_pgd_rejects_bad_inputs(batch):
    x, y, model, _, _ = batch
    with pytest.raises(ValueError, match="float32"):
        run_pgd(model, x.double(), y, CE, PGDConfig(eps=0.1, steps=1))
    with pytest.raises(ValueError, match="needs targets"):
        run_pgd(model, x, y, CE, PGDConfig(eps=0.1, steps=1, targeted=True))
    with pytest.raises(ValueError, match=r"label 10 out of range.*expected 0\.\.9"):
        run_pgd(model, x, torch.full_like(y, 10), CE, PGDConfig(eps=0.1, steps=1))
    with pytest.raises(ValueError, match="label -1 out of range"):
        run_pgd(model, x, torch.full_like(y, -1), CE, PGDConfig(eps=0.1, steps=1))
    with pytest.raises(ValueError, match="target 12 out of range"):
        run_pgd(model, x, y, CE, PGDConfig(eps=0.1, steps=1, targeted=True, n_targets=1),
                targets=torch.full((len(y), 1), 12))
    with pytest.raises(ValueError, match="labels must be int64 of shape"):
        run_pgd(model, x, y[:-1], CE, PGDConfig(eps=0.1, steps=1))


def test_determinism(batch):
    x, y, model, _, mask = batch
    cfg = PGDConfig(eps=0.1, steps=4)
    a = _fields(run_pgd(model, x, y, CE, cfg, attack_mask=mask))
    b = _fields(run_pgd(model, x, y, CE, cfg, attack_mask=mask))
    c = _fields(run_pgd(model, x, y, CE, cfg, attack_mask=mask,
                        generator=torch.Generator().manual_seed(0)))
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert torch.equal(a[name], c[name]), name
    rec0, rec1 = Recorder(model), Recorder(model)
    run_pgd(rec0, x, y, CE, cfg, attack_mask=mask)
    run_pgd(rec1, x, y, CE, dataclasses.replace(cfg, seed=1), attack_mask=mask)
    assert not torch.equal(rec0.calls[0][0], rec1.calls[0][0])  # different random start
    lo, hi = linf_box(x[mask], 0.1)
    expected = random_start(x[mask], 0.1, lo, hi, torch.Generator().manual_seed(0))
    assert torch.equal(rec0.calls[0][0], expected)


# ---------------------------------------------------------------- analytic linear model


def _optimal_margin(d: Tensor, bias: Tensor, x: Tensor, eps: float) -> Tensor:
    """min over the float32 box of d·x + bias, in float64: each pixel at the face that lowers
    the margin (a linear function's minimum over a box is at a corner)."""
    lo, hi = linf_box(x, eps)
    corner = torch.where(d > 0, lo.flatten(1).double(), hi.flatten(1).double())
    return (corner * d).sum(dim=1) + bias


@pytest.mark.parametrize("name", ["ce", "cw", "mifpe", "tmifpe"])
def test_linear_model_attack_is_exact(name):
    """Two classes, logits = W x + b: the l∞ attack succeeds iff the margin minimised over the
    box eps-ball ∩ [0,1] is negative. One signed step of size 2·eps reaches that corner."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 16, generator=g, dtype=torch.float64) * 0.5
    b = torch.tensor([0.3, -0.3], dtype=torch.float64)
    model = PrecisionModel(_linear_model(w.float(), b.float()), Precision.FP32)
    x = torch.rand(400, 1, 4, 4, generator=g)
    eps = 0.1
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    sign = torch.where(y == 0, 1.0, -1.0).double()[:, None]
    d = sign * (w[0] - w[1])  # (N, 16): margin z_y − z_other = d·x + bias
    bias = sign[:, 0] * (b[0] - b[1])
    m_star = _optimal_margin(d, bias, x, eps)
    clear = m_star.abs() > 1e-3  # leave out near-ties of the float32 forward
    x, y, m_star = x[clear], y[clear], m_star[clear]
    predicted = m_star < 0
    assert 20 < predicted.sum() < len(predicted) - 20  # both outcomes well represented
    r = run_pgd(model, x, y, get_loss(name), PGDConfig(eps=eps, steps=5))
    assert torch.equal(r.success, predicted)
    assert (r.first_success_iter[predicted] <= 1).all()


def test_fp16_ce_gradient_vanishes_mifpe_attacks():
    """Linear 2-class model in fp16 with a clean margin ~45 (> 17.3: every CE gradient term
    underflows) that the ball can overturn: CE sees only zero gradients and never moves, MIFPE
    (scaled top-2 gap 1) reaches the optimal corner in one step."""
    g = torch.Generator().manual_seed(0)
    d = (torch.randint(0, 2, (64,), generator=g) * 2 - 1).float() * 10  # ||d||₁ eps = 64
    x = torch.full((8, 1, 8, 8), 0.5)
    b0 = 45.0 - 0.5 * d.sum().item()
    w = torch.stack([d, torch.zeros(64)])
    model = PrecisionModel(_linear_model(w, torch.tensor([b0, 0.0])), Precision.FP16)
    y = torch.zeros(8, dtype=torch.long)
    eps, steps = 0.1, 5
    lo, hi = linf_box(x, eps)
    start = random_start(x, eps, lo, hi, torch.Generator().manual_seed(0))
    start_margin = start.flatten(1).double() @ d.double() + b0
    assert (start_margin > 20).all()  # precondition: fp16 CE gradient is exactly zero there
    m_star = _optimal_margin(d.double().expand(8, 64), torch.full((8,), b0).double(), x, eps)
    assert (m_star < -10).all()  # and the attack is possible
    r_ce = run_pgd(model, x, y, CE, PGDConfig(eps=eps, steps=steps))
    assert not r_ce.success.any()
    assert (r_ce.zero_grad_steps == steps).all() and (r_ce.nonfinite_steps == 0).all()
    assert torch.equal(r_ce.x_adv, start)  # zero gradient: the iterate never moved
    r_m = run_pgd(model, x, y, get_loss("mifpe"), PGDConfig(eps=eps, steps=steps))
    assert r_m.success.all() and (r_m.first_success_iter == 1).all()
    assert (r_m.zero_grad_steps == 0).all()


def test_trajectory_matches_float64_hand_computation():
    """Five PGD steps of fp64 CE on a tiny tanh network, every iterate against a float64
    computation written from the formulas: vertex start from the same generator, cosine step
    η_k = 2·eps·cos(πk/2N), α = 1 then 0.75, projection onto the box ∩ [0,1] after the signed
    step and after the momentum mix, gradient W1ᵀ((1 − h²) ⊙ W2ᵀ(p − e_y)). The label stays on
    top, so no example stops early; the gradient signs change along the way, so momentum and
    schedule both show. Before issue 10 no test pinned any step after the first."""
    g = torch.Generator().manual_seed(3)
    n, d, hid, steps, eps, mom = 6, 12, 8, 5, 0.3, 0.75
    w1 = torch.randn(hid, d, generator=g, dtype=torch.float64)
    b1 = torch.randn(hid, generator=g, dtype=torch.float64)
    w2 = torch.randn(3, hid, generator=g, dtype=torch.float64)
    b2 = torch.tensor([12.0, 0.0, 0.0], dtype=torch.float64)  # class 0 on top at every point
    l1, l2 = nn.Linear(d, hid, dtype=torch.float64), nn.Linear(hid, 3, dtype=torch.float64)
    with torch.no_grad():
        for layer, (wt, bs) in ((l1, (w1, b1)), (l2, (w2, b2))):
            layer.weight.copy_(wt)
            layer.bias.copy_(bs)
    model = PrecisionModel(nn.Sequential(nn.Flatten(), l1, nn.Tanh(), l2), Precision.FP64)
    rec = Recorder(model)
    x = torch.rand(n, 1, 3, 4, generator=g)
    x[0, 0, 0, :2] = torch.tensor([0.02, 0.99])  # pixels where [0,1] clips the ball
    y = torch.zeros(n, dtype=torch.int64)
    r = run_pgd(rec, x, y, CE, PGDConfig(eps=eps, steps=steps, momentum=mom, seed=5))
    assert not r.success.any() and len(rec.calls) == steps + 1

    x0 = x.double().flatten(1)
    lo, hi = (x0 - eps).clamp(min=0.0), (x0 + eps).clamp(max=1.0)
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(5),
                          dtype=torch.int8).flatten(1).double() * 2 - 1
    cur = torch.minimum(torch.maximum(x0 + eps * signs, lo), hi)
    prev = cur.clone()
    onehot = torch.zeros(n, 3, dtype=torch.float64)
    onehot[:, 0] = 1.0
    flips = 0
    last_sign = None
    for k in range(steps + 1):
        got = rec.calls[k][0].double().flatten(1)
        torch.testing.assert_close(got, cur, rtol=0, atol=1e-6)  # float32 iterates
        if k == steps:
            break
        h = torch.tanh(cur @ w1.T + b1)
        p = torch.softmax(h @ w2.T + b2, dim=1)
        grad = ((p - onehot) @ w2 * (1 - h * h)) @ w1  # dCE/dx
        assert (grad.abs() > 1e-12 * grad.abs().amax()).all()  # no sign is ambiguous
        flips += 0 if last_sign is None else int((grad.sign() != last_sign).sum())
        last_sign = grad.sign()
        eta = 2 * eps * math.cos(math.pi * k / (2 * steps))
        alpha = 1.0 if k == 0 else mom
        z = torch.minimum(torch.maximum(cur + eta * grad.sign(), lo), hi)
        new = torch.minimum(torch.maximum(cur + alpha * (z - cur) + (1 - alpha) * (cur - prev),
                                          lo), hi)
        prev, cur = cur, new
    assert flips > 0 and (cur != prev).any()  # a non-trivial trajectory
    torch.testing.assert_close(r.x_adv.double().flatten(1), cur, rtol=0, atol=1e-6)
