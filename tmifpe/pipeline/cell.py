"""One attack cell (model × loss × budget): every precision, untargeted and targeted, resumable.

Work is split into units (precision, targeted, batch). Each finished unit is saved atomically in
a work directory keyed by a hash of everything that determines its result (params, data, model,
engine and loss source files, the precisions this budget runs at), so a killed run resumes from
its completed units and a changed input never reuses a stale unit. The per-example Parquet is
written once, at the end, by rename.

The units are kept after the cell completes (until its inputs change: the next run of the cell
removes directories of other keys). An attack stage runs every budget of one model × loss, so
DVC re-runs the whole stage when a budget is added or a precision's cap moves; the budgets
whose inputs did not change are then rebuilt from their units, byte-identical, without
attacking again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from tmifpe.data.sources import load_eval_points
from tmifpe.evaluation.attack import AttackSettings, VerdictModels, run_unit, unit_frame
from tmifpe.losses import LossName
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.code_deps import code_hash
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.progress import Progress
from tmifpe.precision import Precision, check_deterministic
from tmifpe.runtime import environment, numerics, resolve_device
from tmifpe.storage import save_torch, sha256_path, write_json, write_parquet

WORK_ROOT = Path(os.environ.get("TMIFPE_WORK_DIR", ".tmifpe-work")) / "checkpoints"
KEY_LENGTH = 16  # hex digits of a cell key


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
        # what this budget runs at (= grid.precisions.b<budget>): a cap elsewhere is no input
        "precisions": {p.value: {"n_targets": suite.precisions[p].n_targets,
                                 "n_examples": suite.precisions[p].n_examples}
                       for p in suite.precisions_for_budget(spec.budget)},
        "code": code_hash("stages.attack", spec.loss.value),  # = the cell's dvc.yaml deps
        "device": resolve_device(suite.device).type,  # never shared across device kinds
        "inputs": [sha256_path(p) for p in [data_path, *model_files] if p.exists()],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def run_attack_cell(
    suite: SuiteParams, spec: CellSpec, *, data_path: Path, model_files: list[Path],
    out: Path, timing_out: Path, work_root: Path = WORK_ROOT, net: torch.nn.Module | None = None,
) -> pl.DataFrame:
    """Run (or resume) the cell and write its Parquet (environment in its metadata) + timing
    JSON atomically. Each unit is :func:`tmifpe.evaluation.attack.run_unit`, under
    :func:`tmifpe.runtime.numerics` ``(suite.threads)``. ``net``: the model already loaded by
    :func:`tmifpe.models.zoo.load_model` (the stage runs every budget on one load)."""
    device = resolve_device(suite.device)
    ds_key, ds = suite.dataset_of(spec.model)
    x_all, y_all = load_eval_points(data_path, ds.n_examples)
    ap = suite.attack
    settings = AttackSettings(loss=spec.loss, eps=ds.eps, budget=spec.budget,
                              schedule=ap.schedule, momentum=ap.momentum, restarts=ap.restarts,
                              seed=ap.seed, batch_size=ap.batch_size, tstar_rule=ap.tstar_rule)
    work = work_root / f"{spec.name}-{cell_key(suite, spec, data_path, model_files)}"
    # checkpoints of changed inputs are useless ("<name>-<16 hex>": not another budget's
    # "<name>0-…" when this budget is a prefix of it, e.g. 10 and 100)
    for stale in work_root.glob(f"{spec.name}-{'?' * KEY_LENGTH}"):
        if stale != work:
            shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    units = _units(suite, spec.budget, x_all.shape[0])
    progress = Progress(f"attack {spec.name}", len(units))
    parts, timings = [], []
    with numerics(suite.threads):
        env = environment(device)
        if net is None:
            net = load_model(spec.model, *suite.model_and_dataset(spec.model))
        check_deterministic(net, x_all, name=spec.model)
        models = VerdictModels(net, device)
        for prec, n_targets, start, stop in units:
            targeted = n_targets > 0
            path = work / f"{prec.value}-{'t' if targeted else 'u'}-{start}.pt"
            resumed = path.exists()
            if not resumed:
                unit = run_unit(models, settings, prec, x_all[start:stop], y_all[start:stop],
                                n_targets=n_targets, batch=start // ap.batch_size)
                unit.pop("x_adv")
                save_torch(unit, path)
            unit = torch.load(path, weights_only=True)
            parts.append(unit_frame(unit, dataset=ds_key, model=spec.model,
                                    loss=spec.loss.value, precision=prec.value,
                                    budget=spec.budget, restarts=ap.restarts,
                                    n_targets=int(unit["n_targets"]), eps=ds.eps, seed=ap.seed,
                                    start=start))
            timings.append({"precision": prec.value, "targeted": targeted, "start": start,
                            "n_examples": stop - start, "n_attacked": int(unit["n_attacked"]),
                            "wall_time_s": round(float(unit["wall_time_s"]), 4)})
            progress.step(f"{prec.value} {'targeted' if targeted else 'untargeted'} "
                          f"points {start}-{stop - 1}" + (" (resumed)" if resumed else ""))
    frame = pl.concat(parts).sort(["precision", "targeted", "example"])
    write_parquet(frame, out, metadata={"environment": env})
    write_json(timings, timing_out)
    return frame


def _units(suite: SuiteParams, budget: int, n: int) -> list[tuple[Precision, int, int, int]]:
    """(precision, n_targets (0: untargeted), start, stop) of every unit of the cell."""
    units = []
    bs = suite.attack.batch_size
    for prec in suite.precisions_for_budget(budget):
        pp = suite.precisions[prec]
        n_prec = min(n, pp.n_examples or n)
        for n_targets in (0, pp.n_targets) if pp.n_targets > 0 else (0,):
            units += [(prec, n_targets, s, min(s + bs, n_prec)) for s in range(0, n_prec, bs)]
    return units
