"""The AutoAttack cell of one model: standard AA on exactly the attack cells' points, verified.

The run itself is :func:`tmifpe.evaluation.autoattack.run_autoattack_eval`; the cell adds the
resume key and state path, and the file outputs (Parquet with the environment in its metadata,
timing JSON)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from tmifpe.attacks.autoattack import AAConfig
from tmifpe.data.sources import load_eval_points
from tmifpe.evaluation.autoattack import run_autoattack_eval
from tmifpe.models.zoo import load_model, model_files
from tmifpe.pipeline.code_deps import ROOT as CODE_ROOT
from tmifpe.pipeline.code_deps import code_hash
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.progress import Progress
from tmifpe.runtime import resolve_device
from tmifpe.storage import sha256_json, sha256_path, write_json, write_parquet

WORK_ROOT = Path(os.environ.get("TMIFPE_WORK_DIR", ".tmifpe-work")) / "autoattack"


def resume_key(suite: SuiteParams, model_key: str, data_path: Path,
               model_paths: list[Path], root: Path = CODE_ROOT) -> str:
    """Hash of every input of the AutoAttack run: settings, model files (so a retrained or
    replaced checkpoint never resumes an old state), data file, code (under ``root``, the source
    checkout of this package by default) and library version."""
    from importlib.metadata import version

    _, ds = suite.dataset_of(model_key)
    doc = {"model": [model_key, suite.model_zoo[model_key].model_dump(mode="json")],
           "dataset": ds.model_dump(mode="json"), "autoattack": suite.autoattack.model_dump(),
           "inputs": [sha256_path(p) for p in [data_path, *model_paths]],
           "code": code_hash("stages.autoattack", root=root),  # = the stage's dvc.yaml deps
           "device": resolve_device(suite.device).type,  # never shared across device kinds
           "pyautoattack": version("pyautoattack")}
    return sha256_json(doc)[:16]


def run_autoattack_cell(
    suite: SuiteParams, model_key: str, *, data_path: Path, out: Path, timing_out: Path,
    work_root: Path = WORK_ROOT,
) -> pl.DataFrame:
    """Run (or resume, via pyautoattack-style state) standard AA and write Parquet + timing."""
    device = resolve_device(suite.device)
    ds_key, ds = suite.dataset_of(model_key)
    x, y = load_eval_points(data_path, ds.n_examples)
    model = load_model(model_key, *suite.model_and_dataset(model_key)).to(device)
    aa = suite.autoattack
    cfg = AAConfig(eps=ds.eps, seed=aa.seed, batch_size=aa.batch_size, device=str(device))
    key = resume_key(suite, model_key, data_path, model_files(model_key))
    work_root.mkdir(parents=True, exist_ok=True)
    state = work_root / f"{model_key}-{key}.pt"
    for stale in work_root.glob(f"{model_key}-*.pt"):  # states of changed inputs are useless
        if stale != state:
            stale.unlink(missing_ok=True)
    progress: Progress | None = None

    def on_batch(attack: str, batch: int, n_batches: int) -> None:
        nonlocal progress
        if progress is None or progress.title != f"autoattack {model_key} {attack}":
            progress = Progress(f"autoattack {model_key} {attack}", n_batches)
        progress.step(f"batch {batch + 1}/{n_batches}")

    run = run_autoattack_eval(model, x, y, cfg, dataset=ds_key, model_name=model_key,
                              state_path=state, progress=on_batch, threads=suite.threads)
    frame = run.frame()
    write_parquet(frame, out, metadata={"environment": run.environment})
    timing = {k: round(v, 4) for k, v in run.stage_wall_time_s.items()}
    write_json({**timing, "total": round(sum(timing.values()), 4)}, timing_out)
    state.unlink(missing_ok=True)
    return frame
