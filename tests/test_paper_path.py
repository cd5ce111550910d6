"""The paper suite's code path, offline: CIFAR-10 files in torchvision's on-disk layout, the
CIFAR-10 ResNet-18 shipped inside pyautoattack, PGD cells and standard AutoAttack, end to end
through `dvc repro` in a temporary repository."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from support.repo import copy_project, init_repo
from support.repo import dvc as _dvc
from support.repo import ran as _ran
from support.suites import write_params

from tmifpe.models.autoattack_resnet import load_pyautoattack_resnet18

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("paper_path")]
N = 4


def _stage_cifar10(data_dir: Path) -> dict[str, str]:
    """Write `cifar-10-batches-py/test_batch` (+ meta); labels = the ResNet-18's predictions,
    so every point is clean-correct and the attacks have work to do. Returns both files' MD5s."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        pred = load_pyautoattack_resnet18()(torch.from_numpy(images).float() / 255).argmax(1)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    meta = {"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": N}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    batch = {"batch_label": "testing batch 1 of 1", "labels": pred.tolist(),
             "data": images.reshape(N, 3072), "filenames": [f"{k}.png" for k in range(N)]}
    payload = pickle.dumps(batch, protocol=2)
    (folder / "test_batch").write_bytes(payload)
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest()
            for name in ("test_batch", "batches.meta")}


def test_paper_suite_code_path_offline(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo", ("tmifpe", "stages"), ("dvc.yaml",))
    md5s = _stage_cifar10(repo / "data/raw")
    suite = {
        "name": "paper_offline", "device": "cpu", "threads": 1, "data_dir": "data/raw",
        "datasets": {"cifar10": {"source": "cifar10", "n_examples": N,
                                 "eps": 8 / 255, "md5": md5s}},
        "model_zoo": {"c10_aa_resnet18": {"source": "pyautoattack_resnet18",
                                          "dataset": "cifar10"}},
        "models": ["c10_aa_resnet18"], "losses": ["ce", "tmifpe"], "budgets": [3],
        "precisions": {"bf16": {"n_targets": 0}, "fp32": {"n_targets": 2}},
        "attack": {"batch_size": N, "seed": 0},
        "autoattack": {"seed": 0, "batch_size": N},
        "ablations": {"budgets": [2]},
    }
    write_params(repo / "params.yaml", suite)
    init_repo(repo)
    proc = _dvc(repo, "repro")
    assert {"data@cifar10", "model@c10_aa_resnet18", "autoattack@c10_aa_resnet18",
            "attack@c10_aa_resnet18-tmifpe", "diagnostics@c10_aa_resnet18",
            "ablations@c10_aa_resnet18", "aggregate",
            "report"} <= _ran(proc)
    html = (repo / "reports/index.html").read_text()
    assert "Gradient error" in html and "ablation" in html.lower()

    manifest = json.loads((repo / "models/c10_aa_resnet18/manifest.json").read_text())
    assert manifest["clean_accuracy"] == 1.0
    cell = pl.read_parquet(repo / "results/attack/c10_aa_resnet18/tmifpe/b3.parquet")
    assert cell.height == N * 3  # bf16 untargeted + fp32 untargeted and targeted
    assert cell.filter(pl.col("targeted"))["n_targets"].unique().to_list() == [2]
    assert cell["valid"].all() and cell["clean_correct"].all()
    aa = pl.read_parquet(repo / "results/autoattack/c10_aa_resnet18.parquet")
    assert aa.height == N and aa["valid"].all()
    # AutoAttack is at least as strong as a 3-step PGD on this non-robust model
    assert aa["robust_fp32"].sum() <= cell.filter(~pl.col("targeted"))["robust_fp32"].sum()
    assert set(aa["broken_by"].to_list()) <= {"", "apgd-ce", "apgd-t", "fab-t", "square"}
    html = (repo / "reports/index.html").read_text()
    assert "c10_aa_resnet18" in html and "http://" not in html and "https://" not in html

    # a wrong MD5 (a corrupt or different file) fails the data stage with a one-line error
    suite["datasets"]["cifar10"]["md5"] = {**md5s, "test_batch": "0" * 32}
    write_params(repo / "params.yaml", suite)
    bad = _dvc(repo, "repro", "data@cifar10", check=False)
    assert bad.returncode != 0
    assert "test_batch" in bad.stderr and "0" * 32 in bad.stderr
