"""MNIST test set read directly from the original gzip-compressed IDX files, first n in order.

Looks for the files in ``<data_dir>/`` and in torchvision's layout ``<data_dir>/MNIST/raw/``,
checks the MD5s torchvision publishes (``torchvision.datasets.MNIST.resources``) and the IDX
headers (magic number, dimensions, payload size) before decoding.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import MNIST
from torchvision.datasets.utils import download_url

from tmifpe.data.integrity import (
    DataIntegrityError,
    expected_md5_for,
    guarded_download,
    verify_md5,
)

N_TEST = 10_000
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
N_TRAIN = 60_000
TRAIN_IMAGES_FILE = "train-images-idx3-ubyte.gz"
TRAIN_LABELS_FILE = "train-labels-idx1-ubyte.gz"
IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension
_PUBLISHED_MD5: dict[str, str] = dict(MNIST.resources)


def load_mnist(
    n_examples: int,
    data_dir: Path,
    *,
    download: bool = True,
    expected_md5: Mapping[str, str] | None = None,
) -> tuple[Tensor, Tensor]:
    """First ``n_examples`` MNIST test points: x float32 (N, 1, 28, 28) in [0,1], y int64 (N,).

    Downloads the two test files through torchvision (into ``<data_dir>/MNIST/raw``) only when
    missing and ``download`` is true. ``expected_md5`` maps a file name to the MD5 to require
    instead of the published one. Raises ``DataIntegrityError`` for a corrupt file,
    ``FileNotFoundError`` for a missing one that cannot be fetched.
    """
    if isinstance(n_examples, bool) or not isinstance(n_examples, int):
        raise ValueError(f"n_examples must be an int in 1..{N_TEST}, got {n_examples!r}")
    if not 1 <= n_examples <= N_TEST:
        raise ValueError(f"n_examples must be in 1..{N_TEST}, got {n_examples}")
    return _load_pair(IMAGES_FILE, LABELS_FILE, n_examples, Path(data_dir), download,
                      expected_md5)


def load_mnist_train(
    data_dir: Path, *, download: bool = True, expected_md5: Mapping[str, str] | None = None
) -> tuple[Tensor, Tensor]:
    """The 60,000 MNIST training points (for the paper suite's own PGD-AT model), same checks."""
    return _load_pair(TRAIN_IMAGES_FILE, TRAIN_LABELS_FILE, N_TRAIN, Path(data_dir), download,
                      expected_md5)


def _load_pair(
    images_file: str, labels_file: str, n_examples: int, data_dir: Path, download: bool,
    expected_md5: Mapping[str, str] | None,
) -> tuple[Tensor, Tensor]:
    paths = {name: _locate(name, data_dir, download) for name in (images_file, labels_file)}
    for name, path in paths.items():
        verify_md5(path, expected_md5_for(name, _PUBLISHED_MD5[name], expected_md5))
    images = _read_idx(paths[images_file], IMAGES_MAGIC, (28, 28))  # (N, 28, 28) uint8
    labels = _read_idx(paths[labels_file], LABELS_MAGIC, ())  # (N,) uint8
    if images.shape[0] != labels.shape[0]:
        raise DataIntegrityError(
            f"{paths[images_file]} holds {images.shape[0]} images but "
            f"{paths[labels_file]} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataIntegrityError(f"{paths[labels_file]}: label {int(labels.max())} out of 0..9")
    if images.shape[0] < n_examples:
        raise DataIntegrityError(
            f"{paths[images_file]}: holds {images.shape[0]} test points, {n_examples} requested"
        )
    x = torch.from_numpy(images[:n_examples].copy()).float().div_(255).unsqueeze(1)  # (N,1,28,28)
    y = torch.from_numpy(labels[:n_examples].astype(np.int64))  # (N,)
    return x, y


def _locate(name: str, data_dir: Path, download: bool) -> Path:
    """The file in ``data_dir`` or ``data_dir/MNIST/raw``; downloaded into the latter if allowed."""
    raw_dir = data_dir / MNIST.__name__ / "raw"
    for candidate in (data_dir / name, raw_dir / name):
        if candidate.is_file():
            return candidate
    if not download:
        raise FileNotFoundError(
            f"{name} is missing and download=False; place it at {data_dir / name} "
            f"(or {raw_dir / name})"
        )
    guarded_download(
        lambda: _download_from_mirrors(name, raw_dir),
        source=" or ".join(MNIST.mirrors),
        missing=raw_dir / name,
    )
    return raw_dir / name


def _download_from_mirrors(name: str, raw_dir: Path) -> None:
    """torchvision's download, trying its mirrors in order; re-raises the first failure."""
    first_error: OSError | RuntimeError | None = None
    for mirror in MNIST.mirrors:
        try:
            download_url(f"{mirror}{name}", str(raw_dir), filename=name, md5=_PUBLISHED_MD5[name])
            return
        except (OSError, RuntimeError) as exc:
            first_error = first_error or exc
    raise first_error or RuntimeError("torchvision lists no MNIST mirrors")


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Decode a gzip-compressed uint8 IDX file with the given magic number and item shape."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError
        raise DataIntegrityError(f"{path}: not a readable gzip file ({exc})") from exc
    ndim = 1 + len(item_shape)
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataIntegrityError(f"{path}: IDX magic number {found}, expected {magic}")
    if len(raw) < header:
        raise DataIntegrityError(f"{path}: {len(raw)} bytes, shorter than an IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != item_shape:
        raise DataIntegrityError(f"{path}: item shape {dims[1:]}, expected {item_shape}")
    payload = raw[header:]
    if len(payload) != math.prod(dims):
        raise DataIntegrityError(
            f"{path}: {len(payload)} data bytes, header {dims} says {math.prod(dims)}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)
