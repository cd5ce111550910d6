"""MNIST through torchvision's ``MNIST`` class (its mirrors, MD5s and ``<data_dir>/MNIST/raw``
layout): the first n test points in order, and the training set for the suite's own model.

Staged offline copies go where torchvision puts its downloads: the published ``.gz`` files in
``<data_dir>/MNIST/raw/`` (torchvision checks their MD5 and extracts them), or the extracted
files there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor
from torchvision.datasets import MNIST

from tmifpe.data.integrity import DataIntegrityError
from tmifpe.data.torchvision_sets import configured_mnist, open_dataset

N_TEST = 10_000
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"


def raw_dir(data_dir: Path) -> Path:
    """Where torchvision keeps (and looks for) the MNIST files."""
    return Path(data_dir) / MNIST.__name__ / "raw"


def load_mnist(
    n_examples: int,
    data_dir: Path,
    *,
    download: bool = True,
    expected_md5: Mapping[str, str] | None = None,
) -> tuple[Tensor, Tensor]:
    """First ``n_examples`` MNIST test points: x float32 (N, 1, 28, 28) in [0,1], y int64 (N,).

    ``expected_md5`` maps a ``.gz`` file name to the MD5 to require instead of the published
    one. Raises ``DataIntegrityError`` for a corrupt staged file, ``FileNotFoundError`` for a
    missing one that cannot be fetched.
    """
    if isinstance(n_examples, bool) or not isinstance(n_examples, int):
        raise ValueError(f"n_examples must be an int in 1..{N_TEST}, got {n_examples!r}")
    if not 1 <= n_examples <= N_TEST:
        raise ValueError(f"n_examples must be in 1..{N_TEST}, got {n_examples}")
    x, y = _load(Path(data_dir), train=False, download=download, md5=expected_md5)
    if x.shape[0] < n_examples:
        raise DataIntegrityError(f"{raw_dir(data_dir)}: holds {x.shape[0]} test points, "
                                 f"{n_examples} requested")
    return x[:n_examples], y[:n_examples]


def load_mnist_train(
    data_dir: Path, *, download: bool = True, expected_md5: Mapping[str, str] | None = None
) -> tuple[Tensor, Tensor]:
    """The 60,000 MNIST training points (for the paper suite's own PGD-AT model)."""
    return _load(Path(data_dir), train=True, download=download, md5=expected_md5)


def _load(data_dir: Path, *, train: bool, download: bool,
          md5: Mapping[str, str] | None) -> tuple[Tensor, Tensor]:
    cls = configured_mnist(train=train, md5=md5)
    expected = {raw_dir(data_dir) / f: m for f, m in cls.resources}
    ds = open_dataset(cls, data_dir, expected, train=train, download=download,
                      source=" or ".join(MNIST.mirrors), hint="")
    x = ds.data.unsqueeze(1).float().div_(255)  # (N, 1, 28, 28)
    return x, ds.targets.long()
