"""One attack cell end to end (in process, tiny grid): the per-example Parquet has the documented
``dtype_only_hits`` column, every confirmed success survives the final fp32 verification (no
false success), fp32 has no dtype-only hit, and a rerun is byte-identical."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from support.suites import complete

from tmifpe.data.sources import save_tensors
from tmifpe.evaluation.schema import CELL_SCHEMA
from tmifpe.losses import LossName
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.pipeline.cell import CellSpec, run_attack_cell
from tmifpe.pipeline.config import parse_suite

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_cell_columns_no_false_success_and_determinism(tmp_path, monkeypatch, digits):
    suite = parse_suite(complete({
        "name": "tiny", "threads": 1,
        "datasets": {"digits": {"source": "digits", "n_examples": 40, "eps": 0.2}},
        "model_zoo": {"tiny_std": {"source": "trained", "dataset": "digits", "seed": 0}},
        "models": ["tiny_std"], "losses": ["ce"], "budgets": [4],
        "precisions": {"bf16": {"n_targets": 1}, "fp32": {"n_targets": 1}},
        "attack": {"batch_size": 20, "seed": 0},
    }))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmifpe").symlink_to(ROOT / "tmifpe")  # the cell key hashes its source files
    data = tmp_path / "data" / "eval" / "digits.pt"
    save_tensors({"x_test": digits.x_test[:40], "y_test": digits.y_test[:40]}, data)
    torch.manual_seed(0)
    (tmp_path / "models" / "tiny_std").mkdir(parents=True)
    torch.save(SmallCNN().state_dict(), tmp_path / "models" / "tiny_std" / "model.pt")
    spec = CellSpec("tiny_std", LossName.CE, 4)
    out, timing = spec.outputs(tmp_path / "results")
    frame = run_attack_cell(suite, spec, data_path=data, model_files=[], out=out,
                            timing_out=timing)
    first = out.read_bytes()
    assert dict(pl.read_parquet(out).schema) == CELL_SCHEMA  # every documented column, typed
    assert not frame["false_success"].any()  # a confirmed success is a verified one
    assert frame.filter(pl.col("precision") == "fp32")["dtype_only_hits"].sum() == 0
    assert (frame["dtype_only_hits"] >= 0).all()
    run_attack_cell(suite, spec, data_path=data, model_files=[], out=out, timing_out=timing)
    assert out.read_bytes() == first
