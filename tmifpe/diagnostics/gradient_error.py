"""Floating-point error of attack input gradients, measured against a float64 reference.

For a model, float32 pixels x, labels, a loss and a precision p, :func:`input_gradient` computes
the input gradient of the loss with the model and the loss in p, and the same computation with a
float64 copy of the model (same loss). :func:`compare` turns the pair into per-example numbers
(all vectorised over the batch, no loop over examples):

* rel_err = ||g_p − g_64||₂ / ||g_64||₂ (0 if both are 0, +inf if only g_64 is 0);
* cosine = <g_p, g_64> / (||g_p||·||g_64||) (1 if both are 0, 0 if exactly one is);
* zero_grad: every entry of g_p is exactly 0; zero_logit_grad: the same for ∂L/∂z in p;
  zero_k_term: ∂L/∂z_k computed in p is exactly 0 (k the class of interest: y, or y_t);
* sign_flip: fraction of the entries with g_64 ≠ 0 where sign(g_p) ≠ sign(g_64) (an entry with
  g_p = 0 counts as flipped: PGD's sign step moves it the wrong way or not at all);
* nonfinite_grad / n_nonfinite: g_p holds NaN/±Inf, and how many entries. Such rows are flagged
  and counted, never dropped; their rel_err, cosine and sign_flip are NaN.

Gaps. Δ = z_π1 − z_π2 is the top-2 gap of the float64 logits (NaN if a logit is not finite).
The thresholds of ``docs/theory.md`` §3 ([derived]: −ln u for rounding, −ln(s/2) for underflow,
from :func:`tmifpe.losses.tmifpe.tstar.gap_thresholds`) refer to the *scaled* top-2 gap
m = c·Δ of the softmax the loss evaluates: for plain CE c = 1, so m = Δ; for MIFPE c = T/Δ, so
m = T = 1 [paper]; for T-MIFPE c = t*/Δ, so m = t* [paper]. Examples are binned by the raw Δ for
every loss, so CE and MIFPE/T-MIFPE are compared on the same points; m is reported next to it.
C&W and DLR evaluate no softmax: their scaled gap is undefined (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.attacks.schedule import Schedule
from tmifpe.losses import LossFn, LossName, get_loss, parse_loss
from tmifpe.losses.mifpe import MIFPE_T
from tmifpe.losses.scaling import guarded_gap
from tmifpe.losses.tmifpe.tstar import (
    Phase,
    attack_phase,
    gap_thresholds,
    nonfinite_rows,
    optimal_t,
)
from tmifpe.pipeline.config import SuiteParams
from tmifpe.precision import Precision, PrecisionModel

# Extra bin edges (raw top-2 gap) besides 0, the thresholds of the measured dtypes and +inf.
EXTRA_EDGES = (2.0, 10.0, 30.0, 60.0)
NONFINITE_BIN = -1  # bin of examples whose float64 logits hold a NaN/±Inf

# Agreement check tolerances (see ce_zero_gradient_verdict).
MIN_POINTS = 10
LOW_ZERO_MAX = 0.05
HIGH_ZERO_MIN = 0.9

TSTAR_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass(frozen=True)
class InputGradient:
    """Gradient of a loss at one precision: ``grad`` (N, D) float64 (exact copy of the dtype's
    values), ``logit_grad`` (N, K) float64, ``logits`` (N, K) float64 copy of the dtype's logits."""

    grad: Tensor
    logit_grad: Tensor
    logits: Tensor


def input_gradient(
    model: PrecisionModel, x: Tensor, labels: Tensor, loss_fn: LossFn, *,
    targets: Tensor | None = None,
) -> InputGradient:
    """∇_x Σ_i L(model(x)_i) computed entirely in ``model.dtype`` [the attack's gradient].

    The leaf is x in float64: casting float32 pixels to float64 is exact, so the model sees the
    same rounded input as from float32, and the dtype's gradient is upcast exactly.
    """
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32 pixels, got {x.dtype}")
    leaf = x.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        logits = model(leaf)
        loss = loss_fn(logits, labels, targets=targets)
        g_x, g_z = torch.autograd.grad(loss.sum(), [leaf, logits])
    return InputGradient(g_x.detach().flatten(1).to(torch.float64),
                         g_z.detach().to(torch.float64), logits.detach().to(torch.float64))


@dataclass(frozen=True)
class GradientErrors:
    """Per-example error of g_p against g_64; every field is an (N,) CPU tensor."""

    gap: Tensor  # float64 Δ of the float64 logits, NaN if non-finite
    scaled_gap: Tensor  # float64 m = c·Δ of the loss (NaN for C&W/DLR)
    phase: Tensor  # int64 Phase of the float64 logits
    rel_err: Tensor
    cosine: Tensor
    sign_flip: Tensor
    zero_grad: Tensor
    zero_logit_grad: Tensor
    zero_k_term: Tensor  # ∂L/∂z_k exactly 0 in the dtype (k = label, or target)
    nonfinite_grad: Tensor
    n_nonfinite: Tensor  # int64 NaN/±Inf entries of g_p
    nonfinite_logits: Tensor  # float64 or dtype logits hold NaN/±Inf
    ref_zero: Tensor  # g_64 exactly zero

    def frame(self) -> pl.DataFrame:
        """One row per example, one column per field."""
        return pl.DataFrame({k: getattr(self, k).numpy() for k in self.__dataclass_fields__})


def top2(logits64: Tensor) -> Tensor:
    """(N,) Δ = z_π1 − z_π2 of float64 logits, NaN for rows with a NaN/±Inf logit."""
    vals = logits64.topk(2, dim=1).values
    gap = vals[:, 0] - vals[:, 1]
    return torch.where(nonfinite_rows(logits64), torch.nan, gap)


def scaled_gap(
    logits64: Tensor, labels: Tensor, loss: str | LossName, *, targets: Tensor | None = None,
    tstar_rule: str = "coef", dtype: torch.dtype = torch.float64,
) -> Tensor:
    """(N,) scaled top-2 gap m = c·Δ the loss's softmax sees [paper formulas, see module doc].

    CE: m = Δ; MIFPE: m = Δ·T/Δ_g; T-MIFPE: m = Δ·t*/Δ_g, with Δ_g the guarded gap of
    :func:`tmifpe.losses.scaling.guarded_gap` at ``dtype`` (so m = T or t*; m = Δ on a tie,
    where c = 1) and t* from :func:`optimal_t` (``dtype``: rule "cap" and the tie guard). C&W
    and DLR: NaN.
    """
    name = parse_loss(loss) if isinstance(loss, str) else loss
    gap = top2(logits64)
    if name is LossName.CE:
        return gap
    delta, tie = guarded_gap(logits64, dtype)
    if name is LossName.MIFPE:
        return torch.where(tie, gap, gap * MIFPE_T / delta)
    if name is LossName.TMIFPE:
        t = optimal_t(logits64, labels, targets=targets, rule=tstar_rule, dtype=dtype)
        return torch.where(tie, gap, gap * t / delta)
    return torch.full_like(gap, torch.nan)


def compare(
    g_p: InputGradient, g_64: InputGradient, labels: Tensor, loss: str | LossName, *,
    targets: Tensor | None = None, tstar_rule: str = "coef", dtype: torch.dtype = torch.float64,
) -> GradientErrors:
    """Per-example errors of ``g_p`` against the float64 reference ``g_64`` (module doc)."""
    a, b = g_p.grad, g_64.grad
    finite = torch.isfinite(a)
    n_bad = (~finite).sum(dim=1)
    bad = n_bad > 0
    a0 = torch.where(finite, a, 0.0)
    na, nb = a0.norm(dim=1), b.norm(dim=1)
    diff = (a0 - b).norm(dim=1)
    rel = torch.where(nb > 0, diff / nb.clamp(min=torch.finfo(torch.float64).tiny),
                      torch.where(na > 0, math.inf, 0.0))
    dot = (a0 * b).sum(dim=1)
    denom = (na * nb).clamp(min=torch.finfo(torch.float64).tiny)
    cos = torch.where((na > 0) & (nb > 0), dot / denom,
                      torch.where((na == 0) & (nb == 0), 1.0, 0.0))
    ref_nz = b != 0
    flips = ((torch.sign(a0) != torch.sign(b)) & ref_nz).sum(dim=1).to(torch.float64)
    n_ref = ref_nz.sum(dim=1)
    flip = torch.where(n_ref > 0, flips / n_ref.clamp(min=1), torch.nan)
    nan = torch.tensor(torch.nan, dtype=torch.float64)
    k = (labels if targets is None else targets).long()
    z64 = g_64.logits
    return GradientErrors(
        gap=top2(z64),
        scaled_gap=scaled_gap(z64, labels, loss, targets=targets, tstar_rule=tstar_rule,
                              dtype=dtype),
        phase=attack_phase(z64, labels, targets=targets),
        rel_err=torch.where(bad, nan, rel), cosine=torch.where(bad, nan, cos),
        sign_flip=torch.where(bad, nan, flip),
        zero_grad=(a == 0).all(dim=1), zero_logit_grad=(g_p.logit_grad == 0).all(dim=1),
        zero_k_term=g_p.logit_grad.gather(1, k[:, None]).squeeze(1) == 0,
        nonfinite_grad=bad, n_nonfinite=n_bad.to(torch.int64),
        nonfinite_logits=nonfinite_rows(z64) | nonfinite_rows(g_p.logits),
        ref_zero=(b == 0).all(dim=1),
    )


def gradient_errors(
    model: nn.Module, x: Tensor, labels: Tensor, loss: str | LossName, precision: Precision, *,
    targets: Tensor | None = None, tstar_rule: str = "coef",
) -> GradientErrors:
    """One-call form: g_p with ``PrecisionModel(model, precision)``, g_64 with a float64 copy."""
    fn = get_loss(loss, tstar_rule=tstar_rule)
    g_p = input_gradient(PrecisionModel(model, precision), x, labels, fn, targets=targets)
    g_64 = input_gradient(PrecisionModel(model, Precision.FP64), x, labels, fn, targets=targets)
    return compare(g_p, g_64, labels, loss, targets=targets, tstar_rule=tstar_rule,
                   dtype=precision.dtype)


# ---------------------------------------------------------------------------------------------
# Binning by the top-2 gap and per-bin summaries


def gap_bin_edges(precisions: Sequence[Precision]) -> tuple[float, ...]:
    """Sorted edges 0 < … < +inf: :data:`EXTRA_EDGES` and both thresholds of every precision.

    Bin i is [edges[i], edges[i+1]). Thresholds: ``gap_thresholds`` [derived, docs/theory.md §3].
    """
    edges = {0.0, *EXTRA_EDGES}
    for p in precisions:
        edges.update(gap_thresholds(p.dtype))
    return (*sorted(edges), math.inf)


def gap_bins(gap: Tensor, edges: Sequence[float]) -> Tensor:
    """(N,) int64 bin index of each gap (bin i = [edges[i], edges[i+1])), -1 for NaN/±Inf."""
    inner = torch.tensor(list(edges[1:-1]), dtype=torch.float64)
    idx = torch.bucketize(gap.to(torch.float64), inner, right=True)
    return torch.where(torch.isfinite(gap), idx, NONFINITE_BIN)


def _med(col: str) -> pl.Expr:
    return pl.col(col).fill_nan(None).median().alias(f"median_{col}")


def summarise_bins(examples: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Per (``keys``, bin) row of an example frame with ``bin`` from :func:`gap_bins`.

    count; n_nonfinite_grad / n_nonfinite_logits (flagged rows, included in count);
    frac_zero_grad, frac_zero_logit_grad, frac_zero_k_term (over all rows; flagged rows count
    as non-zero);
    medians of rel_err, cosine, sign_flip, gap, scaled_gap over the finite values.
    """
    return examples.group_by([*keys, "bin"]).agg(
        pl.len().cast(pl.Int64).alias("count"),
        pl.col("nonfinite_grad").sum().cast(pl.Int64).alias("n_nonfinite_grad"),
        pl.col("n_nonfinite").sum().cast(pl.Int64).alias("n_nonfinite_entries"),
        pl.col("nonfinite_logits").sum().cast(pl.Int64).alias("n_nonfinite_logits"),
        pl.col("zero_grad").mean().alias("frac_zero_grad"),
        pl.col("zero_logit_grad").mean().alias("frac_zero_logit_grad"),
        pl.col("zero_k_term").mean().alias("frac_zero_k_term"),
        _med("rel_err"), _med("cosine"), _med("sign_flip"), _med("gap"), _med("scaled_gap"),
    ).sort([*keys, "bin"])


# ---------------------------------------------------------------------------------------------
# Agreement with the theory


def ce_zero_gradient_verdict(
    gap: Tensor, zero_grad: Tensor, phase: Tensor, precision: Precision, *,
    zero_logit_grad: Tensor | None = None, min_points: int = MIN_POINTS,
    low_max: float = LOW_ZERO_MAX, high_min: float = HIGH_ZERO_MIN,
) -> dict[str, object]:
    """Does untargeted CE's exactly-zero input gradient follow the thresholds of theory §3?

    Points: phase (i) (y is top-1 of the float64 logits), finite Δ. (r, u) =
    ``gap_thresholds(dtype)`` [derived]. Theory: for Δ < r, 1 + S > 1 in the dtype, so
    ∂L/∂z_y ≠ 0 and the gradient is not zero; for Δ > u every gap exceeds u, every
    e^{−gap} underflows and the whole gradient is 0. The check [defined here]:
    "agrees" iff zero fraction below r ≤ ``low_max`` and above u ≥ ``high_min`` (and above >
    below); "too few points" if either side has fewer than ``min_points`` examples; else
    "disagrees". Between r and u theory only predicts a wrong direction: reported, not judged.
    With ``zero_logit_grad`` the same fractions for ∂L/∂z are reported as ``logit_zero_frac_*``
    (an input gradient can also vanish by underflow in the backward pass through the network).
    """
    r, u = gap_thresholds(precision.dtype)
    ok = torch.isfinite(gap) & (phase == int(Phase.UNTARGETED_UNSUCCESSFUL))
    sides = {"below": ok & (gap < r), "between": ok & (gap >= r) & (gap <= u),
             "above": ok & (gap > u)}
    out: dict[str, object] = {"threshold_round": round(r, 4), "threshold_underflow": round(u, 4)}
    out.update(_fractions(zero_grad, sides))
    if zero_logit_grad is not None:  # separates softmax underflow from backprop underflow
        logit = _fractions(zero_logit_grad, sides)
        out.update({f"logit_{k}": v for k, v in logit.items() if k.startswith("zero_frac")})
    out["verdict"] = _judge(out, min_points, low_max, high_min)
    out["rule"] = (f"phase (i) CE: zero fraction <= {low_max} for gap < {r:.2f} and >= {high_min}"
                   f" for gap > {u:.2f}, each side >= {min_points} points")
    return out


def ce_true_class_term_verdict(
    gap: Tensor, zero_k_term: Tensor, phase: Tensor, precision: Precision, num_classes: int, *,
    min_points: int = MIN_POINTS, low_max: float = LOW_ZERO_MAX, high_min: float = HIGH_ZERO_MIN,
) -> dict[str, object]:
    """Is CE's true-class term ∂L/∂z_y = p_y − 1 rounded to exactly 0 where theory §3 says?

    Phase (i), finite Δ. [derived] 1 − p_y = S/(1+S), S = Σ_{j≠y} e^{−(z_y − z_j)}, is lost
    iff 1 + S rounds to 1, i.e. S < u, r = −ln u. Since e^{−Δ} ≤ S ≤ (K−1)·e^{−Δ}: for Δ < r
    it is never lost; for Δ > r + ln(K−1) it is always lost; in between it depends on the other
    gaps (reported, not judged). The check [defined here]: "agrees" iff the zero fraction is
    ≤ ``low_max`` below r and ≥ ``high_min`` above r + ln(K−1); "too few points" if either side
    has fewer than ``min_points``; else "disagrees".
    """
    r = gap_thresholds(precision.dtype)[0]
    hi = r + math.log(num_classes - 1)
    ok = torch.isfinite(gap) & (phase == int(Phase.UNTARGETED_UNSUCCESSFUL))
    sides = {"below": ok & (gap < r), "between": ok & (gap >= r) & (gap <= hi),
             "above": ok & (gap > hi)}
    out: dict[str, object] = {"threshold_round": round(r, 4), "threshold_sure": round(hi, 4)}
    out.update(_fractions(zero_k_term, sides))
    out["verdict"] = _judge(out, min_points, low_max, high_min)
    out["rule"] = (f"phase (i) CE: dL/dz_y == 0 fraction <= {low_max} for gap < {r:.2f} and "
                   f">= {high_min} for gap > {hi:.2f}, each side >= {min_points} points")
    return out


def _fractions(flag: Tensor, sides: dict[str, Tensor]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, mask in sides.items():
        n = int(mask.sum())
        out[f"n_{name}"] = n
        out[f"zero_frac_{name}"] = round(float(flag[mask].double().mean()), 6) if n else None
    return out


def _judge(out: dict[str, object], min_points: int, low_max: float, high_min: float) -> str:
    """"too few points" / "agrees" (below ≤ low_max, above ≥ high_min, above > below) /
    "disagrees", from the ``_fractions`` entries of ``out``."""
    lo, hi = out["zero_frac_below"], out["zero_frac_above"]
    if not isinstance(lo, float) or not isinstance(hi, float):
        return "too few points"
    if min(out["n_below"], out["n_above"]) < min_points:  # type: ignore[call-overload]
        return "too few points"
    return "agrees" if lo <= low_max and hi >= high_min and hi > lo else "disagrees"


def scaled_loss_verdict(
    gap: Tensor, zero_grad: Tensor, *, min_points: int = MIN_POINTS, low_max: float = LOW_ZERO_MAX,
) -> dict[str, object]:
    """MIFPE/T-MIFPE keep the scaled gap at T or t* ≈ 1 [paper], below every threshold, so their
    gradient should never be exactly 0, even where CE's is. The check [defined here]: over all
    points with finite Δ > 0, "agrees" iff the zero fraction ≤ ``low_max``, and also separately
    over Δ > the smallest underflow threshold measured (17.33, fp16) when there are points."""
    ok = torch.isfinite(gap) & (gap > 0)
    n = int(ok.sum())
    frac = float(zero_grad[ok].double().mean()) if n else None
    out: dict[str, object] = {"n": n, "zero_frac": None if frac is None else round(frac, 6)}
    if n < min_points:
        out["verdict"] = "too few points"
    else:
        out["verdict"] = "agrees" if frac is not None and frac <= low_max else "disagrees"
    out["rule"] = f"zero fraction <= {low_max} over all points with gap > 0 (>= {min_points})"
    return out


# ---------------------------------------------------------------------------------------------
# t* trace of T-MIFPE inside a real attack


class TStarRecorder:
    """A LossFn that calls ``loss_fn`` unchanged and records, per call (= per PGD iteration),
    the phase (:func:`attack_phase`) and t* (:func:`optimal_t` with the loss's rule and the
    logits' dtype, exactly as ``tmifpe_loss`` computes it) of the rows it received, and
    ``used`` = y is top-1: ``run_pgd`` evaluates the loss on every live row but steps only with
    the rows not misclassified at that iterate (freeze-on-success); the others are frozen."""

    def __init__(self, loss_fn: LossFn, *, rule: str = "coef") -> None:
        self.loss_fn = loss_fn
        self.rule = rule
        self.calls: list[dict[str, Tensor]] = []

    def __call__(self, logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            z = logits.detach()
            self.calls.append({
                "phase": attack_phase(z, labels, targets=targets).cpu(),
                "t_star": optimal_t(z, labels, targets=targets, rule=self.rule,
                                    dtype=z.dtype).cpu(),
                "nonfinite": nonfinite_rows(z).cpu(),
                "tie": (top2(z.to(torch.float64)) == 0).cpu(),
                "used": (z.argmax(dim=1) == labels).cpu(),
            })
        return self.loss_fn(logits, labels, targets=targets)

    def frame(self, **constants: object) -> pl.DataFrame:
        """Long frame: one row per (call, row) with iteration = call index and ``constants``."""
        if self.calls:
            sizes = torch.tensor([c["phase"].shape[0] for c in self.calls])
            cols = {k: torch.cat([c[k] for c in self.calls]).numpy() for k in self.calls[0]}
            it = torch.repeat_interleave(torch.arange(len(self.calls)), sizes).numpy()
            frame = pl.DataFrame({"iteration": it, **cols})
        else:
            frame = pl.DataFrame(schema={"iteration": pl.Int64, "phase": pl.Int64,
                                         "t_star": pl.Float64, "nonfinite": pl.Boolean,
                                         "tie": pl.Boolean, "used": pl.Boolean})
        return frame.with_columns(pl.lit(v).alias(k) for k, v in constants.items())


def summarise_tstar(
    trace: pl.DataFrame, keys: Sequence[str] = ("targeted", "used"),
) -> pl.DataFrame:
    """t* quantiles (q000…q100, ``TSTAR_QUANTILES``) and mean per (``keys``, phase), over all
    iterations (iteration null) and per iteration; counts of Δ = 0 and non-finite rows (t* = 1
    there, see ``tstar.optimal_t``)."""
    aggs = [pl.len().cast(pl.Int64).alias("count"),
            pl.col("tie").sum().cast(pl.Int64).alias("n_tie"),
            pl.col("nonfinite").sum().cast(pl.Int64).alias("n_nonfinite_logits"),
            pl.col("t_star").mean().alias("mean"),
            *(pl.col("t_star").quantile(q, interpolation="linear").alias(f"q{round(q * 100):03d}")
              for q in TSTAR_QUANTILES)]
    every = trace.group_by([*keys, "phase"]).agg(aggs).with_columns(
        pl.lit(None, dtype=pl.Int64).alias("iteration"))
    per = trace.group_by([*keys, "iteration", "phase"]).agg(aggs)
    cols = [*keys, "iteration", "phase", "count", "n_tie", "n_nonfinite_logits", "mean",
            *(f"q{round(q * 100):03d}" for q in TSTAR_QUANTILES)]
    frame = pl.concat([every.select(cols), per.select(cols)])
    return frame.sort([*keys, "iteration", "phase"], nulls_last=False)


# ---------------------------------------------------------------------------------------------
# The measurement of the diagnostics stage: points, gradients, bins, verdicts, t* trace

MEASURED_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP32)
# CPU fp16 convolutions are ~15x slower than fp32: fp16 is measured on a gap-stratified subset.
MAX_POINTS = {Precision.FP16: 120}
DEFAULT_TARGETS = 3  # targeted t* trace when the suite has no fp32 n_targets


POINT_STEPS = (5, 10, 20)  # PGD iterates diagnosed besides the clean points
TRACE_STEPS = 20  # budget of the T-MIFPE t* trace


@dataclass(frozen=True)
class DiagnosticsPlan:
    """What the stage measures; :meth:`from_suite` reads it from the active suite.

    ``point_steps``: PGD budgets whose final points are diagnosed (besides the clean points);
    ``trace_steps``: budget of the T-MIFPE t* trace; ``max_points``: per-precision subset size.
    """

    eps: float
    schedule: Schedule
    momentum: float
    seed: int
    tstar_rule: str
    losses: tuple[LossName, ...]
    precisions: tuple[Precision, ...]
    point_steps: tuple[int, ...]
    trace_steps: int
    n_targets: int
    max_points: tuple[tuple[Precision, int], ...] = tuple(MAX_POINTS.items())

    @classmethod
    def from_suite(cls, suite: SuiteParams, model: str) -> DiagnosticsPlan:
        """eps of the model's dataset, attack schedule/momentum/seed/t* rule, the suite's losses,
        the measured precisions of the suite (fp16/bf16/fp32; fp64 is the reference), PGD point
        sets after ``POINT_STEPS`` steps, the t* trace over ``TRACE_STEPS`` steps. Fixed step
        counts, not the suite's budgets: adding a budget must not re-run the diagnostics."""
        _, ds = suite.dataset_of(model)
        precisions = tuple(p for p in MEASURED_PRECISIONS if p in suite.precisions)
        fp32 = suite.precisions.get(Precision.FP32)
        return cls(eps=ds.eps, schedule=suite.attack.schedule, momentum=suite.attack.momentum,
                   seed=suite.attack.seed, tstar_rule=suite.attack.tstar_rule,
                   losses=tuple(suite.losses), precisions=precisions or (Precision.FP32,),
                   point_steps=POINT_STEPS, trace_steps=TRACE_STEPS,
                   n_targets=fp32.n_targets if fp32 and fp32.n_targets else DEFAULT_TARGETS)

    def describe(self) -> dict[str, object]:
        return {"eps": self.eps, "schedule": self.schedule.value, "momentum": self.momentum,
                "seed": self.seed, "tstar_rule": self.tstar_rule,
                "losses": [n.value for n in self.losses],
                "precisions": [p.value for p in self.precisions],
                "point_steps": list(self.point_steps), "trace_steps": self.trace_steps,
                "n_targets": self.n_targets,
                "max_points": {p.value: n for p, n in self.max_points}}


@dataclass(frozen=True)
class PointSet:
    name: str  # "clean" or "pgd<k>"
    step: int  # 0 for clean
    x: Tensor
    y: Tensor
    target: Tensor  # clean rank-2 class (the targeted diagnostic's y_t)
    example: Tensor  # index into the evaluation points
    n_broken: int


def stratified_subset(gap: Tensor, m: int) -> Tensor:
    """(≤m,) sorted indices: every (n/m)-th example in order of ``gap`` (NaN last), so the
    subset spans the whole gap range; all indices when m ≥ n."""
    n = gap.shape[0]
    if m >= n:
        return torch.arange(n)
    order = torch.sort(torch.nan_to_num(gap, nan=math.inf), stable=True).indices
    return order[(torch.arange(m) * n) // m].sort().values


def point_sets(model: nn.Module, x: Tensor, y: Tensor, plan: DiagnosticsPlan) -> list[PointSet]:
    """Clean points (all) and, per k in ``plan.point_steps``, the final points of fp32 CE
    untargeted PGD with budget k on the clean-correct points: x_adv is the first misclassified
    iterate of an example broken within k steps ("just broken") and the last iterate of one
    still robust. Same seed, so every budget starts from the same random point."""
    ref32 = PrecisionModel(model, Precision.FP32)
    with torch.no_grad():
        clean = ref32(x)
    correct = clean.argmax(dim=1) == y
    target = attack_targets(clean, 1)[:, 0]
    ids = torch.arange(x.shape[0])
    sets = [PointSet("clean", 0, x, y, target, ids, int((~correct).sum()))]
    for k in plan.point_steps:
        cfg = PGDConfig(eps=plan.eps, steps=k, schedule=plan.schedule, momentum=plan.momentum,
                        restarts=1, seed=plan.seed)
        res = run_pgd(ref32, x, y, get_loss(LossName.CE), cfg, attack_mask=correct,
                      generator=torch.Generator().manual_seed(plan.seed))
        sets.append(PointSet(f"pgd{k}", k, res.x_adv[correct], y[correct], target[correct],
                             ids[correct], int(res.success[correct].sum())))
    return sets


def _take(g: InputGradient, rows: Tensor) -> InputGradient:
    return InputGradient(g.grad[rows], g.logit_grad[rows], g.logits[rows])


def device_name(device: torch.device) -> str:
    """``"cpu"``, or e.g. ``"cuda:0 (NVIDIA A100-SXM4-40GB)"``: where a measurement ran."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def measure(
    model: nn.Module, x: Tensor, y: Tensor, plan: DiagnosticsPlan,
) -> tuple[pl.DataFrame, dict[str, object]]:
    """Per-example gradient errors for every point set × loss × (un)targeted × precision.

    The float64 reference runs once per point set × loss × targeted on all points; a precision
    with a ``max_points`` cap runs on :func:`stratified_subset` of the clean float64 gaps (the
    same examples in every point set). Returns the example frame and a description of the
    points (sizes, broken counts, subset) and of the device and torch version measured on (the
    thresholds are device-dependent, ``benchmarks/device_check.py``) for the stage's JSON.
    """
    sets = point_sets(model, x, y, plan)
    models = {p: PrecisionModel(model, p) for p in (*plan.precisions, Precision.FP64)}
    with torch.no_grad():
        clean64 = models[Precision.FP64](x.to(torch.float64)).to(torch.float64)
    clean_gap = top2(clean64)
    caps = dict(plan.max_points)
    subsets = {p: stratified_subset(clean_gap, caps[p]) for p in plan.precisions if p in caps}
    frames = []
    for ps in sets:
        for loss in plan.losses:
            fn = get_loss(loss, tstar_rule=plan.tstar_rule)
            for targeted in (False, True):
                tgt = ps.target if targeted else None
                g64 = input_gradient(models[Precision.FP64], ps.x, ps.y, fn, targets=tgt)
                for p in plan.precisions:
                    rows = (torch.isin(ps.example, subsets[p]).nonzero().squeeze(1)
                            if p in subsets else torch.arange(ps.x.shape[0]))
                    t_rows = None if tgt is None else tgt[rows]
                    g_p = input_gradient(models[p], ps.x[rows], ps.y[rows], fn, targets=t_rows)
                    err = compare(g_p, _take(g64, rows), ps.y[rows], loss, targets=t_rows,
                                  tstar_rule=plan.tstar_rule, dtype=p.dtype)
                    frames.append(err.frame().with_columns(
                        pl.lit(ps.name).alias("point_set"),
                        pl.lit(ps.step, dtype=pl.Int64).alias("point_step"),
                        pl.lit(loss.value).alias("loss"), pl.lit(targeted).alias("targeted"),
                        pl.lit(p.value).alias("precision"),
                        pl.Series("example", ps.example[rows].numpy()),
                        pl.lit(rows.shape[0], dtype=pl.Int64).alias("n_points")))
    info = {
        "device": device_name(x.device), "torch_version": torch.__version__,
        "num_classes": int(clean64.shape[1]),
        "point_sets": {ps.name: {"step": ps.step, "n_points": int(ps.x.shape[0]),
                                 "n_broken": ps.n_broken} for ps in sets},
        "subsets": {p.value: {"n_points": int(s.shape[0]),
                              "rule": "every (n/m)-th clean point by float64 top-2 gap"}
                    for p, s in subsets.items()},
        "targets": "clean fp32 rank-2 class (attack_targets(clean, 1))",
    }
    return pl.concat(frames), info


BIN_KEYS = ("loss", "targeted", "precision", "point_set", "point_step", "phase")


def bin_table(examples: pl.DataFrame, edges: Sequence[float]) -> pl.DataFrame:
    """Per-bin rows per point set, plus point_set "all" (point_step null) pooling every set;
    bin ranges [bin_lo, bin_hi) from ``edges`` (null for the non-finite bin)."""
    ex = examples.with_columns(
        pl.Series("bin", gap_bins(torch.from_numpy(examples["gap"].to_numpy()), edges).numpy()))
    per = summarise_bins(ex, BIN_KEYS).join(
        ex.group_by(BIN_KEYS).agg(pl.len().cast(pl.Int64).alias("n_points")), on=BIN_KEYS)
    pooled = ex.with_columns(pl.lit("all").alias("point_set"),
                             pl.lit(None, dtype=pl.Int64).alias("point_step"))
    allrows = summarise_bins(pooled, BIN_KEYS).join(
        pooled.group_by(BIN_KEYS).agg(pl.len().cast(pl.Int64).alias("n_points")),
        on=BIN_KEYS, nulls_equal=True)
    lo = {i: edges[i] for i in range(len(edges) - 1)}
    hi = {i: edges[i + 1] for i in range(len(edges) - 1)}
    thr = {p.value: gap_thresholds(p.dtype) for p in Precision}
    frame = pl.concat([per, allrows.select(per.columns)]).with_columns(
        pl.col("bin").replace_strict(lo, default=None, return_dtype=pl.Float64).alias("bin_lo"),
        pl.col("bin").replace_strict(hi, default=None, return_dtype=pl.Float64).alias("bin_hi"),
        pl.col("precision").replace_strict({k: v[0] for k, v in thr.items()},
                                           return_dtype=pl.Float64).alias("threshold_round"),
        pl.col("precision").replace_strict({k: v[1] for k, v in thr.items()},
                                           return_dtype=pl.Float64).alias("threshold_underflow"))
    return frame.sort(["loss", "targeted", "precision", "point_step", "phase", "bin"],
                      nulls_last=True)


def verdicts(
    examples: pl.DataFrame, precisions: Sequence[Precision], num_classes: int,
) -> list[dict[str, object]]:
    """Agreement checks on all point sets pooled: :func:`ce_zero_gradient_verdict` and
    :func:`ce_true_class_term_verdict` per precision, :func:`scaled_loss_verdict` per
    precision × MIFPE/T-MIFPE × (un)targeted."""

    def col(frame: pl.DataFrame, name: str, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(frame[name].to_numpy().copy()).to(dtype)

    out: list[dict[str, object]] = []
    for p in precisions:
        f = examples.filter((pl.col("loss") == "ce") & ~pl.col("targeted")
                            & (pl.col("precision") == p.value))
        if f.height:
            gap, phase = col(f, "gap", torch.float64), col(f, "phase", torch.int64)
            v = ce_zero_gradient_verdict(gap, col(f, "zero_grad", torch.bool), phase, p,
                                         zero_logit_grad=col(f, "zero_logit_grad", torch.bool))
            out.append({"check": "ce_zero_gradient", "loss": "ce", "targeted": False,
                        "precision": p.value, **v})
            v = ce_true_class_term_verdict(gap, col(f, "zero_k_term", torch.bool), phase, p,
                                           num_classes)
            out.append({"check": "ce_true_class_term", "loss": "ce", "targeted": False,
                        "precision": p.value, **v})
        for loss in ("mifpe", "tmifpe"):
            for targeted in (False, True):
                f = examples.filter((pl.col("loss") == loss) & (pl.col("targeted") == targeted)
                                    & (pl.col("precision") == p.value))
                if f.height:
                    v = scaled_loss_verdict(col(f, "gap", torch.float64),
                                            col(f, "zero_grad", torch.bool))
                    out.append({"check": "scaled_no_zero_gradient", "loss": loss,
                                "targeted": targeted, "precision": p.value, **v})
    return out


def tstar_trace(model: nn.Module, x: Tensor, y: Tensor, plan: DiagnosticsPlan) -> pl.DataFrame:
    """Long t* trace of fp32 T-MIFPE PGD (budget ``plan.trace_steps``) on the clean-correct
    points: untargeted, then one run per target (clean ranks 2…n+1) on the still-robust points,
    sharing one generator like :func:`run_pgd` does. iteration = index of the loss call within
    a run; target_rank 0 = untargeted."""
    ref32 = PrecisionModel(model, Precision.FP32)
    with torch.no_grad():
        clean = ref32(x)
    correct = clean.argmax(dim=1) == y
    loss = get_loss(LossName.TMIFPE, tstar_rule=plan.tstar_rule)
    frames = []
    cfg = PGDConfig(eps=plan.eps, steps=plan.trace_steps, schedule=plan.schedule,
                    momentum=plan.momentum, restarts=1, seed=plan.seed)
    rec = TStarRecorder(loss, rule=plan.tstar_rule)
    run_pgd(ref32, x, y, rec, cfg, attack_mask=correct,
            generator=torch.Generator().manual_seed(plan.seed))
    frames.append(rec.frame(targeted=False, target_rank=0))
    targets = attack_targets(clean, plan.n_targets)
    cfg_t = PGDConfig(eps=plan.eps, steps=plan.trace_steps, schedule=plan.schedule,
                      momentum=plan.momentum, restarts=1, targeted=True, n_targets=1,
                      seed=plan.seed)
    gen = torch.Generator().manual_seed(plan.seed)
    robust = correct.clone()
    for j in range(targets.shape[1]):
        rec = TStarRecorder(loss, rule=plan.tstar_rule)
        res = run_pgd(ref32, x, y, rec, cfg_t, attack_mask=robust, targets=targets[:, j : j + 1],
                      generator=gen)
        robust &= ~res.success
        frames.append(rec.frame(targeted=True, target_rank=j + 2))
    return pl.concat(frames, how="vertical_relaxed")
