"""CIFAR-10/100 test sets, RobustBench convention: the first n test points in order, in [0,1].

Files are read in torchvision's on-disk layout (``<data_dir>/cifar-10-batches-py/test_batch``,
``<data_dir>/cifar-100-python/test``) and checked against the MD5s published in torchvision's
``CIFAR10``/``CIFAR100`` class attributes before they are unpickled.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive

from tmifpe.data.integrity import (
    DataIntegrityError,
    expected_md5_for,
    guarded_download,
    verify_md5,
)

N_TEST = 10_000
_DATASETS: dict[str, type[CIFAR10]] = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_PIXELS = 3 * 32 * 32


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

    Downloads through torchvision only when the test file is missing and ``download`` is true.
    ``expected_md5`` maps a file name (``test_batch``/``test``) to the MD5 to require instead of
    the published one (for tests with hand-made files). Raises ``DataIntegrityError`` when the
    file is corrupt, ``FileNotFoundError`` when it is missing and cannot be fetched.
    """
    cls = _dataset_class(dataset)
    _check_n_examples(n_examples)
    path, published = cifar_test_file(dataset, data_dir)
    if not path.is_file():
        _fetch(cls, Path(data_dir), path, download)
    verify_md5(path, expected_md5_for(path.name, published, expected_md5))
    x, y = _read_batch(path)
    if len(y) < n_examples:
        raise DataIntegrityError(f"{path}: holds {len(y)} test points, {n_examples} requested")
    return x[:n_examples], y[:n_examples]


def _dataset_class(dataset: str) -> type[CIFAR10]:
    if dataset not in _DATASETS:
        raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got {dataset!r}")
    return _DATASETS[dataset]


def _check_n_examples(n_examples: int) -> None:
    if isinstance(n_examples, bool) or not isinstance(n_examples, int):
        raise ValueError(f"n_examples must be an int in 1..{N_TEST}, got {n_examples!r}")
    if not 1 <= n_examples <= N_TEST:
        raise ValueError(f"n_examples must be in 1..{N_TEST}, got {n_examples}")


def _fetch(cls: type[CIFAR10], data_dir: Path, path: Path, download: bool) -> None:
    hint = f" (it is inside {cls.url})"
    if not download:
        raise FileNotFoundError(f"{path} is missing and download=False; place the file there{hint}")
    guarded_download(
        lambda: download_and_extract_archive(
            cls.url, str(data_dir), filename=cls.filename, md5=cls.tgz_md5
        ),
        source=cls.url,
        missing=path,
        hint=hint,
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path} is still missing after extracting {cls.filename}")


def _read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Unpickle a CIFAR batch (only after its MD5 was checked) into (x, y)."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataIntegrityError(f"{path}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(entry, dict) or "data" not in entry:
        raise DataIntegrityError(f"{path}: no 'data' entry in the CIFAR batch")
    labels = entry.get("labels", entry.get("fine_labels"))  # CIFAR-10 / CIFAR-100
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataIntegrityError(f"{path}: data is {data.dtype} {data.shape}, want uint8 (N, 3072)")
    if labels is None or len(labels) != data.shape[0]:
        raise DataIntegrityError(f"{path}: labels missing or not one per image")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue), each plane row-major: CHW already.
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()).float().div_(255)  # (N, 3, 32, 32)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (N,)
    return x, y
