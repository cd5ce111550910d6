"""The model stage: train the pipeline's own models, or stage and fingerprint external ones.

Every checkpoint goes into the stage's DVC output ``models/<key>/``: the state_dict
``model.pt`` of a trained model or of the pyautoattack ResNet-18 (copied from the wheel), or a
RobustBench checkpoint in robustbench's layout ``<dataset>/Linf/<id>.pt`` (downloaded once into
the local cache ``<data_dir>/robustbench/`` and copied from there). Plus ``manifest.json``
(source, checkpoint sha256, clean accuracy, versions). Attack cells depend on that folder, so a
changed checkpoint re-runs exactly the cells of that model, and DVC caches and pushes it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import tmifpe
from tmifpe.choices import check_choice
from tmifpe.data.sources import load_tensors
from tmifpe.models.zoo import build_small_cnn, load_model, trained_checkpoint
from tmifpe.params import ModelParams
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.train import TrainConfig, train_model
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.runtime import resolve_device
from tmifpe.storage import save_torch, sha256_path, write_json


def train_recipe(
    params: ModelParams, dataset_source: str, x_train: Tensor, y_train: Tensor, *,
    device: torch.device | str = "cpu", seed: int | None = None,
) -> tuple[nn.Module, list[float]]:
    """A ``trained`` model's recipe: seeded initial weights, then :func:`train_model`; returns
    (model in eval mode on the CPU, mean training loss per epoch). ``seed`` overrides the
    recipe's ``params.seed`` (independently trained replicas, benchmarks/seed_spread.py)."""
    if params.source != "trained":
        raise ValueError(f"model source {params.source!r} has no training recipe (need 'trained')")
    seed = params.seed if seed is None else seed
    assert seed is not None  # guaranteed by ModelParams validation for trained models
    torch.manual_seed(seed)  # the initial weights are part of the seeded result
    model = build_small_cnn(params, dataset_source)
    cfg = TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                      seed=seed, adv_eps=params.adv_eps, adv_steps=params.adv_steps)
    history = train_model(model, x_train, y_train, cfg, device=device)
    return model, history


def prepare_model(suite: SuiteParams, key: str, *, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    check_choice(key, suite.model_zoo, "model")
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
        model, history = train_recipe(params, ds.source, tensors["x_train"], tensors["y_train"],
                                      device=resolve_device(suite.device))
        ckpt = trained_checkpoint(key)
        save_torch(model.state_dict(), ckpt)  # atomic, equal weights give equal bytes
        manifest["train_loss"] = [round(v, 6) for v in history]
        manifest["checkpoint_sha256"] = sha256_path(ckpt)
    else:
        ckpt = _stage_checkpoint(suite, key, out_dir)
        manifest["checkpoint_sha256"] = sha256_path(ckpt)
        model = load_model(key, params, ds)  # from the staged file, as every later stage does
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


def _stage_checkpoint(suite: SuiteParams, key: str, out_dir: Path) -> Path:
    """Copy the external checkpoint of ``key`` into ``out_dir/key`` (atomic); its path."""
    params = suite.model_zoo[key]
    _, ds = suite.dataset_of(key)
    if params.source == "pyautoattack_resnet18":
        from tmifpe.models.autoattack_resnet import CHECKPOINT

        src, dst = CHECKPOINT, out_dir / key / "model.pt"
    else:
        from tmifpe.models.robustbench_zoo import checkpoint_path, load_robustbench

        assert params.id is not None  # guaranteed by ModelParams validation
        cache = Path(suite.data_dir) / "robustbench"
        src = checkpoint_path(params.id, ds.source, cache)
        if not src.is_file():
            load_robustbench(params.id, ds.source, cache)  # downloads into the cache, checks it
        dst = checkpoint_path(params.id, ds.source, out_dir / key)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return dst


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
