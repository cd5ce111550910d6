"""What the diagnostics measure (the plan), on which points (clean and PGD iterates), and the
measurement itself: per-example gradient errors for every point set × loss × precision."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.attacks.schedule import Schedule
from tmifpe.diagnostics.gradients import compare, input_gradient, take_rows, top2
from tmifpe.losses import LossName, get_loss
from tmifpe.precision import Precision, PrecisionModel

MEASURED_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP32, Precision.AMP_FP16,
                       Precision.AMP_BF16)
# CPU fp16 convolutions are ~15x slower than fp32, bf16 ones as slow on CPUs without native bf16
# (benchmarks/results/cold_repro.avx2.json: the diagnostics were the second-longest stage kind
# there): every precision but fp32 is measured on a gap-stratified subset.
MAX_POINTS = {Precision.FP16: 120, Precision.BF16: 120, Precision.AMP_FP16: 120,
              Precision.AMP_BF16: 120}
DEFAULT_TARGETS = 3  # targeted t* trace when the suite has no fp32 n_targets
POINT_STEPS = (5, 10, 20)  # PGD iterates diagnosed besides the clean points
TRACE_STEPS = 20  # budget of the T-MIFPE t* trace


@dataclass(frozen=True)
class DiagnosticsPlan:
    """What the diagnostics measure (the stage reads it from the active suite:
    :func:`tmifpe.pipeline.diagnostics_cell.plan_from_suite`).

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
                    err = compare(g_p, take_rows(g64, rows), ps.y[rows], loss, targets=t_rows,
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
