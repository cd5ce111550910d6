"""The AutoAttack resume key: a state is reused only for the same model files, data and code."""

from __future__ import annotations

import shutil
from pathlib import Path

from support.suites import complete

from tmifpe.pipeline.autoattack_cell import resume_key
from tmifpe.pipeline.code_deps import code_files
from tmifpe.pipeline.config import parse_suite

ROOT = Path(__file__).resolve().parents[1]


def test_resume_key_covers_model_data_and_code(tmp_path: Path) -> None:
    suite = parse_suite(complete({
        "name": "t", "datasets": {"digits": {"source": "digits", "n_examples": 8, "eps": 0.2}},
        "model_zoo": {"m": {"source": "trained", "dataset": "digits"}}, "models": ["m"],
        "losses": ["ce"], "budgets": [2], "precisions": {"fp32": {"n_targets": 0}}}))
    for f in code_files("stages.autoattack"):  # the stage's dvc.yaml code deps
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / f).is_dir():
            shutil.copytree(ROOT / f, tmp_path / f)
        else:
            shutil.copy(ROOT / f, tmp_path / f)
    data, ckpt = tmp_path / "digits.pt", tmp_path / "model.pt"
    data.write_bytes(b"data")
    ckpt.write_bytes(b"weights v1")
    key = resume_key(suite, "m", data, [ckpt], root=tmp_path)
    assert resume_key(suite, "m", data, [ckpt], root=tmp_path) == key  # stable
    ckpt.write_bytes(b"weights v2")  # retrained model
    assert resume_key(suite, "m", data, [ckpt], root=tmp_path) != key
    ckpt.write_bytes(b"weights v1")
    runner = tmp_path / "tmifpe/attacks/autoattack/cascade.py"
    runner.write_text(runner.read_text() + "\n# changed\n")  # changed code
    assert resume_key(suite, "m", data, [ckpt], root=tmp_path) != key
    runner.write_text(runner.read_text().removesuffix("\n# changed\n"))
    assert resume_key(suite, "m", data, [ckpt], root=tmp_path) == key
    loader = tmp_path / "tmifpe/data/sources.py"  # decides which points are attacked
    loader.write_text(loader.read_text() + "\n# changed\n")
    assert resume_key(suite, "m", data, [ckpt], root=tmp_path) != key
