"""One attack cell (model × loss × budget): every precision, untargeted and targeted, resumable.

Work is split into units (precision, targeted, batch). Each finished unit is saved atomically in
a work directory keyed by a hash of everything that determines its result (params, data, model,
engine and loss source files), so a killed run resumes from its completed units and a changed
input never reuses a stale unit. The per-example Parquet is written once, at the end, by rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.attacks.runs import batch_seed
from tmifpe.data.sources import load_eval_points
from tmifpe.losses import LossName, get_loss
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.code_deps import code_hash
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.progress import Progress
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.runtime import resolve_device
from tmifpe.storage import sha256_path, write_json, write_parquet
from tmifpe.verify import verify

WORK_ROOT = Path(os.environ.get("TMIFPE_WORK_DIR", ".tmifpe-work")) / "checkpoints"


@dataclass(frozen=True)
class CellSpec:
    model: str
    loss: LossName
    budget: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.loss.value}-{self.budget}"

    def outputs(self, root: Path = Path("results/attack")) -> tuple[Path, Path]:
        base = root / self.model / self.loss.value
        return base / f"b{self.budget}.parquet", base / f"b{self.budget}.timing.json"


def cell_key(suite: SuiteParams, spec: CellSpec, data_path: Path, model_files: list[Path]) -> str:
    """Hash of every input of the cell; the work directory of its checkpoints."""
    ds_key, ds = suite.dataset_of(spec.model)
    doc = {
        "spec": [spec.model, spec.loss.value, spec.budget],
        "dataset": [ds_key, ds.model_dump(mode="json")],
        "model": suite.model_zoo[spec.model].model_dump(mode="json"),
        "attack": suite.attack.model_dump(mode="json"),
        "precisions": {p.value: pp.model_dump(mode="json") for p, pp in suite.precisions.items()},
        "code": code_hash("stages.attack", spec.loss.value),  # = the cell's dvc.yaml deps
        "device": resolve_device(suite.device).type,  # never shared across device kinds
        "inputs": [sha256_path(p) for p in [data_path, *model_files] if p.exists()],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def run_attack_cell(
    suite: SuiteParams, spec: CellSpec, *, data_path: Path, model_files: list[Path],
    out: Path, timing_out: Path, work_root: Path = WORK_ROOT,
) -> pl.DataFrame:
    """Run (or resume) the cell and write its Parquet + timing JSON atomically."""
    device = resolve_device(suite.device)
    ds_key, ds = suite.dataset_of(spec.model)
    x_all, y_all = load_eval_points(data_path, ds.n_examples)
    model = load_model(spec.model, *suite.model_and_dataset(spec.model)).to(device)
    ref32 = PrecisionModel(model, Precision.FP32)
    ref64 = PrecisionModel(model, Precision.FP64)
    work = work_root / f"{spec.name}-{cell_key(suite, spec, data_path, model_files)}"
    for stale in work_root.glob(f"{spec.name}-*"):  # checkpoints of changed inputs are useless
        if stale != work:
            shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    units = _units(suite, spec.budget, x_all.shape[0])
    progress = Progress(f"attack {spec.name}", len(units))
    parts, timings = [], []
    for prec, targeted, start, stop in units:
        path = work / f"{prec.value}-{'t' if targeted else 'u'}-{start}.pt"
        resumed = path.exists()
        if not resumed:
            unit = _run_unit(suite, spec, prec, targeted, model, (ref32, ref64),
                             x_all[start:stop], y_all[start:stop], start, device)
            _save_unit(unit, path)
        unit = torch.load(path, weights_only=True)
        parts.append(_unit_frame(suite, spec, ds_key, prec, targeted, start, unit))
        timings.append({"precision": prec.value, "targeted": targeted, "start": start,
                        "n_examples": stop - start, "n_attacked": int(unit["n_attacked"]),
                        "wall_time_s": round(float(unit["wall_time_s"]), 4)})
        progress.step(f"{prec.value} {'targeted' if targeted else 'untargeted'} "
                      f"points {start}-{stop - 1}" + (" (resumed)" if resumed else ""))
    frame = pl.concat(parts).sort(["precision", "targeted", "example"])
    write_parquet(frame, out)
    write_json(timings, timing_out)
    shutil.rmtree(work, ignore_errors=True)
    return frame


def _units(suite: SuiteParams, budget: int, n: int) -> list[tuple[Precision, bool, int, int]]:
    units = []
    bs = suite.attack.batch_size
    for prec in suite.precisions_for_budget(budget):
        pp = suite.precisions[prec]
        n_prec = min(n, pp.n_examples or n)
        for targeted in (False, True) if pp.n_targets > 0 else (False,):
            units += [(prec, targeted, s, min(s + bs, n_prec)) for s in range(0, n_prec, bs)]
    return units


def _run_unit(
    suite: SuiteParams, spec: CellSpec, prec: Precision, targeted: bool, model: torch.nn.Module,
    refs: tuple[PrecisionModel, PrecisionModel], x: Tensor, y: Tensor, start: int,
    device: torch.device,
) -> dict[str, Tensor]:
    ref32, ref64 = refs
    _, ds = suite.dataset_of(spec.model)
    pp, ap = suite.precisions[prec], suite.attack
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        clean_logits = ref32(x)
    clean_correct = (clean_logits.argmax(dim=1) == y).cpu()
    targets = attack_targets(clean_logits, pp.n_targets) if targeted else None
    cfg = PGDConfig(eps=ds.eps, steps=spec.budget, schedule=ap.schedule, momentum=ap.momentum,
                    restarts=ap.restarts, targeted=targeted,
                    n_targets=0 if targets is None else targets.shape[1], seed=ap.seed)
    gen = torch.Generator().manual_seed(batch_seed(ap.seed, targeted, start // ap.batch_size))
    t0 = time.perf_counter()
    attack_model = PrecisionModel(model, prec, reference=ref32)  # ref32 confirms successes
    res = run_pgd(attack_model, x, y, get_loss(spec.loss, tstar_rule=ap.tstar_rule),
                  cfg, attack_mask=clean_correct, targets=targets, generator=gen)
    wall = time.perf_counter() - t0
    v = verify(ref32, ref64, x, res.x_adv.to(device), y, ds.eps)
    y_cpu = y.cpu()
    return {
        "label": y_cpu, "clean_correct": clean_correct, "attack_success": res.success,
        "valid": v.valid.cpu(), "pred_fp32": v.pred_fp32.cpu(), "pred_fp64": v.pred_fp64.cpu(),
        "margin_fp32": v.margin_fp32.cpu(), "margin_fp64": v.margin_fp64.cpu(),
        "first_success_iter": res.first_success_iter, "success_target": res.success_target,
        "n_forward": res.n_forward, "n_backward": res.n_backward,
        "zero_grad_steps": res.zero_grad_steps, "nonfinite_steps": res.nonfinite_steps,
        "dtype_only_hits": res.dtype_only_hits,
        "n_targets": torch.tensor(cfg.n_targets), "n_attacked": clean_correct.sum(),
        "wall_time_s": torch.tensor(wall, dtype=torch.float64),
    }


def _save_unit(unit: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(unit, tmp)
    tmp.replace(path)


def _unit_frame(
    suite: SuiteParams, spec: CellSpec, ds_key: str, prec: Precision, targeted: bool, start: int,
    u: dict[str, Tensor],
) -> pl.DataFrame:
    n = u["label"].shape[0]
    y = u["label"]
    broken32 = u["valid"] & (u["pred_fp32"] != y)
    broken64 = u["valid"] & (u["pred_fp64"] != y)
    robust32 = u["clean_correct"] & ~broken32
    robust64 = u["clean_correct"] & ~broken64
    _, ds = suite.dataset_of(spec.model)
    return pl.DataFrame({
        "suite": [suite.name] * n, "dataset": [ds_key] * n, "model": [spec.model] * n,
        "loss": [spec.loss.value] * n, "targeted": [targeted] * n, "precision": [prec.value] * n,
        "budget": pl.Series([spec.budget] * n, dtype=pl.Int32),
        "restarts": pl.Series([suite.attack.restarts] * n, dtype=pl.Int32),
        "n_targets": pl.Series([int(u["n_targets"])] * n, dtype=pl.Int32),
        "eps": [ds.eps] * n, "seed": [suite.attack.seed] * n,
        "example": torch.arange(start, start + n).numpy(), "label": y.numpy(),
        "clean_correct": u["clean_correct"].numpy(), "attack_success": u["attack_success"].numpy(),
        "valid": u["valid"].numpy(), "robust_fp32": robust32.numpy(),
        "robust_fp64": robust64.numpy(),
        "false_success": (u["attack_success"] & ~broken32).numpy(),
        "fp32_fp64_disagree": (robust32 != robust64).numpy(),
        "first_success_iter": pl.Series(u["first_success_iter"].numpy(), dtype=pl.Int32),
        "success_target": u["success_target"].numpy(),
        "margin_fp32": u["margin_fp32"].numpy(), "margin_fp64": u["margin_fp64"].numpy(),
        "n_forward": u["n_forward"].numpy(), "n_backward": u["n_backward"].numpy(),
        "zero_grad_steps": u["zero_grad_steps"].numpy(),
        "nonfinite_steps": u["nonfinite_steps"].numpy(),
        "dtype_only_hits": u["dtype_only_hits"].numpy(),
    })
