"""Models by grid key: the one door the stages use to get a float32 eval-mode model.

Every checkpoint is read from the model stage's output ``models/<key>/`` (DVC-tracked, cached
and pushable like any output): ``model.pt`` for trained and pyautoattack models, RobustBench's
own layout ``<dataset>/<threat model>/<id>.pt`` for RobustBench models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tmifpe.data.sources import IMAGE_SHAPE, N_CLASSES
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.params import DatasetParams, ModelParams

TRAINED_DIR = Path("models")


def trained_checkpoint(key: str) -> Path:
    return TRAINED_DIR / key / "model.pt"


def model_dir(key: str) -> Path:
    """The model stage's output folder of ``key``."""
    return TRAINED_DIR / key


def model_files(key: str, out_dir: Path = TRAINED_DIR) -> list[Path]:
    """Files of the model stage's output ``models/<key>/`` (manifest and checkpoint), sorted."""
    folder = out_dir / key
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def build_small_cnn(params: ModelParams, dataset_source: str) -> nn.Module:
    channels, size, _ = IMAGE_SHAPE[dataset_source]
    return SmallCNN(in_channels=channels, image_size=size, n_classes=N_CLASSES[dataset_source])


def load_model(key: str, params: ModelParams, ds: DatasetParams) -> nn.Module:
    """The model of grid key ``key`` (its zoo entry ``params``, trained on or evaluated with
    ``ds``) in eval mode, float32, inputs in [0,1]."""
    if params.source == "trained":
        path = trained_checkpoint(key)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: run `dvc repro` (the model stage trains it)"
            )
        model = build_small_cnn(params, ds.source)
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
        return model.float().eval()
    if params.source == "pyautoattack_resnet18":
        from tmifpe.models.autoattack_resnet import load_pyautoattack_resnet18

        return load_pyautoattack_resnet18(trained_checkpoint(key))
    from tmifpe.models.robustbench_zoo import load_staged

    assert params.id is not None  # guaranteed by ModelParams validation
    return load_staged(params.id, ds.source, model_dir(key))
