"""The data stage's files: the one door the stages use for data (building them from the
sources: :mod:`tmifpe.data.build`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tmifpe.storage import save_torch

N_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SHAPE = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32),
               "cifar100": (3, 32, 32)}


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """Atomic ``torch.save`` of contiguous copies (:func:`tmifpe.storage.save_torch`)."""
    save_torch({k: v.contiguous() for k, v in tensors.items()}, path)


def load_tensors(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` (the data stage writes it)")
    return torch.load(path, weights_only=True, map_location="cpu")


def load_eval_points(path: Path, n_examples: int) -> tuple[Tensor, Tensor]:
    """The first ``n_examples`` test points (x, y) of a data stage's output, in order."""
    tensors = load_tensors(path)
    return tensors["x_test"][:n_examples], tensors["y_test"][:n_examples]
