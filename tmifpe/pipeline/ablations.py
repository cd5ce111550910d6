"""Ablations of T-MIFPE: phase detection, the phase (ii)/(iii) rule, and the attack engine.

For one model, on the suite's evaluation points and eps, untargeted and targeted (the suite's
n_targets), at each of :data:`BUDGETS` and :data:`PRECISIONS`, every :class:`Variant` is run and
its verdict re-verified by :func:`tmifpe.verify.verify` (fresh fp32 pass, inside eps-ball ∩ [0,1]):

(a) phase detection: T-MIFPE with the real phase of every example ("auto") against t* computed
    as if every example were still unsuccessful, or already successful (:func:`forced_tstar`);
(b) the phase (ii)/(iii) rule of t*: "mifpe", "coef", "cap" (``tmifpe.losses.tmifpe.tstar``);
(c) the engine: CE and T-MIFPE inside :func:`~tmifpe.attacks.pgd.run_pgd` (the suite's PGD) and
    inside :func:`~tmifpe.attacks.apgd.run_apgd` (APGD);
(d) loss × progress measure in APGD: CE and T-MIFPE, each with its step size controlled by the
    loss value and by the C&W margin (:class:`~tmifpe.attacks.apgd.Progress`), so that "APGD-CE
    vs APGD-T-MIFPE" separates the loss from the step-size control;
(e) MIFPE's temperature: T = 1 (the paper) and T = 10 (its released code's default), PGD.

With freeze-on-success only the t* of *unsuccessful* examples ever reaches a gradient at fp32
(phase (ii) rows and, since targeted runs also freeze on any misclassification, phase (iv) rows
are frozen; at fp16/bf16 a dtype-only hit is attacked on in phase (ii)/(iv), see
``tmifpe.attacks.runs.confirmed_hits``). So at fp32 forcing "unsuccessful" must reproduce "auto"
exactly: a built-in check of the bookkeeping. Forcing "successful" is the wrong phase for every
attacked example.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from tmifpe.attacks.apgd import APGDConfig, Progress, run_apgd
from tmifpe.attacks.pgd import PGDConfig, PGDResult, attack_targets, run_pgd
from tmifpe.attacks.runs import batch_seed
from tmifpe.choices import check_choice
from tmifpe.data.sources import load_eval_points
from tmifpe.losses import LossFn, get_loss
from tmifpe.losses.mifpe import MIFPE_T, mifpe_loss
from tmifpe.losses.scaling import check_labels, scale_logits
from tmifpe.losses.tmifpe.tstar import PHASE23_RULES, optimal_t
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.config import SuiteParams
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.runtime import resolve_device
from tmifpe.storage import write_json, write_parquet
from tmifpe.verify import verify

# Iterations per run: two of the default suite's budgets. 100 would be APGD's standard length,
# but its targeted runs alone take ~45 s on digits_at single-threaded (60 s budget per model).
BUDGETS = (20, 50)
PRECISIONS = (Precision.FP32,)  # bf16 too would double the ~45 s per model
PHASE_MODES = ("auto", "unsuccessful", "successful")
ENGINES = ("pgd", "apgd")
PROGRESS = tuple(p.value for p in Progress)  # APGD's step-size control: "loss", "margin"
MIFPE_TEMPERATURES = (MIFPE_T, 10.0)  # the paper's T = 1, the released code's default T = 10
NA = "-"  # rule / phase_mode / progress of variants they do not apply to

# The losses the variants run: the ablations stage depends on these loss packages only
# (tmifpe.pipeline.code_deps.LOSS_SCOPES; :func:`variants` checks it).
ABLATION_LOSSES = ("ce", "mifpe", "tmifpe")


@dataclass(frozen=True)
class Variant:
    """One attack configuration of the ablation grid."""

    engine: str  # "pgd" | "apgd"
    loss: str  # "ce" | "mifpe" | "tmifpe"
    rule: str = NA  # phase (ii)/(iii) rule of T-MIFPE
    phase_mode: str = NA  # "auto" | "unsuccessful" | "successful" (T-MIFPE only)
    progress: str = NA  # APGD's progress measure, "loss" | "margin" (APGD only)
    temperature: float | None = None  # MIFPE's T (MIFPE only)

    def __post_init__(self) -> None:
        check_choice(self.engine, ENGINES, "engine")
        check_choice(self.loss, ABLATION_LOSSES, "ablation loss")
        if (self.engine == "apgd") != (self.progress in PROGRESS):
            raise ValueError(f"variant {self.engine}/{self.loss}: progress {self.progress!r}; "
                             f"expected one of {', '.join(PROGRESS)} for apgd, {NA!r} for pgd")
        if (self.loss == "mifpe") != (self.temperature is not None):
            raise ValueError(f"variant {self.engine}/{self.loss}: temperature "
                             f"{self.temperature!r}; expected a number for mifpe only")

    @property
    def name(self) -> str:
        """e.g. ``pgd/ce``, ``apgd/ce/margin``, ``pgd/tmifpe/coef/auto``, ``pgd/mifpe/T10``."""
        parts = [self.engine, self.loss]
        if self.loss == "tmifpe":
            parts += [self.rule, self.phase_mode]
        if self.temperature is not None:
            parts.append(f"T{self.temperature:g}")
        if self.engine == "apgd":
            parts.append(self.progress)
        return "/".join(parts)


def variants(rule: str = "coef") -> tuple[Variant, ...]:
    """The grid, sorted by name: (a) phase modes at ``rule``, (b) every rule with auto phases,
    (c, d) CE and T-MIFPE (``rule``, auto) in PGD and in APGD with either progress measure,
    (e) MIFPE at each of :data:`MIFPE_TEMPERATURES` in PGD."""
    check_choice(rule, PHASE23_RULES, "phase (ii)/(iii) rule")
    grid = {Variant("pgd", "tmifpe", rule, m) for m in PHASE_MODES}
    grid |= {Variant("pgd", "tmifpe", r, "auto") for r in PHASE23_RULES}
    grid |= {Variant("pgd", "ce"), Variant("pgd", "tmifpe", rule, "auto")}
    grid |= {Variant("apgd", "ce", progress=p) for p in PROGRESS}
    grid |= {Variant("apgd", "tmifpe", rule, "auto", progress=p) for p in PROGRESS}
    grid |= {Variant("pgd", "mifpe", temperature=t) for t in MIFPE_TEMPERATURES}
    return tuple(sorted(grid, key=lambda v: v.name))


def forced_tstar(
    logits: Tensor,
    labels: Tensor,
    *,
    targets: Tensor | None = None,
    mode: str = "auto",
    rule: str = "coef",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(N,) float64 t* with the phase forced by ``mode``, built from ``tstar.optimal_t`` only.

    "auto": the real phase (= ``optimal_t``). "unsuccessful": phase (i) (untargeted) or (iii)
    (targeted) for every row; "successful": (ii) or (iv). [derived here] The (i)/(iv) value
    t* = argmax h(t) depends on the logits only (h has no k), so it is ``optimal_t`` with k set
    to the top-1 class. The (ii)/(iii) rules need k below the top; a row whose k *is* on top is
    evaluated at the phase boundary, with k replaced by the runner-up π2 (a_k = 1): "mifpe"
    t = 1, "coef" argmax (t/Δ)·p_π2, "cap" t = τ(dtype). Rows already in the forced phase get
    exactly ``optimal_t``'s value.
    """
    check_choice(mode, PHASE_MODES, "phase mode")
    check_labels(logits, labels, targets)
    if mode == "auto":
        return optimal_t(logits, labels, targets=targets, rule=rule, dtype=dtype)
    k = labels if targets is None else targets
    top2 = logits.detach().topk(2, dim=1).indices  # (N, K) -> (N, 2), optimal_t's ranking
    want_top = (mode == "unsuccessful") == (targets is None)  # phases (i) and (iv)
    if want_top:
        return optimal_t(logits, top2[:, 0], rule=rule, dtype=dtype)
    k_below = torch.where(top2[:, 0] == k, top2[:, 1], k)
    return optimal_t(logits, k_below, rule=rule, dtype=dtype)


def forced_phase_loss(mode: str, rule: str = "coef") -> LossFn:
    """T-MIFPE [paper] CE((t/Δ)·z, y) (targeted −CE(·, y_t)) with t = :func:`forced_tstar`,
    t and Δ detached, computed like ``tmifpe.losses.tmifpe.tmifpe_loss``; ``mode`` "auto"
    reproduces that loss."""
    check_choice(mode, PHASE_MODES, "phase mode")
    check_choice(rule, PHASE23_RULES, "phase (ii)/(iii) rule")

    def loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
        t = forced_tstar(logits, labels, targets=targets, mode=mode, rule=rule,
                         dtype=logits.dtype)
        scaled = scale_logits(logits, t)  # (z − max z)·t/Δ, as tmifpe_loss
        if targets is None:
            return F.cross_entropy(scaled, labels, reduction="none")
        return -F.cross_entropy(scaled, targets, reduction="none")

    return loss


def variant_loss(v: Variant) -> LossFn:
    """The loss function of a variant: the registry's CE and T-MIFPE (real phases), MIFPE at the
    variant's T, the phase wrapper for a forced phase."""
    if v.loss == "ce":
        return get_loss("ce")
    if v.loss == "mifpe":
        return partial(mifpe_loss, temperature=v.temperature)
    if v.phase_mode == "auto":
        return get_loss("tmifpe", tstar_rule=v.rule)
    return forced_phase_loss(v.phase_mode, v.rule)


def run_variant(
    v: Variant, model: PrecisionModel, x: Tensor, y: Tensor, mask: Tensor,
    targets: Tensor | None, *, eps: float, budget: int, suite: SuiteParams, seed: int,
) -> PGDResult:
    """One attack of variant ``v`` on the points ``mask`` (the suite's PGD or APGD settings)."""
    ap, targeted = suite.attack, targets is not None
    n_targets = 0 if targets is None else targets.shape[1]
    gen = torch.Generator().manual_seed(seed)
    if v.engine == "pgd":
        cfg = PGDConfig(eps=eps, steps=budget, schedule=ap.schedule, momentum=ap.momentum,
                        restarts=ap.restarts, targeted=targeted, n_targets=n_targets,
                        seed=ap.seed)
        return run_pgd(model, x, y, variant_loss(v), cfg, attack_mask=mask, targets=targets,
                       generator=gen)
    acfg = APGDConfig(eps=eps, steps=budget, restarts=ap.restarts, targeted=targeted,
                      n_targets=n_targets, progress=Progress(v.progress), seed=ap.seed)
    return run_apgd(model, x, y, variant_loss(v), acfg, attack_mask=mask, targets=targets,
                    generator=gen)


def run_ablations(
    suite: SuiteParams,
    model_key: str,
    *,
    data_path: Path,
    out: Path,
    timing_out: Path,
    budgets: Sequence[int] = BUDGETS,
    precisions: Sequence[Precision] = PRECISIONS,
    grid: Sequence[Variant] | None = None,
) -> pl.DataFrame:
    """Run every variant × targeted × precision × budget; write the Parquet (deterministic)
    and the wall times (``timing_out``, JSON) atomically."""
    if model_key not in suite.models:
        raise ValueError(f"model {model_key!r} is not in the models of suite {suite.name!r}: "
                         f"{', '.join(suite.models)}")
    grid = variants(suite.attack.tstar_rule) if grid is None else tuple(grid)
    _, ds = suite.dataset_of(model_key)
    x_all, y_all = load_eval_points(data_path, ds.n_examples)
    device = resolve_device(suite.device)
    x_all, y_all = x_all.to(device), y_all.to(device)
    net = load_model(model_key, *suite.model_and_dataset(model_key)).to(device)
    ref32, ref64 = PrecisionModel(net, Precision.FP32), PrecisionModel(net, Precision.FP64)
    rows, timings = [], []
    for prec in precisions:
        attack_model = PrecisionModel(net, prec, reference=ref32)  # ref32 confirms successes
        if prec not in suite.precisions:
            raise ValueError(f"precision {prec.value} is not in the precisions of suite "
                             f"{suite.name!r}")
        n_targets = suite.precisions[prec].n_targets  # the suite's targets at that dtype
        for targeted in (False, True) if n_targets > 0 else (False,):
            for budget in budgets:
                for v in grid:
                    t0 = time.perf_counter()
                    stats = _run_batches(v, attack_model, (ref32, ref64), x_all, y_all,
                                         targeted, n_targets, ds.eps, budget, suite)
                    wall = time.perf_counter() - t0
                    rows.append({"model": model_key, "variant": v.name, "engine": v.engine,
                                 "loss": v.loss, "rule": v.rule, "phase_mode": v.phase_mode,
                                 "progress": v.progress, "mifpe_t": v.temperature,
                                 "targeted": targeted,
                                 "precision": prec.value, "budget": budget, **stats})
                    timings.append({"variant": v.name, "targeted": targeted,
                                    "precision": prec.value, "budget": budget,
                                    "wall_time_s": round(wall, 4)})
    frame = _frame(rows, suite, ds.eps)
    write_parquet(frame, out)
    write_json({"model": model_key, "total_wall_time_s": round(sum(t["wall_time_s"]
                                                                   for t in timings), 3),
                "runs": timings}, timing_out)
    return frame


def _run_batches(
    v: Variant, model: PrecisionModel, refs: tuple[PrecisionModel, PrecisionModel], x_all: Tensor,
    y_all: Tensor, targeted: bool, n_targets: int, eps: float, budget: int, suite: SuiteParams,
) -> dict[str, float | int]:
    """Attack all points batch by batch; counts re-verified by fresh fp32 passes."""
    ref32, ref64 = refs
    bs = suite.attack.batch_size
    c = dict.fromkeys(("n_points", "n_clean", "robust_count", "n_attack_success",
                       "n_false_success", "n_invalid", "forward", "backward", "zero_grad_steps",
                       "nonfinite_steps", "n_targets"), 0)
    for b, start in enumerate(range(0, x_all.shape[0], bs)):
        x, y = x_all[start : start + bs], y_all[start : start + bs]
        with torch.no_grad():
            clean_logits = ref32(x)
        correct = clean_logits.argmax(dim=1) == y
        targets = attack_targets(clean_logits, n_targets) if targeted else None
        res = run_variant(v, model, x, y, correct.cpu(), targets, eps=eps, budget=budget,
                          suite=suite, seed=batch_seed(suite.attack.seed, targeted, b))
        ver = verify(ref32, ref64, x, res.x_adv.to(x.device), y, eps)
        broken, correct = ver.broken(y).cpu(), correct.cpu()
        valid = ver.valid.cpu()
        c["n_points"] += x.shape[0]
        c["n_clean"] += int(correct.sum())
        c["robust_count"] += int((correct & ~broken).sum())
        c["n_attack_success"] += int(res.success.sum())
        c["n_false_success"] += int((res.success & ~broken).sum())
        c["n_invalid"] += int((correct & ~valid).sum())
        c["forward"] += int(res.n_forward.sum())
        c["backward"] += int(res.n_backward.sum())
        c["zero_grad_steps"] += int(res.zero_grad_steps.sum())
        c["nonfinite_steps"] += int(res.nonfinite_steps.sum())
        c["n_targets"] = 0 if targets is None else targets.shape[1]
    return c


def _frame(rows: list[dict], suite: SuiteParams, eps: float) -> pl.DataFrame:
    """Rows -> sorted frame; robust accuracy over all points, passes per attacked point."""
    frame = pl.DataFrame(rows).with_columns(
        robust_acc=pl.col("robust_count") / pl.col("n_points"),
        mean_forward=pl.col("forward") / pl.max_horizontal(pl.col("n_clean"), 1),
        mean_backward=pl.col("backward") / pl.max_horizontal(pl.col("n_clean"), 1),
        eps=pl.lit(eps), seed=pl.lit(suite.attack.seed),
    )
    order = ["model", "variant", "engine", "loss", "rule", "phase_mode", "progress", "mifpe_t",
             "targeted", "precision", "budget", "n_targets", "eps", "seed", "n_points",
             "n_clean", "robust_acc", "robust_count", "n_attack_success", "n_false_success",
             "n_invalid", "mean_forward", "mean_backward", "zero_grad_steps", "nonfinite_steps"]
    ints = [c for c in order if c.startswith("n_") or c in ("budget", "robust_count", "seed",
                                                              "zero_grad_steps",
                                                              "nonfinite_steps")]
    frame = frame.select(order).with_columns(*(pl.col(c).cast(pl.Int64) for c in ints),
                                             pl.col("mifpe_t").cast(pl.Float64))
    return frame.sort(["model", "precision", "targeted", "budget", "variant"])
