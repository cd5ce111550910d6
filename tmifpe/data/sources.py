"""Evaluation (and training) sets by source name: the one door the stages use for data."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tmifpe.params import DatasetParams
from tmifpe.storage import save_torch

N_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SHAPE = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32),
               "cifar100": (3, 32, 32)}


def build_dataset(params: DatasetParams, data_dir: Path) -> dict[str, Tensor]:
    """Tensors for one dataset entry: ``x_test``/``y_test`` (the first ``n_examples`` test
    points in order) and, where the pipeline trains models on it, ``x_train``/``y_train``."""
    if params.source == "digits":
        from tmifpe.data.digits import digits_split  # sklearn import only where needed

        split = digits_split(params.test_size, params.split_seed)
        n = params.n_examples
        if n > split.x_test.shape[0]:
            raise ValueError(
                f"datasets: n_examples={n} exceeds the {split.x_test.shape[0]} digits test points"
            )
        return {"x_train": split.x_train, "y_train": split.y_train,
                "x_test": split.x_test[:n], "y_test": split.y_test[:n]}
    if params.source == "mnist":
        from tmifpe.data.mnist import load_mnist, load_mnist_train

        x, y = load_mnist(params.n_examples, data_dir, expected_md5=params.md5)
        x_tr, y_tr = load_mnist_train(data_dir, expected_md5=params.md5)
        return {"x_train": x_tr, "y_train": y_tr, "x_test": x, "y_test": y}
    from tmifpe.data.cifar import load_cifar

    x, y = load_cifar(params.source, params.n_examples, data_dir, expected_md5=params.md5)
    return {"x_test": x, "y_test": y}


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
