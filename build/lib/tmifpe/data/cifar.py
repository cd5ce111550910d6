"""CIFAR-10/100 test sets through torchvision's ``CIFAR10``/``CIFAR100`` classes (their
download, MD5s and ``<data_dir>/cifar-10-batches-py``/``cifar-100-python`` layout), RobustBench
convention: the first n test points in order, in [0,1]. Only the test batch and the meta file
are required (and MD5-checked); a download fetches torchvision's whole archive.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from tmifpe.data.integrity import DataIntegrityError
from tmifpe.data.torchvision_sets import configured_cifar, open_dataset

N_TEST = 10_000
_DATASETS: dict[str, type[CIFAR10]] = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def cifar_test_file(dataset: str, data_dir: Path) -> tuple[Path, str]:
    """Path of the test batch torchvision keeps for ``dataset`` and its published MD5."""
    cls = _dataset_class(dataset)
    ((name, md5),) = cls.test_list
    return Path(data_dir) / cls.base_folder / name, md5


def load_cifar(
    dataset: str,
    n_examples: int,
    data_dir: Path,
    *,
    download: bool = True,
    expected_md5: Mapping[str, str] | None = None,
) -> tuple[Tensor, Tensor]:
    """First ``n_examples`` CIFAR test points in order: x float32 (N, 3, 32, 32) in [0,1], y int64.

    ``expected_md5`` maps a file name (``test_batch``/``test``, ``batches.meta``/``meta``) to the
    MD5 to require instead of the published one. Raises ``DataIntegrityError`` for a corrupt
    file, ``FileNotFoundError`` for a missing one that cannot be fetched.
    """
    base = _dataset_class(dataset)
    if isinstance(n_examples, bool) or not isinstance(n_examples, int):
        raise ValueError(f"n_examples must be an int in 1..{N_TEST}, got {n_examples!r}")
    if not 1 <= n_examples <= N_TEST:
        raise ValueError(f"n_examples must be in 1..{N_TEST}, got {n_examples}")
    cls = configured_cifar(base, md5=expected_md5)
    folder = Path(data_dir) / cls.base_folder
    expected = {folder / f: m for f, m in cls.test_list}
    expected[folder / cls.meta["filename"]] = cls.meta["md5"]
    ds = open_dataset(cls, Path(data_dir), expected, train=False, download=download,
                      source=cls.url, hint=f" (it is inside {cls.url})")
    if len(ds.targets) < n_examples:
        raise DataIntegrityError(f"{folder}: holds {len(ds.targets)} test points, {n_examples} "
                                 "requested")
    x = torch.from_numpy(ds.data[:n_examples]).permute(0, 3, 1, 2).float().div_(255)  # HWC->CHW
    y = torch.as_tensor(ds.targets[:n_examples], dtype=torch.int64)
    return x.contiguous(), y


def _dataset_class(dataset: str) -> type[CIFAR10]:
    if dataset not in _DATASETS:
        raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got {dataset!r}")
    return _DATASETS[dataset]
