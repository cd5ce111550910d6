"""The embedded default dataset: scikit-learn's bundled ``load_digits`` (8x8, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor


@dataclass(frozen=True)
class Split:
    x_train: Tensor  # (N, 1, 8, 8) float32 in [0,1]
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor
    test_index: Tensor  # (N,) int64: row of each test point in sklearn's data array


def digits_split(test_size: float, seed: int) -> Split:
    """Real handwritten digits (1797 images, 16 grey levels), pixels scaled to [0,1] by /16,
    split stratified by label with a fixed seed. Deterministic for given (test_size, seed)."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    rows = np.arange(len(labels))
    tr, te = train_test_split(rows, test_size=test_size, random_state=seed, stratify=labels)
    te = np.sort(te)  # the test points in sklearn's order, as RobustBench takes the first n
    return Split(
        x_train=torch.from_numpy(images[tr]),
        y_train=torch.from_numpy(labels[tr]),
        x_test=torch.from_numpy(images[te]),
        y_test=torch.from_numpy(labels[te]),
        test_index=torch.from_numpy(te),
    )
