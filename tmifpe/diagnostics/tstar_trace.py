"""t* of T-MIFPE inside a real attack: a recording loss, the trace of fp32 PGD runs and its
quantile summary."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.diagnostics.gradients import top2
from tmifpe.diagnostics.plan import DiagnosticsPlan
from tmifpe.losses import LossFn, LossName, get_loss
from tmifpe.losses.tmifpe.tstar import attack_phase, nonfinite_rows, optimal_t
from tmifpe.precision import Precision, PrecisionModel

TSTAR_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


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
