"""``tmifpe run -S key=value --suite NAME``: params.yaml composed as ``dvc exp run -S`` does.

With Hydra enabled in ``.dvc/config`` (``hydra.enabled``), ``dvc exp run -S`` composes
params.yaml from the config directory (``hydra.config_dir``, default ``conf``; config
``hydra.config_name``, default ``config``) with the overrides, loading the Hydra plugins found
under the repository root (``hydra.plugins_path``), then ``OmegaConf.resolve`` and
``OmegaConf.to_yaml``, and writes params.yaml into the workspace (dvc/utils/hydra.py,
``compose_and_dump``). This does the same with Hydra's public compose API and writes params.yaml
in the user's workspace, as ``dvc exp run`` does; the run's snapshot commit then holds it, so
the task graph, every worker's ``dvc repro`` and the final one here read the same params.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tmifpe.errors import UserError


def overrides_of(sets: list[str], suite: str | None) -> list[str]:
    """``--suite NAME`` is ``-S suite=NAME`` (first, so ``-S suite.x=...`` applies to it)."""
    for item in sets:
        if "=" not in item:
            raise UserError(f"-S {item!r} is not key=value (Hydra override, e.g. "
                            "-S 'suite.budgets=[10,20]')")
    return ([f"suite={suite}"] if suite else []) + list(sets)


def _hydra_config(repo: Path) -> dict[str, object]:
    """The ``hydra`` section of the repository's DVC config (system, global, repo, local levels
    merged), through DVC's public command line (``dvc config --list``; nothing written)."""
    if importlib.util.find_spec("dvc") is None:  # the [pipeline] extra, named by errors.handled
        raise ModuleNotFoundError("No module named 'dvc'", name="dvc")
    proc = subprocess.run([sys.executable, "-m", "dvc", "config", "--list"], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{repo}/.dvc/config: {' '.join(proc.stderr.split())}")
    out: dict[str, object] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("hydra."):
            name = key.removeprefix("hydra.")
            out[name] = value.strip().lower() == "true" if name == "enabled" else value.strip()
    return out


def compose(repo: Path, overrides: list[str]) -> str:
    """The params.yaml text ``dvc exp run -S <overrides>`` would write in ``repo``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    hydra_conf = _hydra_config(repo)
    if not hydra_conf.get("enabled", False):
        raise UserError(f"-S/--suite need DVC's Hydra composition: {repo}/.dvc/config has no "
                        "`hydra.enabled = true`")
    config_dir = (repo / str(hydra_conf.get("config_dir") or "conf")).resolve()
    plugins = str((repo / str(hydra_conf.get("plugins_path") or ".")).resolve())
    sys.path.append(plugins)  # as DVC's load_hydra_plugins
    try:
        Plugins.instance()
        try:
            with initialize_config_dir(str(config_dir), version_base=None):
                cfg = hydra_compose(config_name=str(hydra_conf.get("config_name") or "config"),
                                    overrides=overrides)
            OmegaConf.resolve(cfg)
        except (HydraException, OmegaConfBaseException) as err:
            first = " ".join(str(err).split())[:300]
            raise UserError(f"-S {' '.join(overrides)}: {first}") from None
    finally:
        sys.path.remove(plugins)
    return OmegaConf.to_yaml(cfg)


def write_params(repo: Path, overrides: list[str]) -> Path:
    """Compose and write ``repo/params.yaml`` (as ``dvc exp run -S``); returns its path."""
    text = compose(repo, overrides)
    path = repo / "params.yaml"
    tmp = path.with_name(f".params.yaml.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
