"""The ``fast`` attack preset: AutoAttack's verdict at a fraction of its passes, with a
gradient-masking guard.

Composition (each phase only on the points still robust after the previous ones, every verdict
re-verified by a fresh fp32 pass, :mod:`tmifpe.verify`):

1. APGD (:func:`tmifpe.attacks.apgd.run_apgd`) phases (``PRESET_PHASES``): T-MIFPE untargeted
   20 iterations; targeted 20 on each of the 3 nearest classes by MALT's linearised distance
   (:func:`malt_targets`); then, spent adaptively on the survivors closest to breaking
   (``Phase.focus``: smallest fp32 margin seen so far), targeted 100 on the 3 nearest (closest
   40 %), untargeted 100 from a new start (closest 60 %) and DLR targeted 100 on the 4 nearest
   (closest 15 %); each phase on the survivors;
2. the guard: pyautoattack's Square attack (gradient-free, public class
   ``pyautoattack.square.SquareAttack``), 100 queries, on the survivors;
3. escalation (the guard acts): the survivors the flags point at get Square's full budget
   (``escalate_queries``, AutoAttack's 5000): every survivor of a batch where the guard broke a
   point the gradient phases missed, and each survivor whose gradient steps were mostly zero
   (``zero_grad_steps`` ≥ ``ESCALATE_ZERO_FRACTION`` of its backward passes) or non-finite.

The phases are the preset's (``FastConfig``), chosen by the committed protocol
``benchmarks/fast_protocol_v3.json`` on tuning models and judged on other models
(``benchmarks/fast_validation.py``, ``docs/fast.md``); ``V1_PRESET_PHASES`` and
``V2_PRESET_PHASES`` are protocols v1's and v2's.
APGD's progress measure is passed explicitly: the C&W margin for the scaled losses (MIFPE,
T-MIFPE), the loss for the others [APGD paper; see :mod:`tmifpe.attacks.apgd`].

Cost [same accounting as the attack cells and the AutoAttack runner]: ``passes`` =
forward + backward passes of the gradient phases (as counted by the engines) + Square queries
(forward passes, attributed to examples like the AA runner does, via
:func:`tmifpe.attacks.autoattack.match_rows`) + one fp32 verification forward per phase
an example took part in (the AA runner counts its verification forward after each attack too).
The clean pass is not counted (neither side counts it). MALT target selection costs one forward
and K backward passes per attacked point (one input gradient per class logit), counted in
``n_forward``/``n_backward``. :attr:`FastResult.forward_equivalents` weighs a backward as two
forwards (the second cost column).

Flags [AutoAttack's checks, per example]: gradient steps with an exactly zero input gradient,
steps with a non-finite loss or gradient, and ``guard_broken``: a point that every gradient
phase left robust but the gradient-free guard broke (the classic symptom of gradient masking).
Model level: ``randomized`` when two clean forward passes differ.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

import torch
from pyautoattack.square import SquareAttack
from torch import Tensor, nn

from tmifpe.attacks.apgd import APGDConfig, Progress, run_apgd
from tmifpe.attacks.autoattack import match_rows, snap_to_ball
from tmifpe.attacks.pgd import attack_targets
from tmifpe.attacks.runs import PGDResult, batch_seed
from tmifpe.losses import LossFn, LossName, get_loss, parse_loss
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.verify import Verdict, clean_correct, in_threat_model, margin, verify

SCALED_LOSSES = (LossName.MIFPE, LossName.TMIFPE)  # APGD judges them by the margin
GUARD = "square"  # name of the guard phase in ``broken_by``
ESCALATED = "square-full"  # name of the escalation phase in ``broken_by``
ESCALATE_ZERO_FRACTION = 0.1  # a point is flagged when >= 10 % of its gradient steps were zero
TARGET_RULES = ("rank", "malt")
PMA = "pma"  # the probability-margin loss (pma_loss), local to the preset's comparisons
MALT_POOL = 20  # MALT ranks at most the 20 largest other clean logits (cost cap for K > 21)


def pma_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """Probability margin [PMA, Xu et al. 2024], maximised: untargeted
    max_{j≠y} p_j − p_y, targeted p_t − p_y, p = softmax(z). ``(N, K) -> (N,)``."""
    p = torch.softmax(logits.float(), dim=1).to(logits.dtype)
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    if targets is not None:
        return p.gather(1, targets[:, None]).squeeze(1) - p_y
    others = p.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - p_y


def phase_loss(name: str, tstar_rule: str) -> LossFn:
    return pma_loss if name == PMA else get_loss(name, tstar_rule=tstar_rule)


def malt_distances(model: nn.Module, x: Tensor, y: Tensor, pool: int = MALT_POOL) -> Tensor:
    """[MALT, Melamed et al. 2024] Linearised l∞ distance to each class's boundary at the clean
    point: d_j = (z_y − z_j) / ‖∇ₓ(z_y − z_j)‖₁ (the dual norm of l∞), +inf for j = y. ``(N, K)``;
    one forward and :func:`malt_backward_passes` backward passes (one per logit considered).
    With more than ``pool`` other classes (CIFAR-100, ImageNet), only the ``pool`` largest
    clean logits besides z_y are considered (our cost cap, not MALT's rule; +inf elsewhere)."""
    xg = x.detach().clone().requires_grad_(True)
    z = model(xg)
    n = min(pool, z.shape[1] - 1)
    # column 0: the label; columns 1..n: the largest other clean logits. Row i's backward of
    # sum_i z[i, c_i] is row i's own gradient (eval-mode rows do not interact).
    others = z.detach().scatter(1, y[:, None], float("-inf")).topk(n, dim=1).indices
    cols = torch.cat([y[:, None], others], dim=1)  # (N, n + 1)
    grads = torch.stack([torch.autograd.grad(z.gather(1, cols[:, r : r + 1]).sum(), xg,
                                             retain_graph=r < n)[0]
                         for r in range(n + 1)], dim=1).flatten(2)  # (N, n + 1, D)
    zc = z.detach().gather(1, cols)
    margin = zc[:, :1] - zc[:, 1:]
    dual = (grads[:, :1] - grads[:, 1:]).abs().sum(dim=2)
    d = torch.full_like(z.detach(), float("inf"))
    return d.scatter(1, others, margin / (dual + 1e-12))


def malt_backward_passes(n_classes: int, pool: int = MALT_POOL) -> int:
    """Backward passes of one :func:`malt_distances` call per point: K, or ``pool`` + 1 when
    the classes are capped."""
    return n_classes if n_classes - 1 <= pool else pool + 1


def malt_targets(model: nn.Module, x: Tensor, y: Tensor, n_targets: int) -> Tensor:
    """The ``min(n_targets, K−1, MALT_POOL)`` classes with the smallest :func:`malt_distances`,
    nearest first. ``(N, n)``."""
    d = malt_distances(model, x, y)
    n = min(n_targets, d.shape[1] - 1, MALT_POOL)
    return d.argsort(dim=1)[:, :n]


class Kind(str, enum.Enum):
    UNTARGETED = "untargeted"
    TARGETED = "targeted"


@dataclass(frozen=True)
class Phase:
    """One gradient phase: APGD with ``loss`` for ``steps`` iterations, ``restarts`` runs
    (each on the survivors), targeted on ``n_targets`` classes if TARGETED (``targets``: clean
    logit rank or MALT). ``focus`` < 1 spends the phase adaptively [after A³, Liu et al. 2022:
    budget where it pays]: only on the ``ceil(focus · n)`` of the n survivors of the batch with
    the smallest fp32 margin z_y − max_{j≠y} z_j seen so far (at every earlier phase's returned
    iterate), i.e. the points closest to breaking."""

    kind: Kind
    steps: int
    loss: str = "tmifpe"
    n_targets: int = 0
    restarts: int = 1
    targets: str = "rank"  # "rank" (clean logit rank 2…) or "malt" (malt_targets)
    focus: float = 1.0  # fraction of the survivors attacked, smallest margin first

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.loss != PMA:
            parse_loss(self.loss)
        if self.targets not in TARGET_RULES:
            raise ValueError(f"phase targets must be one of {TARGET_RULES}, got {self.targets!r}")
        if self.steps < 1:
            raise ValueError(f"phase steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ValueError(f"phase restarts must be >= 1, got {self.restarts}")
        if not 0.0 < self.focus <= 1.0:
            raise ValueError(f"phase focus must be in (0, 1], got {self.focus}")
        if (self.kind is Kind.TARGETED) != (self.n_targets > 0):
            raise ValueError(f"a targeted phase needs n_targets >= 1 and an untargeted one 0, "
                             f"got {self.kind.value} with n_targets={self.n_targets}")

    @property
    def name(self) -> str:
        tail = f"-t{self.n_targets}" if self.kind is Kind.TARGETED else ""
        tail += "m" if self.kind is Kind.TARGETED and self.targets == "malt" else ""
        rs = f"x{self.restarts}" if self.restarts > 1 else ""
        focus = f"@{self.focus:g}" if self.focus < 1.0 else ""
        return f"{self.loss}-{self.kind.value[0]}{self.steps}{tail}{rs}{focus}"

    @property
    def progress(self) -> Progress:
        if self.loss == PMA:
            return Progress.LOSS
        return Progress.MARGIN if parse_loss(self.loss) in SCALED_LOSSES else Progress.LOSS


# The preset: selected by the committed protocol v3 benchmarks/fast_protocol_v3.json on its 14
# tuning models (the cheapest composition with gap <= 0 on every one of them; judged on 6 other
# models: benchmarks/results/fast_validation_v3.json, docs/fast.md), phases in order.
PRESET_PHASES: tuple[Phase, ...] = (
    Phase(Kind.UNTARGETED, steps=20),
    Phase(Kind.TARGETED, steps=20, n_targets=3, targets="malt"),  # a short scan, 3 MALT-nearest
    # 100 iterations only where they pay: the survivors closest to breaking
    Phase(Kind.TARGETED, steps=100, n_targets=3, targets="malt", focus=0.4),
    Phase(Kind.UNTARGETED, steps=100, focus=0.6),  # a new random start
    # another loss and a 4th target on the closest 15 %
    Phase(Kind.TARGETED, steps=100, loss="dlr", n_targets=4, targets="malt", focus=0.15),
)

# protocol v2's selection (benchmarks/fast_protocol_v2.json, results/fast_validation_v2.json; the
# reference of protocol v3), kept so its results stay reproducible (``FastConfig(phases=...)``).
V2_PRESET_PHASES: tuple[Phase, ...] = (
    Phase(Kind.UNTARGETED, steps=20),
    Phase(Kind.TARGETED, steps=100, n_targets=3, targets="malt"),
    Phase(Kind.UNTARGETED, steps=100),
)

# protocol v1's selection (benchmarks/fast_protocol.json, results/fast_validation.json): the
# preset before protocol v2, kept so its results stay reproducible (``FastConfig(phases=...)``).
V1_PRESET_PHASES: tuple[Phase, ...] = (
    Phase(Kind.UNTARGETED, steps=20),
    Phase(Kind.TARGETED, steps=20, n_targets=1, targets="malt"),
    Phase(Kind.UNTARGETED, steps=50),
    Phase(Kind.TARGETED, steps=20, n_targets=1, targets="rank"),
)


@dataclass(frozen=True)
class FastConfig:
    eps: float
    phases: tuple[Phase, ...] = PRESET_PHASES
    guard_queries: int = 100  # Square queries per surviving point; 0 disables the guard
    guard_p_init: float = 0.8  # Square's initial square size fraction (AutoAttack's value)
    escalate_queries: int = 5000  # full Square budget on flagged survivors; 0 disables
    tstar_rule: str = "coef"
    batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if not self.phases:
            raise ValueError("the preset needs at least one gradient phase")
        if self.guard_queries < 0:
            raise ValueError(f"guard_queries must be >= 0, got {self.guard_queries}")
        if self.escalate_queries < 0:
            raise ValueError(f"escalate_queries must be >= 0, got {self.escalate_queries}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def name(self) -> str:
        guard = f"+sq{self.guard_queries}" if self.guard_queries else ""
        esc = f"+esc{self.escalate_queries}" if self.escalate_queries else ""
        return "+".join(p.name for p in self.phases) + guard + esc


@dataclass(frozen=True)
class FastResult:
    """Per-example outcome (tensors of leading dim N, CPU) of :func:`run_fast`."""

    x_adv: Tensor  # (N, ...) float32: first verified breaking point, else the clean point
    success: Tensor  # (N,) bool: clean-correct and broken (fp32 verdict of the phase)
    clean_correct: Tensor  # (N,) bool, fp32 clean pass
    broken_by: list[str]  # phase name (or "square") that broke the point; "" otherwise
    n_forward: Tensor  # (N,) int64, gradient-phase forward passes
    n_backward: Tensor  # (N,) int64
    n_queries: Tensor  # (N,) int64, guard queries
    n_verify: Tensor  # (N,) int64, fp32 verification forwards (one per phase attended)
    zero_grad_steps: Tensor  # (N,) int64
    nonfinite_steps: Tensor  # (N,) int64
    guard_broken: Tensor  # (N,) bool: survived every gradient phase, broken by the guard
    escalated: Tensor  # (N,) bool: flagged survivor that got the full Square budget
    randomized: bool  # two clean forward passes differed (model level)
    verdict: Verdict  # final fp32/fp64 verification of x_adv

    @property
    def passes(self) -> Tensor:
        """Forward + backward passes per example, counted like the cells and the AA runner."""
        return self.n_forward + self.n_backward + self.n_queries + self.n_verify

    @property
    def forward_equivalents(self) -> Tensor:
        """Passes with a backward weighted as two forwards (the second cost column)."""
        return self.n_forward + 2 * self.n_backward + self.n_queries + self.n_verify

    @property
    def flag_zero_grad(self) -> Tensor:
        return self.zero_grad_steps > 0

    @property
    def flag_nonfinite(self) -> Tensor:
        return self.nonfinite_steps > 0


def run_fast(model: nn.Module, x: Tensor, y: Tensor, config: FastConfig, *,
             device: torch.device | None = None) -> FastResult:
    """The ``fast`` preset on float32 ``x`` in [0,1] (module docstring) on ``device`` (default:
    ``x``'s). ``model`` is deep-copied (fp32/fp64 eval-mode copies), never changed. Batches of
    ``config.batch_size``; batch b draws its random starts from
    :func:`tmifpe.attacks.runs.batch_seed`, so equal inputs give equal results on CPU."""
    if x.dtype != torch.float32 or y.dtype != torch.int64 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need float32 x and int64 y of equal length, got {x.dtype} "
                         f"{tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
    dev = x.device if device is None else device
    x, y = x.to(dev), y.to(dev)
    ref32 = PrecisionModel(model, Precision.FP32).to(dev)
    ref64 = PrecisionModel(model, Precision.FP64).to(dev)
    parts = [_run_batch(ref32, ref64, x[s : s + config.batch_size], y[s : s + config.batch_size],
                        config, b)
             for b, s in enumerate(range(0, x.shape[0], config.batch_size))]
    return _concat(parts)


def _run_batch(ref32: PrecisionModel, ref64: PrecisionModel, x: Tensor, y: Tensor,
               cfg: FastConfig, batch: int) -> FastResult:
    n = x.shape[0]
    with torch.no_grad():
        clean = ref32(x)
        again = ref32(x)
    # NaN == NaN is no difference between the two passes
    randomized = not bool(((clean == again) | (clean.isnan() & again.isnan())).all())
    correct = clean_correct(clean, y).cpu()
    alive = correct.clone()  # clean-correct and not yet (verified) broken
    x_adv = x.detach().cpu().clone()
    broken_by = [""] * n

    def z() -> Tensor:
        return torch.zeros(n, dtype=torch.int64)

    fwd, bwd, queries, n_ver, zero, nonfin = z(), z(), z(), z(), z(), z()
    closest = margin(clean, y).cpu()  # smallest fp32 margin seen per point (``Phase.focus``)
    gen = torch.Generator().manual_seed(batch_seed(cfg.seed, False, batch))
    for phase in cfg.phases:
        if not bool(alive.any()):
            break
        attacked = focus_mask(alive, closest, phase.focus)
        res = _run_phase(ref32, x, y, clean, attacked, phase, cfg, gen)
        fwd += res.n_forward
        bwd += res.n_backward
        zero += res.zero_grad_steps
        nonfin += res.nonfinite_steps
        still = attacked.clone()
        _accept(ref32, x, y, res.x_adv, still, n_ver, x_adv, broken_by, phase.name, cfg.eps,
                closest)
        alive &= ~(attacked & ~still)  # the attacked rows the phase broke leave ``alive``
    survivors = alive.clone()
    if cfg.guard_queries > 0 and bool(alive.any()):
        adv_sq = square_guard(ref32, x, y, alive, cfg.guard_queries, cfg, queries)
        _accept(ref32, x, y, adv_sq, alive, n_ver, x_adv, broken_by, GUARD, cfg.eps)
    guard_broken = survivors & ~alive
    escalate = alive & escalation_mask(guard_broken, zero, nonfin, bwd)
    if cfg.escalate_queries > 0 and bool(escalate.any()):
        adv_full = square_guard(ref32, x, y, escalate, cfg.escalate_queries, cfg, queries)
        _accept(ref32, x, y, adv_full, alive, n_ver, x_adv, broken_by, ESCALATED, cfg.eps)
    else:
        escalate = torch.zeros_like(escalate)
    verdict = verify(ref32, ref64, x, x_adv.to(x.device), y, cfg.eps)
    success = correct & ~alive
    return FastResult(x_adv, success, correct, broken_by, fwd, bwd, queries, n_ver, zero, nonfin,
                      guard_broken, escalate, randomized, verdict.cpu())


def escalation_mask(guard_broken: Tensor, zero_grad_steps: Tensor, nonfinite_steps: Tensor,
                    n_backward: Tensor) -> Tensor:
    """(N,) bool, the points whose flags call for the full Square budget: all of them when the
    guard broke any point of the batch (the gradient phases missed a breakable point: masking
    suspected), else those with non-finite steps or with zero-gradient steps making up
    ≥ ``ESCALATE_ZERO_FRACTION`` of their backward passes."""
    if bool(guard_broken.any()):
        return torch.ones_like(guard_broken)
    mostly_zero = zero_grad_steps.double() >= ESCALATE_ZERO_FRACTION * n_backward.double()
    return (nonfinite_steps > 0) | (mostly_zero & (zero_grad_steps > 0))


def focus_mask(alive: Tensor, closest: Tensor, focus: float) -> Tensor:
    """(N,) bool: the ``ceil(focus · n)`` of the n ``alive`` rows with the smallest ``closest``
    margin (ties: lower index first; stable), all of them at ``focus`` = 1."""
    if focus >= 1.0:
        return alive.clone()
    idx = alive.nonzero().squeeze(1)
    k = math.ceil(focus * idx.numel())
    order = torch.sort(closest[idx], stable=True).indices[:k]
    out = torch.zeros_like(alive)
    out[idx[order]] = True
    return out


def _run_phase(model: PrecisionModel, x: Tensor, y: Tensor, clean: Tensor, alive: Tensor,
               phase: Phase, cfg: FastConfig, gen: torch.Generator) -> PGDResult:
    targeted = phase.kind is Kind.TARGETED
    extra_f = torch.zeros(x.shape[0], dtype=torch.int64)
    extra_b = torch.zeros_like(extra_f)
    targets = None
    if targeted and phase.targets == "malt":
        targets = attack_targets(clean, phase.n_targets)  # placeholder rows for dead points
        idx = alive.nonzero().squeeze(1)
        if idx.numel():
            dev_idx = idx.to(x.device)
            targets[dev_idx] = malt_targets(model, x[dev_idx], y[dev_idx], phase.n_targets)
            extra_f[idx] += 1
            extra_b[idx] += malt_backward_passes(clean.shape[1])
    elif targeted:
        targets = attack_targets(clean, phase.n_targets)
    acfg = APGDConfig(eps=cfg.eps, steps=phase.steps, restarts=phase.restarts, targeted=targeted,
                      n_targets=max(phase.n_targets, 1), progress=phase.progress, seed=cfg.seed)
    loss = phase_loss(phase.loss, cfg.tstar_rule)
    res = run_apgd(model, x, y, loss, acfg, attack_mask=alive.clone(), targets=targets,
                   generator=gen)
    return dataclasses.replace(res, n_forward=res.n_forward + extra_f,
                               n_backward=res.n_backward + extra_b)


def _accept(ref32: PrecisionModel, x: Tensor, y: Tensor, cand: Tensor, alive: Tensor,
            n_ver: Tensor, x_adv: Tensor, broken_by: list[str], name: str, eps: float,
            closest: Tensor | None = None) -> None:
    """Fresh fp32 check of the candidates of the ``alive`` rows (broken: inside the ball, finite
    logits, argmax ≠ label, as :meth:`tmifpe.verify.Verdict.broken`); broken ones leave ``alive``
    (updated in place with ``n_ver``, ``x_adv``, ``broken_by``). ``closest`` (per-row smallest
    fp32 margin so far) is lowered in place with the candidates' finite margins."""
    idx = alive.nonzero().squeeze(1)
    dev_idx = idx.to(x.device)
    xc = cand[idx].to(x.device)
    with torch.no_grad():
        logits = ref32(xc)
    # broken as in tmifpe.verify: valid, finite fp32 logits, argmax != label
    wrong = torch.isfinite(logits).all(dim=1) & (logits.argmax(dim=1) != y[dev_idx])
    ok = (in_threat_model(x[dev_idx], xc, eps) & wrong).cpu()
    n_ver[idx] += 1
    if closest is not None:
        m = margin(logits, y[dev_idx]).cpu()
        m = torch.where(torch.isfinite(m), m, torch.full_like(m, float("inf")))
        closest[idx] = torch.minimum(closest[idx], m)
    rows = idx[ok]
    alive[rows] = False
    x_adv[rows] = xc[ok].cpu()
    for r in rows.tolist():
        broken_by[r] = name


class _QueryCounter(nn.Module):
    """Forwards to ``model`` and charges each row of a call to its nearest clean point."""

    def __init__(self, model: nn.Module, clean: Tensor, index: Tensor, counts: Tensor) -> None:
        super().__init__()
        self.model, self.clean, self.index, self.counts = model, clean, index, counts

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 0:
            rows = self.index[match_rows(x.detach(), self.clean).cpu()]
            self.counts.index_add_(0, rows, torch.ones_like(rows))
        return self.model(x)


def square_guard(model: PrecisionModel, x: Tensor, y: Tensor, alive: Tensor, n_queries: int,
                 cfg: FastConfig, queries: Tensor) -> Tensor:
    """[Andriushchenko et al. 2020, via pyautoattack] Square (l∞, margin loss) with
    ``n_queries`` queries on the ``alive`` rows; returns candidates (N, ...) on the CPU
    (clean points elsewhere); adds the queries per example to ``queries`` in place. The
    caller's CPU RNG state is restored (Square reseeds the global generator)."""
    idx = alive.nonzero().squeeze(1)
    xs, ys = x[idx.to(x.device)], y[idx.to(x.device)]
    counter = _QueryCounter(model, xs, idx, queries)
    sq = SquareAttack(counter, norm="Linf", n_queries=n_queries, eps=cfg.eps,
                      p_init=cfg.guard_p_init, n_restarts=1, seed=cfg.seed, loss="margin",
                      resc_schedule=True, device=x.device)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        adv = sq.perturb(xs.clone(), ys.clone()).detach().float()
    # Square computes x ± eps in float32, which can round outward (0.2 is no float32 number):
    # like the AA runner, the rounding is repaired; larger violations are rejected later.
    out = x.detach().cpu().clone()
    out[idx] = snap_to_ball(xs, adv, cfg.eps)[0].cpu()
    return out


def _concat(parts: list[FastResult]) -> FastResult:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(p, name) for p in parts])

    tensors = ("x_adv", "success", "clean_correct", "n_forward", "n_backward", "n_queries",
               "n_verify", "zero_grad_steps", "nonfinite_steps", "guard_broken", "escalated")
    verdict = Verdict.cat([p.verdict for p in parts])
    kw = {name: cat(name) for name in tensors}
    return FastResult(broken_by=[b for p in parts for b in p.broken_by],
                      randomized=any(p.randomized for p in parts), verdict=verdict, **kw)
