"""Standard AutoAttack (Linf) via pyautoattack, run stage by stage with per-example bookkeeping.

[pyautoattack 0.2.0 = fra31/auto-attack a392200] ``run_standard_evaluation`` returns only the
final points. Here ``pyautoattack.AutoAttack(version="standard")`` builds the exactly-configured
attack objects and the cascade is run by :func:`run_autoattack`, mirroring the library loop:
APGD-CE, APGD-T, FAB-T, Square in order, each only on the points still robust, each from the
clean point, in batches of ``batch_size`` taken over the points robust when the attack starts,
with the same attribute assignments and seeds. Deliberate differences:

- "broken" is decided by us: the returned point must pass :func:`tmifpe.verify.in_threat_model`
  and a fresh fp32 forward pass must misclassify it. The library computes ``x ± eps`` in float32,
  which can round outward (0.1, 8/255 are not float32 numbers), so its points may leave the exact
  ball by ~1e-8. Such a point (violation ≤ ``SNAP_TOL``) is projected onto the exact ball
  (:func:`tmifpe.attacks.projection.linf_box`) before the check and ``snapped`` records it;
  larger violations are rejected.
- [derived here] with K classes APGD-T and FAB-T use ``min(9, K − 1)`` targets (the library only
  warns and then indexes past the logits for K < 10); K < 4 is rejected (targeted DLR needs z_π4).
- the caller's CPU RNG state is restored afterwards (the library reseeds it in every ``perturb``).

Cost accounting is measured: the attacks see the model through a counter. A call with grad
enabled on an input that requires grad is one gradient evaluation (forward + backward) per row,
any other call one query per row. Each row is attributed to ONE example of the current batch:
the nearest clean point (L2), made a one-to-one assignment (Hungarian, scipy) whenever two rows of
a call would map to the same example. Per-batch totals are exact by construction; per-example
counts are exact whenever each row is nearer its own clean point than any other of the batch
(always for APGD/Square iterates if the batch's clean points are > 2·eps·√D apart). Counted: the
attacks' calls and the verification forward after each attack (the library's loop makes the same
call); not counted: the clean pass, the library's input checks, the final audit. Worst case per
point for K ≥ 10: 1,910 gradient evaluations (101 per APGD run: start + 100 steps; 100 per FAB
target) and 5,946 queries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from pyautoattack import AutoAttack, checks
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from tmifpe.attacks.projection import linf_box, project
from tmifpe.verify import Verdict, in_threat_model

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard cascade, in order
SNAP_TOL = 1e-6  # largest float32 rounding violation of the eps-ball that is repaired
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

    x_adv: Tensor  # (N, ...) float32: first verified breaking point, else the clean point
    broken_by: list[str]  # first attack that broke the point; "" if robust or clean-incorrect
    robust_after: dict[str, Tensor]  # attack -> (N,) bool robust after that stage (verified)
    n_grad: Tensor  # (N,) int64 gradient evaluations, measured
    n_queries: Tensor  # (N,) int64 forward-only queries, measured
    wall_time_s: dict[str, float]  # attack -> seconds (summed over resumed runs)
    config: AAConfig
    clean_correct: Tensor  # (N,) bool, fp32 clean pass of the runner
    n_target_classes: int  # targets used by APGD-T and FAB-T: min(9, K − 1)
    snapped: Tensor  # (N,) bool: returned point was projected ≤ SNAP_TOL into the exact ball


class _CallCounter(nn.Module):
    """Forwards to ``model`` and charges every call to the examples of the bound batch."""

    def __init__(self, model: nn.Module, n_grad: Tensor, n_queries: Tensor) -> None:
        super().__init__()
        self.model = model
        self.n_grad, self.n_queries = n_grad, n_queries
        self.clean: Tensor | None = None  # (B, ...) clean points of the current batch
        self.index: Tensor | None = None  # (B,) their example indices

    def forward(self, x: Tensor) -> Tensor:
        if self.clean is not None and x.shape[0] > 0:
            rows = self.index[match_rows(x.detach(), self.clean).cpu()]
            grad = torch.is_grad_enabled() and x.requires_grad
            (self.n_grad if grad else self.n_queries).index_add_(
                0, rows, torch.ones_like(rows))
        return self.model(x)


def match_rows(z: Tensor, clean: Tensor) -> Tensor:
    """Position in ``clean`` (B, ...) of the example behind each row of ``z`` (m, ...): nearest
    in L2, made one-to-one by a minimum-cost assignment if two rows pick the same example."""
    if z.shape[0] > clean.shape[0]:
        raise RuntimeError(f"a model call had {z.shape[0]} rows, the batch has {clean.shape[0]}")
    d = torch.cdist(z.flatten(1).float(), clean.flatten(1).float())  # (m, B)
    pos = d.argmin(dim=1)
    if pos.unique().numel() < pos.numel():
        _, cols = linear_sum_assignment(d.double().cpu().numpy())
        pos = torch.from_numpy(cols).to(torch.int64)
    return pos


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

    ``state_path``: progress is saved atomically after every (attack, batch) unit and a rerun
    skips finished units, giving results identical to an uninterrupted run; a state written for
    another eps, seed, batch size or other points raises ValueError.
    """
    _check_inputs(model, x, y)
    dev = torch.device(config.device)
    x, y = x.detach().cpu(), y.detach().cpu()
    logits = _forward_batched(model, x, config)  # (N, K) clean pass, not counted
    clean_correct, k = logits.argmax(dim=1) == y, logits.shape[1]
    if k < 4:
        raise ValueError(f"standard AutoAttack needs >= 4 classes (targeted DLR), model has {k}")
    meta = _meta(model, x, y, config)
    if state_path is not None and state_path.exists():
        st = _load_state(state_path, meta, x)
    else:
        st = _new_state(x, clean_correct, meta)
    counter = _CallCounter(model, st["n_grad"], st["n_queries"])
    aa = AutoAttack(counter, eps=config.eps, seed=config.seed, version="standard", device=dev)
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, k - 1)
    _library_checks(aa, model, x[: config.batch_size].to(dev), y[: config.batch_size].to(dev))
    with torch.random.fork_rng(devices=[]):
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
    aa: AutoAttack, counter: _CallCounter, stage: int, attack: str, x: Tensor, y: Tensor,
    st: dict, state_path: Path | None, progress: Progress | None,
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
        _save_state(state_path, st)
        if progress is not None:
            progress(attack, b, len(batches))
    if tuple(st["cursor"]) < (stage + 1, 0):
        if not batches:
            robust[stage] = before
        st["cursor"] = [stage + 1, 0]
        _save_state(state_path, st)


def _run_unit(
    aa: AutoAttack, counter: _CallCounter, stage: int, attack: str, xb: Tensor, yb: Tensor,
    idx: Tensor, st: dict,
) -> None:
    """One (attack, batch): perturb, repair float32 rounding, verify, record."""
    dev = torch.device(aa.device)
    xb, yb = xb.to(dev), yb.to(dev)
    counter.clean, counter.index = xb, idx
    try:
        with torch.no_grad():
            adv = _perturb(aa, attack, xb.clone(), yb.clone())
            adv, snapped = _snap(xb, adv.detach(), float(aa.epsilon))
            pred = counter(adv).argmax(dim=1)  # fresh fp32 forward (counted, as in the library)
    finally:
        counter.clean = counter.index = None
    broken = (in_threat_model(xb, adv, float(aa.epsilon)) & (pred != yb)).cpu()
    rows = idx[broken]
    st["robust"][stage, rows] = False
    st["broken"][rows] = stage
    st["x_adv"][rows] = adv.cpu()[broken]
    st["snapped"][rows] = snapped.cpu()[broken]


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


def _snap(x0: Tensor, adv: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Project points violating the exact eps-ball ∩ [0,1] by ≤ SNAP_TOL onto it; (n,) flags."""
    lo, hi = linf_box(x0, eps)
    over = torch.maximum(lo - adv, adv - hi).flatten(1).amax(dim=1)  # (n,); NaN stays unfixed
    fix = (over > 0) & (over <= SNAP_TOL)
    shape = (-1,) + (1,) * (adv.dim() - 1)
    return torch.where(fix.view(shape), project(adv, lo, hi), adv), fix


def _audit(model: nn.Module, x: Tensor, y: Tensor, st: dict, config: AAConfig) -> None:
    """Re-check the returned points: in the ball, and broken ones misclassified when re-batched."""
    if not in_threat_model(x, st["x_adv"], config.eps).all():
        raise RuntimeError("AutoAttack returned a point outside the eps-ball or [0,1]")
    pred = _forward_batched(model, st["x_adv"], config).argmax(dim=1)
    flipped = (st["broken"] >= 0) & (pred == y)
    if flipped.any():
        logger.warning("%d broken points are classified correctly when re-batched; a verify() "
                       "on the returned x_adv settles the verdict", int(flipped.sum()))


def _meta(model: nn.Module, x: Tensor, y: Tensor, config: AAConfig) -> dict:
    """What a state file must match: config, the points, the model weights and this code."""

    def sha(*ts: Tensor) -> str:
        h = hashlib.sha256()
        for t in ts:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # this runner's own source
    return {"eps": float(config.eps), "seed": int(config.seed),
            "batch_size": int(config.batch_size), "version": config.version, "code_sha256": code,
            "n": int(x.shape[0]), "x_shape": list(x.shape), "x_sha256": sha(x),
            "y_sha256": sha(y), "model_sha256": sha(*model.state_dict().values())}


def _new_state(x: Tensor, clean_correct: Tensor, meta: dict) -> dict:
    n = x.shape[0]
    return {"meta": meta, "cursor": [0, 0], "clean_correct": clean_correct,
            "robust": clean_correct.repeat(len(ATTACKS), 1),  # (4, N), valid up to the cursor
            "broken": torch.full((n,), -1, dtype=torch.int64), "x_adv": x.clone(),
            "n_grad": torch.zeros(n, dtype=torch.int64),
            "n_queries": torch.zeros(n, dtype=torch.int64),
            "snapped": torch.zeros(n, dtype=torch.bool), "wall": dict.fromkeys(ATTACKS, 0.0)}


def _save_state(path: Path | None, st: dict) -> None:
    """Atomic (tmp + rename); x_adv is stored only for the broken points."""
    if path is None:
        return
    keep = st["broken"] >= 0
    payload = {k: v for k, v in st.items() if k != "x_adv"}
    payload["adv_rows"] = st["x_adv"][keep]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, meta: dict, x: Tensor) -> dict:
    st = torch.load(path, weights_only=True)
    for key, want in meta.items():
        have = st.get("meta", {}).get(key)
        if have != want:
            raise ValueError(f"AutoAttack state {path} belongs to another run ({key}: stored "
                             f"{have!r}, requested {want!r}); delete it or use another path")
    st["x_adv"] = x.clone()
    st["x_adv"][st["broken"] >= 0] = st.pop("adv_rows")
    return st


def autoattack_frame(
    result: AAResult, verdict: Verdict, x: Tensor, y: Tensor, clean_correct: Tensor, meta: dict
) -> pl.DataFrame:
    """Rows of ``results/autoattack/<model>.parquet`` (docs/results-schema.md), by example.

    ``verdict`` is :func:`tmifpe.verify.verify` of ``result.x_adv``; ``meta`` gives ``suite``,
    ``dataset`` and ``model``.
    """
    n = y.shape[0]
    if not x.shape[0] == verdict.valid.shape[0] == result.n_grad.shape[0] == n:
        raise ValueError("x, y, verdict and result must describe the same points")
    missing = {"suite", "dataset", "model"} - meta.keys()
    if missing:
        raise ValueError(f"meta lacks {sorted(missing)}")
    cc = clean_correct.bool().cpu()
    cfg = result.config

    def col(name: str, values: object, dtype: pl.DataType) -> pl.Series:
        return pl.Series(name, values, dtype=dtype)

    robust = [col(f"robust_after_{a.replace('-', '_')}", result.robust_after[a].numpy(),
                  pl.Boolean) for a in ATTACKS]
    return pl.DataFrame([
        col("suite", [meta["suite"]] * n, pl.String),
        col("dataset", [meta["dataset"]] * n, pl.String),
        col("model", [meta["model"]] * n, pl.String),
        col("eps", [float(cfg.eps)] * n, pl.Float64),
        col("seed", [cfg.seed] * n, pl.Int64),
        col("batch_size", [cfg.batch_size] * n, pl.Int32),
        col("example", range(n), pl.Int64),
        col("label", y.cpu().numpy(), pl.Int64),
        col("clean_correct", cc.numpy(), pl.Boolean),
        col("broken_by", result.broken_by, pl.String),
        *robust,
        col("valid", verdict.valid.cpu().numpy(), pl.Boolean),
        col("robust_fp32", (cc & ~verdict.broken(y.cpu())).numpy(), pl.Boolean),
        col("robust_fp64", (cc & ~verdict.broken(y.cpu(), fp64=True)).numpy(), pl.Boolean),
        col("margin_fp32", verdict.margin_fp32.cpu().numpy(), pl.Float64),
        col("n_grad", result.n_grad.numpy(), pl.Int64),
        col("n_queries", result.n_queries.numpy(), pl.Int64),
    ])
