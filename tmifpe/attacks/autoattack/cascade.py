"""Standard AutoAttack (Linf) via pyautoattack, run stage by stage with per-example bookkeeping.

[pyautoattack 0.2.0 = fra31/auto-attack a392200] ``run_standard_evaluation`` returns only the
final points. Here ``pyautoattack.AutoAttack(version="standard")`` builds the exactly-configured
attack objects and the cascade is run by :func:`run_autoattack`, mirroring the library loop:
APGD-CE, APGD-T, FAB-T, Square in order, each only on the points still robust, each from the
clean point, in batches of ``batch_size`` taken over the points robust when the attack starts,
with the same attribute assignments and seeds. Deliberate differences:

- "broken" is decided by us: the returned point must pass :func:`tmifpe.verify.in_threat_model`
  and a fresh fp32 forward pass must give finite logits whose argmax is not the label (the
  argmax of an all-NaN row is 0: a NaN is no misclassification). Float32 rounding of the ball's
  edge is repaired first (:mod:`.snapping`, ``snapped`` records it). A valid returned point
  with non-finite logits is kept as the example's ``x_adv`` (``nonfinite``), unless a later
  attack breaks the example, so the verification reports it; the example stays robust.
- clean-correct needs finite clean logits.
- [derived here] with K classes APGD-T and FAB-T use ``min(9, K − 1)`` targets (the library only
  warns and then indexes past the logits for K < 10); K < 4 is rejected (targeted DLR needs z_π4).
- the caller's RNG state (CPU, and the CUDA device used) is restored afterwards (the library
  reseeds it in every ``perturb``).

Cost accounting is measured (:mod:`.counting`). Counted: the attacks' calls and the
verification forward after each attack (the library's loop makes the same call); not counted:
the clean pass, the library's input checks, the final audit. Worst case per point for K ≥ 10:
1,910 gradient evaluations (101 per APGD run: start + 100 steps; 100 per FAB target) and 5,946
queries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyautoattack import AutoAttack, checks
from torch import Tensor, nn

from tmifpe.attacks.autoattack.counting import CallCounter
from tmifpe.attacks.autoattack.snapping import snap_to_ball
from tmifpe.attacks.autoattack.state import load_state, new_state, run_meta, save_state
from tmifpe.verify import in_threat_model

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard cascade, in order
Progress = Callable[[str, int, int], None]  # (attack, batch_idx, n_batches), after each unit
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AAConfig:
    eps: float
    seed: int = 0
    batch_size: int = 500
    version: str = "standard"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.version != "standard":
            raise ValueError(f"only version='standard' is supported, got {self.version!r}")


@dataclass(frozen=True)
class AAResult:
    """Per-example outcome (tensors of leading dim N, on CPU) and per-attack wall times."""

    x_adv: Tensor  # (N, ...) float32: breaking point, else a non-finite one, else the clean one
    broken_by: list[str]  # first attack that broke the point; "" if robust or clean-incorrect
    robust_after: dict[str, Tensor]  # attack -> (N,) bool robust after that stage (verified)
    n_grad: Tensor  # (N,) int64 gradient evaluations, measured
    n_queries: Tensor  # (N,) int64 forward-only queries, measured
    wall_time_s: dict[str, float]  # attack -> seconds (summed over resumed runs)
    config: AAConfig
    clean_correct: Tensor  # (N,) bool, fp32 clean pass of the runner (finite logits)
    n_target_classes: int  # targets used by APGD-T and FAB-T: min(9, K − 1)
    snapped: Tensor  # (N,) bool: returned point was projected ≤ SNAP_TOL into the exact ball
    nonfinite: Tensor  # (N,) bool: an attack returned a valid point with non-finite logits


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: AAConfig,
    *,
    state_path: Path | None = None,
    progress: Progress | None = None,
) -> AAResult:
    """Standard AutoAttack on float32 ``x`` in [0,1] (see module docstring).

    ``model`` must be in eval mode, float32 and on ``config.device``; it is not modified.
    ``state_path``: progress is saved atomically after every (attack, batch) unit and a rerun
    skips finished units, giving results identical to an uninterrupted run; a state written for
    another eps, seed, batch size or other points raises ValueError.
    """
    _check_inputs(model, x, y)
    dev = torch.device(config.device)
    x, y = x.detach().cpu(), y.detach().cpu()
    logits = _forward_batched(model, x, config)  # (N, K) clean pass, not counted
    clean_correct = (logits.argmax(dim=1) == y) & torch.isfinite(logits).all(dim=1)
    k = logits.shape[1]
    if k < 4:
        raise ValueError(f"standard AutoAttack needs >= 4 classes (targeted DLR), model has {k}")
    meta = run_meta(model, x, y, eps=config.eps, seed=config.seed,
                    batch_size=config.batch_size, version=config.version)
    if state_path is not None and state_path.exists():
        st = load_state(state_path, meta, x)
    else:
        st = new_state(x, clean_correct, meta, ATTACKS)
    counter = CallCounter(model, st["n_grad"], st["n_queries"])
    aa = AutoAttack(counter, eps=config.eps, seed=config.seed, version="standard", device=dev)
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, k - 1)
    _library_checks(aa, model, x[: config.batch_size].to(dev), y[: config.batch_size].to(dev))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for stage, attack in enumerate(ATTACKS):
            _run_stage(aa, counter, stage, attack, x, y, st, state_path, progress)
    robust = st["robust"]
    acc = {"clean": clean_correct.float().mean().item()}
    acc.update({a: robust[s].float().mean().item() for s, a in enumerate(ATTACKS)})
    checks.check_square_sr(acc, logger=aa.logger)
    _audit(model, x, y, st, config)
    return AAResult(
        x_adv=st["x_adv"],
        broken_by=[ATTACKS[c] if c >= 0 else "" for c in st["broken"].tolist()],
        robust_after={a: robust[s].clone() for s, a in enumerate(ATTACKS)},
        n_grad=st["n_grad"].clone(),
        n_queries=st["n_queries"].clone(),
        wall_time_s=dict(st["wall"]),
        config=config,
        clean_correct=clean_correct,
        n_target_classes=min(9, k - 1),
        snapped=st["snapped"].clone(),
        nonfinite=st["nonfinite"].clone(),
    )


def _check_inputs(model: nn.Module, x: Tensor, y: Tensor) -> None:
    if x.dtype != torch.float32 or y.dtype != torch.int64 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need float32 x and int64 y of equal length, got {x.dtype} "
                         f"{tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
    if not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise ValueError("x must be pixels in [0,1] (normalisation belongs inside the model)")
    if any(m.training for m in model.modules()):
        raise ValueError("model must be in eval mode (train-mode layers randomise AutoAttack)")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("model must be float32: the AutoAttack cascade runs at fp32")


@torch.no_grad()
def _forward_batched(model: nn.Module, x: Tensor, config: AAConfig) -> Tensor:
    dev = torch.device(config.device)
    parts = [model(x[i : i + config.batch_size].to(dev)).float().cpu()
             for i in range(0, x.shape[0], config.batch_size)]
    return torch.cat(parts)  # (N, K)


def _library_checks(aa: AutoAttack, model: nn.Module, xb: Tensor, yb: Tensor) -> None:
    """The input checks of ``run_standard_evaluation`` (warnings only, on the raw model)."""
    checks.check_randomized(model, xb, yb, bs=xb.shape[0], logger=aa.logger)
    n_cls = checks.check_range_output(model, xb, logger=aa.logger)
    checks.check_dynamic(model, xb, False, logger=aa.logger)
    checks.check_n_classes(n_cls, aa.attacks_to_run, aa.apgd_targeted.n_target_classes,
                           aa.fab.n_target_classes, logger=aa.logger)


def _run_stage(
    aa: AutoAttack, counter: CallCounter, stage: int, attack: str, x: Tensor, y: Tensor,
    st: dict[str, Any], state_path: Path | None, progress: Progress | None,
) -> None:
    """All batches of one attack; units before the saved cursor are skipped."""
    robust = st["robust"]
    before = st["clean_correct"] if stage == 0 else robust[stage - 1]
    # Tensor.split of an empty tensor yields one empty chunk: no point left means no batch.
    batches = [b for b in before.nonzero().squeeze(1).split(int(st["meta"]["batch_size"]))
               if b.numel()]
    for b, idx in enumerate(batches):
        if (stage, b) < tuple(st["cursor"]):
            continue
        if b == 0:
            robust[stage] = before
        t0 = time.perf_counter()
        _run_unit(aa, counter, stage, attack, x[idx], y[idx], idx, st)
        st["wall"][attack] += time.perf_counter() - t0
        st["cursor"] = [stage, b + 1]
        save_state(state_path, st)
        if progress is not None:
            progress(attack, b, len(batches))
    if tuple(st["cursor"]) < (stage + 1, 0):
        if not batches:
            robust[stage] = before
        st["cursor"] = [stage + 1, 0]
        save_state(state_path, st)


def _run_unit(
    aa: AutoAttack, counter: CallCounter, stage: int, attack: str, xb: Tensor, yb: Tensor,
    idx: Tensor, st: dict[str, Any],
) -> None:
    """One (attack, batch): perturb, repair float32 rounding, verify, record."""
    dev = torch.device(aa.device)
    xb, yb = xb.to(dev), yb.to(dev)
    eps = float(aa.epsilon)
    counter.clean, counter.index = xb, idx
    try:
        with torch.no_grad():
            adv = _perturb(aa, attack, xb.clone(), yb.clone())
            adv, snapped = snap_to_ball(xb, adv.detach(), eps)
            logits = counter(adv)  # fresh fp32 forward (counted, as in the library)
    finally:
        counter.clean = counter.index = None
    valid = in_threat_model(xb, adv, eps).cpu()
    finite = torch.isfinite(logits).all(dim=1).cpu()
    broken = valid & finite & (logits.argmax(dim=1).cpu() != yb.cpu())
    # a valid point with NaN/Inf logits: not broken; kept (first one) so the verdict reports it
    nonfinite = valid & ~finite & ~st["nonfinite"][idx]
    for mask, flag_broken in ((broken, True), (nonfinite, False)):
        rows = idx[mask]
        st["x_adv"][rows] = adv.cpu()[mask]
        st["snapped"][rows] = snapped.cpu()[mask]
        if flag_broken:
            st["robust"][stage, rows] = False
            st["broken"][rows] = stage
        else:
            st["nonfinite"][rows] = True


def _perturb(aa: AutoAttack, attack: str, x: Tensor, y: Tensor) -> Tensor:
    """Exactly the attribute assignments of ``run_standard_evaluation`` for each attack."""
    if attack == "apgd-ce":
        aa.apgd.loss = "ce"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if attack == "apgd-t":
        aa.apgd_targeted.seed = aa.get_seed()
        return aa.apgd_targeted.perturb(x, y)
    if attack == "fab-t":
        aa.fab.targeted = True
        aa.fab.n_restarts = 1
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    aa.square.seed = aa.get_seed()
    return aa.square.perturb(x, y)


def _audit(model: nn.Module, x: Tensor, y: Tensor, st: dict[str, Any], config: AAConfig) -> None:
    """Re-check the returned points: in the ball, and broken ones misclassified when re-batched."""
    if not in_threat_model(x, st["x_adv"], config.eps).all():
        raise RuntimeError("AutoAttack returned a point outside the eps-ball or [0,1]")
    pred = _forward_batched(model, st["x_adv"], config).argmax(dim=1)
    flipped = (st["broken"] >= 0) & (pred == y)
    if flipped.any():
        logger.warning("%d broken points are classified correctly when re-batched; a verify() "
                       "on the returned x_adv settles the verdict", int(flipped.sum()))
