"""RobustBench models: registry look-up, offline-first checkpoint loading, reported accuracies.

The architecture comes from robustbench's model zoo and the key renaming from robustbench's own
helpers; the checkpoint itself is read here with ``torch.load(..., weights_only=True)``, because
``robustbench.utils.load_model`` calls ``torch.load`` without ``weights_only`` and so depends on
torch's default (which the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable can flip).
Only single-checkpoint models hosted on Google Drive are supported (not ensembles, not timm-hub
models). robustbench is imported lazily: it is slow to import (timm, pkg_resources).
"""

from __future__ import annotations

import difflib
import json
import pickle
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tmifpe.data.integrity import guarded_download

DATASETS = ("cifar10", "cifar100")
_HTML_PREFIXES = (b"<!doctype", b"<html")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (an HTML page, not a tensor archive, ...)."""


def list_robustbench_models(dataset: str, threat_model: str = "Linf") -> list[str]:
    """Model IDs robustbench registers for ``dataset`` and ``threat_model``, in its order."""
    return list(_registry(dataset, threat_model))


def checkpoint_path(
    model_id: str, dataset: str, model_dir: Path, threat_model: str = "Linf"
) -> Path:
    """Where robustbench keeps (and looks for) the checkpoint of ``model_id``."""
    return Path(model_dir) / dataset / threat_model / f"{model_id}.pt"


def load_robustbench(
    model_id: str, dataset: str, model_dir: Path, *, threat_model: str = "Linf"
) -> nn.Module:
    """A RobustBench model in eval mode, float32, taking inputs in [0,1] (normalisation inside).

    Loads ``<model_dir>/<dataset>/<threat_model>/<model_id>.pt`` if present (no network), else
    downloads it with robustbench's Google Drive helper. Raises ``ValueError`` for an unknown or
    unsupported ID, ``CheckpointError`` for an HTML page or unreadable file, ``FileNotFoundError``
    when the file is missing and cannot be downloaded.
    """
    from robustbench.model_zoo.enums import BenchmarkDataset
    from robustbench.utils import _safe_load_state_dict

    entry = _entry(model_id, dataset, threat_model)
    path = checkpoint_path(model_id, dataset, model_dir, threat_model)
    if not path.is_file():
        _download(entry["gdrive_id"], path)
    _reject_html(path)
    state_dict = _state_dict(path, model_id)
    model = entry["model"]()
    model = _safe_load_state_dict(model, model_id, state_dict, BenchmarkDataset(dataset))
    return model.float().eval()


def reported_accuracy(dataset: str, model_id: str) -> dict[str, Any] | None:
    """The published clean and AutoAttack accuracies (percent) of a model, or None if not listed.

    Entries come from ``tmifpe/leaderboard.json`` (RobustBench model_info for CIFAR, the
    AutoAttack README for MNIST), each with ``clean_acc``, ``autoattack_acc``, ``eps``, ``source``.
    """
    entry = _leaderboard().get(dataset, {}).get(model_id)
    return None if entry is None else dict(entry)


@lru_cache(maxsize=1)
def _leaderboard() -> dict[str, dict[str, dict[str, Any]]]:
    text = resources.files("tmifpe").joinpath("leaderboard.json").read_text(encoding="utf-8")
    return json.loads(text)


def _registry(dataset: str, threat_model: str) -> dict[str, dict[str, Any]]:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    by_threat = model_dicts[BenchmarkDataset(dataset)]
    known = [t.value for t in by_threat]
    if threat_model not in known:
        raise ValueError(f"threat_model for {dataset} must be one of {known}, got {threat_model!r}")
    return by_threat[ThreatModel(threat_model)]


def _entry(model_id: str, dataset: str, threat_model: str) -> dict[str, Any]:
    """The registry entry of ``model_id``; one-line ValueError with close matches if unknown."""
    models = _registry(dataset, threat_model)
    if model_id not in models:
        close = difflib.get_close_matches(model_id, list(models), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "no close match"
        raise ValueError(
            f"unknown RobustBench model {model_id!r} for {dataset}/{threat_model}; {hint}"
        )
    entry = models[model_id]
    if not isinstance(entry["gdrive_id"], str) or _is_timm_hosted(model_id, dataset, threat_model):
        raise ValueError(
            f"RobustBench model {model_id!r} is an ensemble or hosted on the timm hub; "
            "only single-checkpoint Google Drive models are supported"
        )
    return entry


def _is_timm_hosted(model_id: str, dataset: str, threat_model: str) -> bool:
    import timm  # robustbench's rule: such models load from the timm hub, not from model_dir

    return timm.is_model(f"{model_id.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}")


def _download(gdrive_id: str, path: Path) -> None:
    from gdown.exceptions import FileURLRetrievalError
    from robustbench.utils import download_gdrive_new

    def fetch() -> None:
        try:
            download_gdrive_new(gdrive_id, path)
        except FileURLRetrievalError as exc:  # gdown's own error is not an OSError
            raise RuntimeError(str(exc)) from exc

    path.parent.mkdir(parents=True, exist_ok=True)
    guarded_download(fetch, source=f"Google Drive (id {gdrive_id})", missing=path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is still missing after the download; place it there")


def _reject_html(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(1024).lstrip().lower()
    if head.startswith(_HTML_PREFIXES):
        raise CheckpointError(
            f"{path} is an HTML page, not a checkpoint (a failed Google Drive download); "
            "delete it and download it again, or place the real checkpoint there"
        )


def _state_dict(path: Path, model_id: str) -> dict[str, torch.Tensor]:
    """Read the checkpoint safely and apply robustbench's unwrapping and key renaming."""
    from robustbench.utils import rm_substr_from_state_dict

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a loadable weights-only checkpoint ({first_line})"
        ) from exc
    if "Kireev2021Effectiveness" in model_id or model_id == "Andriushchenko2020Understanding":
        checkpoint = checkpoint["last"]  # robustbench takes the last of ('last', 'best')
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state_dict")
    # robustbench's rule, kept as is: drop the first len(substr) characters of any key that
    # contains the substring (for keys that start with it, that strips the prefix).
    state_dict = rm_substr_from_state_dict(checkpoint, "module.")
    return rm_substr_from_state_dict(state_dict, "model.")
