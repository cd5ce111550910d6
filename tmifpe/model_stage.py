"""The model stage: train the pipeline's own models, or load and fingerprint external ones.

Writes ``models/<key>/manifest.json`` (source, checkpoint sha256, clean accuracy, versions)
and, for trained models, the state_dict ``models/<key>/model.pt``. Attack cells depend on that
folder, so a changed checkpoint re-runs exactly the cells of that model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

import tmifpe
from tmifpe.atomic import write_json
from tmifpe.config import SuiteParams
from tmifpe.data.sources import load_tensors
from tmifpe.models.zoo import build_small_cnn, load_model, trained_checkpoint
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.runtime import resolve_device
from tmifpe.train import TrainConfig, train_model


def model_files(key: str, out_dir: Path = Path("models")) -> list[Path]:
    """Files that identify the model of ``key`` (manifest, and checkpoint when trained here)."""
    return [p for p in (out_dir / key / "manifest.json", out_dir / key / "model.pt")
            if p.exists()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_model(suite: SuiteParams, key: str, *, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    if key not in suite.model_zoo:
        raise ValueError(f"unknown model {key!r}; expected one of: {', '.join(suite.model_zoo)}")
    params = suite.model_zoo[key]
    ds_key, ds = suite.dataset_of(key)
    tensors = load_tensors(data_dir / f"{ds_key}.pt")
    manifest: dict[str, Any] = {"key": key, "source": params.source, "dataset": ds_key,
                                "params": params.model_dump(mode="json"),
                                "tmifpe_version": tmifpe.__version__,
                                "torch_version": torch.__version__}
    if params.source == "trained":
        if "x_train" not in tensors:
            raise ValueError(f"dataset {ds_key!r} has no training split to train {key!r} on")
        torch.manual_seed(params.seed)  # the initial weights are part of the seeded result
        model = build_small_cnn(params, ds.source)
        cfg = TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                          seed=params.seed, adv_eps=params.adv_eps, adv_steps=params.adv_steps)
        history = train_model(model, tensors["x_train"], tensors["y_train"], cfg,
                              device=resolve_device(suite.device))
        ckpt = trained_checkpoint(key)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(f".{ckpt.name}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(ckpt)
        manifest["train_loss"] = [round(v, 6) for v in history]
        manifest["checkpoint_sha256"] = _sha256(ckpt)
    else:
        model = load_model(suite, key)
        manifest["id"] = params.id
        manifest["parameters_sha256"] = _state_sha256(model)
    ref = PrecisionModel(model, Precision.FP32)
    with torch.no_grad():
        pred = ref(tensors["x_test"][: ds.n_examples]).argmax(dim=1)
    manifest["n_eval"] = int(pred.shape[0])
    manifest["clean_accuracy"] = round(
        (pred == tensors["y_test"][: ds.n_examples]).double().mean().item(), 6)
    write_json(manifest, out_dir / key / "manifest.json")
    return manifest


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
