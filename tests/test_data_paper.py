"""Data loaders for the paper datasets: MNIST from the real original files, CIFAR from hand-made
files in torchvision's exact on-disk layout. Offline; no monkeypatching of the download path."""

from __future__ import annotations

import gzip
import pickle
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100, MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

from tmifpe.data.cifar import load_cifar
from tmifpe.data.integrity import DataIntegrityError, md5_of
from tmifpe.data.mnist import IMAGES_FILE, LABELS_FILE, load_mnist

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not MNIST_DIR.is_dir(), reason=f"MNIST originals not present at {MNIST_DIR}"
)
# From MNIST_DIR/README.md (header facts of the original test files).
README_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9]
README_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _reachable(url_host: str) -> bool:
    try:
        socket.create_connection((url_host, 443), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def short_socket_timeout() -> Iterator[None]:
    """Bound every socket operation so a download attempt can never hang the test."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    yield
    socket.setdefaulttimeout(previous)


# ---------------------------------------------------------------- MNIST (real files)


@needs_mnist
def test_mnist_shapes_range_labels_and_counts():
    x, y = load_mnist(10_000, MNIST_DIR, download=False)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:8].tolist() == README_FIRST_LABELS
    assert torch.bincount(y, minlength=10).tolist() == README_CLASS_COUNTS


@needs_mnist
def test_mnist_matches_torchvision_idx_reader(tmp_path):
    """An independent parse (torchvision's IDX reader on the decompressed files) agrees."""
    for name in (IMAGES_FILE, LABELS_FILE):
        with gzip.open(MNIST_DIR / name, "rb") as src:
            (tmp_path / name.removesuffix(".gz")).write_bytes(src.read())
    images = read_image_file(str(tmp_path / IMAGES_FILE.removesuffix(".gz")))  # (N, 28, 28)
    labels = read_label_file(str(tmp_path / LABELS_FILE.removesuffix(".gz")))
    x, y = load_mnist(300, MNIST_DIR, download=False)
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), images[:300])
    assert torch.equal(y, labels[:300].long())


@needs_mnist
def test_mnist_files_have_published_md5():
    published = dict(MNIST.resources)
    for name in (IMAGES_FILE, LABELS_FILE):
        assert md5_of(MNIST_DIR / name) == published[name]


@needs_mnist
def test_mnist_torchvision_layout_and_prefix(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (IMAGES_FILE, LABELS_FILE):
        shutil.copy(MNIST_DIR / name, raw / name)
    x_all, y_all = load_mnist(20, MNIST_DIR, download=False)
    x, y = load_mnist(7, tmp_path, download=False)
    assert torch.equal(x, x_all[:7]) and torch.equal(y, y_all[:7])


@needs_mnist
def test_mnist_truncated_file_names_the_file(tmp_path):
    shutil.copy(MNIST_DIR / LABELS_FILE, tmp_path / LABELS_FILE)
    data = (MNIST_DIR / IMAGES_FILE).read_bytes()
    (tmp_path / IMAGES_FILE).write_bytes(data[: len(data) // 2])
    published = dict(MNIST.resources)[IMAGES_FILE]
    with pytest.raises(DataIntegrityError, match=published) as info:
        load_mnist(10, tmp_path, download=False)
    assert str(tmp_path / IMAGES_FILE) in str(info.value)
    # Even when the md5 is made to match, the broken gzip stream is a DataIntegrityError.
    forced = {IMAGES_FILE: md5_of(tmp_path / IMAGES_FILE)}
    with pytest.raises(DataIntegrityError, match="gzip"):
        load_mnist(10, tmp_path, download=False, expected_md5=forced)


def test_mnist_bad_idx_header_is_integrity_error(tmp_path):
    header = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big")  # a labels header
    for name in (IMAGES_FILE, LABELS_FILE):
        (tmp_path / name).write_bytes(gzip.compress(header + bytes(3)))
    md5s = {name: md5_of(tmp_path / name) for name in (IMAGES_FILE, LABELS_FILE)}
    with pytest.raises(DataIntegrityError, match="magic number 2049, expected 2051"):
        load_mnist(1, tmp_path, download=False, expected_md5=md5s)


def test_mnist_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        load_mnist(5, tmp_path, download=False)
    assert str(tmp_path / IMAGES_FILE) in str(info.value)


@pytest.mark.usefixtures("short_socket_timeout")
def test_mnist_download_offline_is_one_line_error(tmp_path):
    if _reachable("ossci-datasets.s3.amazonaws.com"):
        pytest.skip("network reachable: this test checks the offline failure")
    with pytest.raises(FileNotFoundError, match="place the file at") as info:
        load_mnist(5, tmp_path, download=True)
    assert "\n" not in str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / IMAGES_FILE) in str(info.value)


@pytest.mark.parametrize("n", [0, -1, 10_001])
def test_n_examples_out_of_range(tmp_path, n):
    with pytest.raises(ValueError, match=str(n)):
        load_mnist(n, tmp_path, download=False)
    with pytest.raises(ValueError, match=str(n)):
        load_cifar("cifar10", n, tmp_path, download=False)


# ---------------------------------------------------------------- CIFAR (hand-made files)


def _hand_made_images(n: int) -> np.ndarray:
    """(n, 32, 32, 3) HWC uint8 images whose every pixel value encodes (n, h, w, c)."""
    i, h, w, c = np.meshgrid(
        np.arange(n), np.arange(32), np.arange(32), np.arange(3), indexing="ij"
    )
    return ((i * 7 + h * 3 + w * 5 + c * 101) % 256).astype(np.uint8)


def _write_cifar(root: Path, dataset: str, images: np.ndarray, labels: list[int]) -> Path:
    """Write a test batch and its meta file exactly as torchvision expects them on disk."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # rows: R plane, G, B
    names = [f"img_{k}.png" for k in range(len(images))]
    if dataset == "cifar10":
        folder, test_name, meta_name = CIFAR10.base_folder, "test_batch", "batches.meta"
        batch = {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data}
        meta = {"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": len(labels)}
    else:
        folder, test_name, meta_name = CIFAR100.base_folder, "test", "meta"
        batch = {"batch_label": "testing batch 1 of 1", "fine_labels": labels, "data": data}
        batch["coarse_labels"] = [k % 20 for k in labels]
        meta = {"fine_label_names": [f"f{k}" for k in range(100)], "coarse_label_names": []}
    batch["filenames"] = names
    (root / folder).mkdir(parents=True)
    (root / folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))
    path = root / folder / test_name
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


def test_cifar10_published_md5_rejects_hand_made_file(tmp_path):
    path = _write_cifar(tmp_path, "cifar10", _hand_made_images(4), [3, 1, 4, 1])
    ((_, published),) = CIFAR10.test_list
    with pytest.raises(DataIntegrityError, match=published) as info:
        load_cifar("cifar10", 4, tmp_path, download=False)
    message = str(info.value)
    assert str(path) in message and md5_of(path) in message and "\n" not in message


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_matching_md5_loads_pixels_in_chw_order(tmp_path, dataset):
    images = _hand_made_images(5)  # (5, 32, 32, 3)
    labels = [9, 0, 7, 2, 5] if dataset == "cifar10" else [99, 0, 42, 17, 63]
    path = _write_cifar(tmp_path, dataset, images, labels)
    x, y = load_cifar(dataset, 3, tmp_path, download=False, expected_md5={path.name: md5_of(path)})
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == labels[:3] and y.dtype == torch.int64
    expected = torch.from_numpy(images[:3]).permute(0, 3, 1, 2).float() / 255  # HWC -> CHW
    assert torch.equal(x, expected)
    # one pixel by hand: image 2, channel 1 (green), row 4, column 9
    assert round(float(x[2, 1, 4, 9]) * 255) == (2 * 7 + 4 * 3 + 9 * 5 + 1 * 101) % 256


def test_cifar_more_points_than_in_file(tmp_path):
    path = _write_cifar(tmp_path, "cifar10", _hand_made_images(2), [0, 1])
    with pytest.raises(DataIntegrityError, match="holds 2 test points"):
        load_cifar("cifar10", 3, tmp_path, download=False, expected_md5={path.name: md5_of(path)})


def test_cifar_garbage_with_matching_md5_is_integrity_error(tmp_path):
    path = tmp_path / CIFAR10.base_folder / "test_batch"
    path.parent.mkdir()
    path.write_bytes(b"\x80\x02}q\x00(X")  # a truncated pickle
    with pytest.raises(DataIntegrityError, match="not a readable CIFAR batch"):
        load_cifar("cifar10", 1, tmp_path, download=False, expected_md5={path.name: md5_of(path)})


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        load_cifar("cifar100", 5, tmp_path, download=False)
    assert str(tmp_path / "cifar-100-python" / "test") in str(info.value)


@pytest.mark.usefixtures("short_socket_timeout")
def test_cifar_download_offline_is_one_line_error(tmp_path):
    if _reachable("www.cs.toronto.edu"):
        pytest.skip("network reachable: this test checks the offline failure")
    with pytest.raises(FileNotFoundError, match="place the file at") as info:
        load_cifar("cifar10", 5, tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message and CIFAR10.url in message
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in message


def test_cifar_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="svhn"):
        load_cifar("svhn", 5, tmp_path)
