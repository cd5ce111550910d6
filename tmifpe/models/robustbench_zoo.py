"""RobustBench models: registry look-up, offline-first checkpoint loading, reported accuracies.

Models load with robustbench's own ``robustbench.utils.load_model`` from a checkpoint file that
is already in place (the model stage puts it in its output ``models/<key>/``). robustbench 1.1.1
calls ``torch.load(path, map_location=...)`` without ``weights_only``, so the mode would follow
torch's default, which the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable flips; the
call is therefore made with torch's documented ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` set (and the
opposite variable cleared), which makes every ``torch.load`` inside it weights-only.
Only single-checkpoint models hosted on Google Drive are supported (not ensembles, not timm-hub
models). robustbench is imported lazily: it is slow to import (timm, pkg_resources).
"""

from __future__ import annotations

import difflib
import json
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from tmifpe._compat.autoattack_alias import import_robustbench
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
    entry = _entry(model_id, dataset, threat_model)
    path = checkpoint_path(model_id, dataset, model_dir, threat_model)
    if not path.is_file():
        _download(entry["gdrive_id"], path)
    return load_staged(model_id, dataset, model_dir, threat_model=threat_model)


def load_staged(
    model_id: str, dataset: str, model_dir: Path, *, threat_model: str = "Linf"
) -> nn.Module:
    """``robustbench.utils.load_model`` on the checkpoint already at ``checkpoint_path`` (never
    downloads), weights-only; float32, eval mode. Raises like :func:`load_robustbench`."""
    import_robustbench()  # robustbench imports `autoattack`: tmifpe's alias first
    from robustbench.utils import load_model

    _entry(model_id, dataset, threat_model)
    path = checkpoint_path(model_id, dataset, model_dir, threat_model)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro model@...` (the model stage "
                                "stages the checkpoint there)")
    _reject_html(path)
    try:
        with _weights_only_loads():
            model = load_model(model_id, model_dir=model_dir, dataset=dataset,
                               threat_model=threat_model)
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a loadable weights-only checkpoint "
                              f"({_first_line(exc)})") from exc
    except RuntimeError as exc:  # torch: bad archive; robustbench: keys do not match the arch
        raise CheckpointError(f"{path} cannot be loaded into {model_id} "
                              f"({_first_line(exc)})") from exc
    return model.float().eval()


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside is weights-only (torch's documented environment switch)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    import_robustbench()  # robustbench imports `autoattack`: tmifpe's alias first
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
    import_robustbench()  # robustbench imports `autoattack`: tmifpe's alias first
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
