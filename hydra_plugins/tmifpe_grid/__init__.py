"""Hydra resolver ``tmifpe_grid``: ``grid: ${tmifpe_grid:${suite}}`` in conf/config.yaml.

DVC imports Hydra plugins from ``hydra_plugins/`` under the repository root (its
``hydra.plugins_path``, default the root) before composing params.yaml, so this registers the
resolver for ``dvc exp run``. The derivation is tmifpe/pipeline/suite_grid.py of this same checkout,
loaded by path (an installed tmifpe could be another checkout's).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_SOURCE = Path(__file__).resolve().parents[2] / "tmifpe" / "pipeline" / "suite_grid.py"


def _derive(suite: DictConfig) -> DictConfig:
    spec = importlib.util.spec_from_file_location("_tmifpe_suite_grid", _SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = OmegaConf.to_container(suite, resolve=True)
    grid: dict[str, Any] = module.derive_grid(raw)
    return OmegaConf.create(grid)  # a node: OmegaConf.resolve cannot store a plain dict


if not OmegaConf.has_resolver("tmifpe_grid"):
    OmegaConf.register_new_resolver("tmifpe_grid", _derive)
