"""Code deps derived from imports: dvc.yaml and the resume keys cover every module a stage runs.

The closure is read statically (tmifpe/pipeline/code_deps.py); these tests check its mechanics on
a small synthetic package, then that the committed dvc.yaml is what the derivation writes, that
every stage's deps cover the closure of its entry point (the attack cell of one loss without the
other loss packages), and that the cells' resume keys hash the same files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from support.suites import complete

from tmifpe.pipeline.ablations import ABLATION_LOSSES, variants
from tmifpe.pipeline.code_deps import (
    LOSS_SCOPES,
    closure,
    code_files,
    code_hash,
    dvc_code_deps,
    loss_packages,
)
from tmifpe.pipeline.config import SuiteParams, parse_suite
from tmifpe.pipeline.fast_config import FAST_STAGE_LOSSES

ROOT = Path(__file__).resolve().parents[1]
RESULT_STAGES = ("attack", "autoattack", "diagnostics", "ablations", "fast")


def _sync_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_dvc_deps",
                                                  ROOT / "scripts/sync_dvc_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, rel: str, text: str = "") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_closure_follows_every_import_form(tmp_path: Path) -> None:
    _write(tmp_path, "stages/__init__.py")
    _write(tmp_path, "stages/entry.py", "from tmifpe.pkg import sub\n"
           "def run():\n    import tmifpe.lazy\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tmifpe.typing_only\n")
    _write(tmp_path, "tmifpe/__init__.py", "def __getattr__(name):\n    from tmifpe import api\n")
    _write(tmp_path, "tmifpe/api.py")
    _write(tmp_path, "tmifpe/pkg/__init__.py")
    _write(tmp_path, "tmifpe/pkg/sub.py", "from .sibling import x\nfrom ..rel import y\n")
    _write(tmp_path, "tmifpe/pkg/sibling.py")
    _write(tmp_path, "tmifpe/rel.py")
    _write(tmp_path, "tmifpe/lazy.py")
    _write(tmp_path, "tmifpe/typing_only.py")
    _write(tmp_path, "tmifpe/unused.py")
    _write(tmp_path, "tmifpe/losses/__init__.py", "from tmifpe.losses.a import f\n"
           "from tmifpe.losses.b import g\n")
    assert closure(["stages.entry"], tmp_path) == {
        "stages", "stages.entry", "tmifpe", "tmifpe.pkg", "tmifpe.pkg.sub", "tmifpe.pkg.sibling",
        "tmifpe.rel", "tmifpe.lazy"}
    with pytest.raises(ValueError, match=r"stage module 'stages\.nope' not found"):
        code_files("stages.nope", root=tmp_path)  # never an empty list of deps


def test_loss_packages_are_cut_and_added_per_stage(tmp_path: Path) -> None:
    _write(tmp_path, "stages/__init__.py")
    _write(tmp_path, "stages/attack.py", "import tmifpe.losses\n")
    _write(tmp_path, "tmifpe/__init__.py")
    _write(tmp_path, "tmifpe/losses/__init__.py", "from tmifpe.losses.a import f\n"
           "from tmifpe.losses.b import g\n")
    _write(tmp_path, "tmifpe/losses/shared.py")
    _write(tmp_path, "tmifpe/losses/a/__init__.py", "from tmifpe.losses.a.impl import f\n")
    _write(tmp_path, "tmifpe/losses/a/impl.py", "from tmifpe.losses.shared import s\n")
    _write(tmp_path, "tmifpe/losses/b/__init__.py")
    assert loss_packages(tmp_path) == ("a", "b")
    common = ["stages/__init__.py", "stages/attack.py", "tmifpe/__init__.py",
              "tmifpe/losses/__init__.py", "tmifpe/losses/shared.py"]
    assert code_files("stages.attack", "b", tmp_path) == sorted(
        [*common, "tmifpe/losses/b/__init__.py"])
    assert code_files("stages.attack", "a", tmp_path) == sorted(
        [*common, "tmifpe/losses/a/__init__.py", "tmifpe/losses/a/impl.py"])
    assert dvc_code_deps("stages.attack", per_item_loss=True, root=tmp_path) == [
        *common, "tmifpe/losses/${item.loss}"]
    with pytest.raises(ValueError, match="unknown loss 'c'; expected one of: a, b"):
        code_files("stages.attack", "c", tmp_path)


def test_dvc_yaml_code_deps_are_the_derived_ones() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    rendered, stale = _sync_script().render(text)
    assert stale == [], f"run `python scripts/sync_dvc_deps.py`: stale {stale}"
    assert rendered == text


def test_sync_rewrites_a_stale_list_and_keeps_data_deps() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    stale_text = text.replace("        - tmifpe/data/sources.py\n", "", 1)
    rendered, stale = _sync_script().render(stale_text)
    assert stale and rendered == text


def _stage_deps() -> dict[str, tuple[str, list[str]]]:
    """stage -> (entry module, deps) from dvc.yaml."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in doc.items():
        body = stage.get("do", stage)
        module = body["cmd"].split()[2]
        out[name] = (module, body["deps"])
    return out


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", ["data", "model", *RESULT_STAGES, "aggregate", "report"])
def test_every_stage_depends_on_its_import_closure(stage: str) -> None:
    module, deps = _stage_deps()[stage]
    per_item = any("${item.loss}" in d for d in deps)
    for loss in loss_packages() if per_item else [None]:
        resolved = [d.replace("${item.loss}", loss or "") for d in deps]
        missing = [f for f in code_files(module, loss) if not _covered(f, resolved)]
        assert not missing, f"{stage} ({loss}): not in dvc.yaml deps: {missing}"
        others = [f"tmifpe/losses/{other}" for other in loss_packages() if other != loss]
        if per_item:  # the cell of one loss never depends on another loss package
            assert not [d for d in resolved if any(_covered(d, [o]) for o in others)], loss


@pytest.mark.parametrize("stage", RESULT_STAGES)
def test_result_stages_depend_on_the_data_and_model_loaders(stage: str) -> None:
    files = set(code_files(f"stages.{stage}", "ce" if stage == "attack" else None))
    assert {"tmifpe/data/sources.py", "tmifpe/models/zoo.py", "tmifpe/models/small_cnn.py",
            "tmifpe/models/robustbench_zoo.py", "tmifpe/pipeline/config.py",
            "tmifpe/runtime.py", "tmifpe/pipeline/stage_support.py"} <= files, stage


def test_declared_loss_scopes_are_the_losses_the_stages_run() -> None:
    assert LOSS_SCOPES["stages.fast"] == tuple(loss.value for loss in FAST_STAGE_LOSSES)
    assert LOSS_SCOPES["stages.ablations"] == ABLATION_LOSSES
    assert {v.loss for v in variants()} == set(ABLATION_LOSSES)
    assert "tmifpe/losses/dlr/loss.py" in code_files("stages.diagnostics")  # every loss
    assert not [f for f in code_files("stages.fast") if f.startswith("tmifpe/losses/ce/")]


def _suite(device: str) -> SuiteParams:
    return parse_suite(complete({
        "name": "t", "device": device,
        "datasets": {"digits": {"source": "digits", "n_examples": 8, "eps": 0.2}},
        "model_zoo": {"m": {"source": "trained", "dataset": "digits"}}, "models": ["m"],
        "losses": ["ce"], "budgets": [2], "precisions": {"fp32": {"n_targets": 0}}}))


def test_attack_cell_key_covers_its_code_and_device_kind(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tmifpe.losses import LossName
    from tmifpe.pipeline import cell

    spec = cell.CellSpec("m", LossName.CE, 2)
    data = tmp_path / "d.pt"
    data.write_bytes(b"data")
    key = cell.cell_key(_suite("cpu"), spec, data, [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cell.cell_key(_suite("cuda"), spec, data, []) != key  # another device kind
    assert cell.cell_key(_suite("cuda:0"), spec, data, []) == cell.cell_key(
        _suite("cuda"), spec, data, [])  # the same kind
    calls: list[tuple[str, str | None]] = []

    def fake_hash(stage: str, loss: str | None = None, root: Path = ROOT) -> str:
        calls.append((stage, loss))
        return code_hash(stage, loss, root)

    monkeypatch.setattr(cell, "code_hash", fake_hash)
    assert cell.cell_key(_suite("cpu"), spec, data, []) == key
    assert calls == [("stages.attack", "ce")]  # the files of the cell's dvc.yaml deps
