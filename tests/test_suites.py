"""Suites as Hydra configuration: params.yaml is exactly what DVC composes from conf/.

The composition here uses Hydra's public compose API with the repository's resolver plugin, as
``dvc exp run`` does (DVC: compose, ``OmegaConf.resolve``, ``OmegaConf.to_yaml``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tmifpe.pipeline.config import load_params, parse_suite

ROOT = Path(__file__).resolve().parents[1]


def _register_resolver() -> None:
    spec = importlib.util.spec_from_file_location(
        "hydra_plugins.tmifpe_grid", ROOT / "hydra_plugins/tmifpe_grid/__init__.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def composed(*overrides: str) -> str:
    _register_resolver()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def test_committed_params_are_the_default_composition() -> None:
    assert (ROOT / "params.yaml").read_text() == composed()


@pytest.mark.parametrize("suite", ["default", "paper"])
def test_every_suite_composes_to_valid_params(suite: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(composed(f"suite={suite}"))
    assert load_params(path).name == suite


def test_override_recomputes_the_grid(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(composed("suite.budgets=[10,200]", "suite.precisions.fp64.max_budget=200"))
    doc = yaml.safe_load(path.read_text())
    suite = load_params(path)
    assert suite.budgets == [10, 200]
    assert set(doc["grid"]["precisions"]) == {"b10", "b200"}
    # fp16 and bf16 stop at budget 20 in the default suite; fp64 cap lifted to 200 above
    assert list(doc["grid"]["precisions"]["b200"]) == ["fp32", "fp64"]
    assert doc["grid"]["cells"]["digits_std-ce"] == {"model": "digits_std", "loss": "ce",
                                                     "dataset": "digits"}
    assert len(doc["grid"]["cells"]) == 2 * 5  # one attack stage per model × loss


def test_paper_suite_grid_names_and_datasets() -> None:
    doc = yaml.safe_load(composed("suite=paper"))
    suite = parse_suite(doc["suite"])
    assert len(doc["grid"]["cells"]) == 7 * 5
    assert doc["grid"]["models"]["mnist_at"] == {"dataset": "mnist"}
    assert doc["grid"]["cells"]["c100_rade2021_r18-dlr"]["dataset"] == "cifar100"
    assert suite.model_zoo["c10_standard"].epochs is None  # not trained here: no recipe
