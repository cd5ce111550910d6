"""Paper datasets through torchvision's classes: MNIST from the real original files staged in
torchvision's layout, CIFAR from hand-made files in its layout (MD5 overrides). Offline: the
tests that could reach the network block name resolution, so nothing is ever downloaded."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100, MNIST

from tmifpe.data.cifar import load_cifar
from tmifpe.data.folder import ImageFolderError, load_image_folder
from tmifpe.data.integrity import DataIntegrityError, md5_of
from tmifpe.data.mnist import IMAGES_FILE, LABELS_FILE, load_mnist, raw_dir

# The MNIST originals: shared/ beside the checkout (as CI lays it out) or TMIFPE_MNIST_DIR.
_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist",
               *([Path(os.environ["TMIFPE_MNIST_DIR"])] if "TMIFPE_MNIST_DIR" in os.environ
                 else [])]
MNIST_DIR = next((p for p in _CANDIDATES if (p / IMAGES_FILE).is_file()), _CANDIDATES[0])
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / IMAGES_FILE).is_file(),
    reason=f"MNIST originals not present at {MNIST_DIR} (set TMIFPE_MNIST_DIR)")
# From MNIST_DIR/README.md (header facts of the original test files).
README_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9]
README_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def offline(monkeypatch) -> Iterator[None]:
    """No name resolution: any download attempt fails at once instead of reaching a host."""
    def refuse(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def _stage_mnist(root: Path) -> Path:
    raw = raw_dir(root)
    raw.mkdir(parents=True)
    for name in (IMAGES_FILE, LABELS_FILE):
        shutil.copy(MNIST_DIR / name, raw / name)
    return raw


# ---------------------------------------------------------------- MNIST (real files)


@needs_mnist
@pytest.mark.usefixtures("offline")
def test_mnist_staged_originals_load_offline(tmp_path):
    _stage_mnist(tmp_path)
    x, y = load_mnist(10_000, tmp_path)  # download=True: torchvision checks MD5s, extracts
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:8].tolist() == README_FIRST_LABELS
    assert torch.bincount(y, minlength=10).tolist() == README_CLASS_COUNTS
    # an independent decode of the IDX payload (16-byte header) gives the same pixels
    raw = gzip.decompress((MNIST_DIR / IMAGES_FILE).read_bytes())
    pixels = np.frombuffer(raw[16:], dtype=np.uint8).reshape(10_000, 28, 28)
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(pixels.copy()))
    # the first n in order; a second call reads the extracted files
    x7, y7 = load_mnist(7, tmp_path, download=False)
    assert torch.equal(x7, x[:7]) and torch.equal(y7, y[:7])


@needs_mnist
def test_mnist_files_have_published_md5():
    published = dict(MNIST.resources)
    for name in (IMAGES_FILE, LABELS_FILE):
        assert md5_of(MNIST_DIR / name) == published[name]


@needs_mnist
@pytest.mark.usefixtures("offline")
def test_mnist_truncated_file_names_the_file(tmp_path):
    raw = _stage_mnist(tmp_path)
    data = (raw / IMAGES_FILE).read_bytes()
    (raw / IMAGES_FILE).write_bytes(data[: len(data) // 2])
    published = dict(MNIST.resources)[IMAGES_FILE]
    with pytest.raises(DataIntegrityError, match=published) as info:
        load_mnist(10, tmp_path)
    assert str(raw / IMAGES_FILE) in str(info.value) and "\n" not in str(info.value)


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return gzip.compress(header + payload, mtime=0)


@pytest.mark.usefixtures("offline")
def test_mnist_md5_override_accepts_a_hand_made_copy(tmp_path):
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    images = (np.arange(3 * 28 * 28) % 251).astype(np.uint8)
    (raw / IMAGES_FILE).write_bytes(_idx(2051, (3, 28, 28), images.tobytes()))
    (raw / LABELS_FILE).write_bytes(_idx(2049, (3,), bytes([5, 0, 9])))
    md5s = {name: md5_of(raw / name) for name in (IMAGES_FILE, LABELS_FILE)}
    with pytest.raises(DataIntegrityError, match="published md5"):
        load_mnist(3, tmp_path)  # without the override the published MD5s reject them
    x, y = load_mnist(2, tmp_path, expected_md5=md5s)
    assert y.tolist() == [5, 0]
    assert torch.equal((x * 255).round().to(torch.uint8).flatten(),
                       torch.from_numpy(images[: 2 * 784]))
    with pytest.raises(DataIntegrityError, match="holds 3 test points, 4 requested"):
        load_mnist(4, tmp_path, expected_md5=md5s)


def test_mnist_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        load_mnist(5, tmp_path, download=False)
    assert str(raw_dir(tmp_path) / IMAGES_FILE) in str(info.value)


@pytest.mark.usefixtures("offline")
def test_mnist_download_offline_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="place the file at") as info:
        load_mnist(5, tmp_path, download=True)
    assert "\n" not in str(info.value)
    assert str(raw_dir(tmp_path) / IMAGES_FILE) in str(info.value)


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


def _write_cifar(root: Path, dataset: str, images: np.ndarray, labels: list[int]) -> dict:
    """Write a test batch and its meta file exactly as torchvision expects them on disk;
    returns {file name: md5} of both (the override a hand-made copy needs)."""
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
    (root / folder / test_name).write_bytes(pickle.dumps(batch, protocol=2))
    return {name: md5_of(root / folder / name) for name in (test_name, meta_name)}


@pytest.mark.usefixtures("offline")
def test_cifar10_published_md5_rejects_hand_made_file(tmp_path):
    _write_cifar(tmp_path, "cifar10", _hand_made_images(4), [3, 1, 4, 1])
    path = tmp_path / CIFAR10.base_folder / "test_batch"
    ((_, published),) = CIFAR10.test_list
    with pytest.raises(DataIntegrityError, match=published) as info:
        load_cifar("cifar10", 4, tmp_path)
    message = str(info.value)
    assert str(path) in message and md5_of(path) in message and "\n" not in message


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.usefixtures("offline")
def test_cifar_matching_md5_loads_pixels_in_chw_order(tmp_path, dataset):
    images = _hand_made_images(5)  # (5, 32, 32, 3)
    labels = [9, 0, 7, 2, 5] if dataset == "cifar10" else [99, 0, 42, 17, 63]
    md5s = _write_cifar(tmp_path, dataset, images, labels)
    x, y = load_cifar(dataset, 3, tmp_path, expected_md5=md5s)  # no training batches needed
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == labels[:3] and y.dtype == torch.int64
    expected = torch.from_numpy(images[:3]).permute(0, 3, 1, 2).float() / 255  # HWC -> CHW
    assert torch.equal(x, expected)
    # one pixel by hand: image 2, channel 1 (green), row 4, column 9
    assert round(float(x[2, 1, 4, 9]) * 255) == (2 * 7 + 4 * 3 + 9 * 5 + 1 * 101) % 256


def test_cifar_more_points_than_in_file(tmp_path):
    md5s = _write_cifar(tmp_path, "cifar10", _hand_made_images(2), [0, 1])
    with pytest.raises(DataIntegrityError, match="holds 2 test points"):
        load_cifar("cifar10", 3, tmp_path, download=False, expected_md5=md5s)


def test_cifar_garbage_with_matching_md5_is_integrity_error(tmp_path):
    md5s = _write_cifar(tmp_path, "cifar10", _hand_made_images(1), [0])
    path = tmp_path / CIFAR10.base_folder / "test_batch"
    path.write_bytes(b"\x80\x02}q\x00(X")  # a truncated pickle
    md5s["test_batch"] = md5_of(path)
    with pytest.raises(DataIntegrityError, match="do not parse") as info:
        load_cifar("cifar10", 1, tmp_path, download=False, expected_md5=md5s)
    assert "\n" not in str(info.value)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        load_cifar("cifar100", 5, tmp_path, download=False)
    assert str(tmp_path / "cifar-100-python" / "test") in str(info.value)


@pytest.mark.usefixtures("offline")
def test_cifar_download_offline_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="place the file at") as info:
        load_cifar("cifar10", 5, tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message and CIFAR10.url in message
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in message


def test_cifar_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="svhn"):
        load_cifar("svhn", 5, tmp_path)


# ---------------------------------------------------------------- ImageFolder


def test_image_folder_classes_sorted_rgb_and_grey(tmp_path):
    from PIL import Image

    rgb = np.zeros((2, 3, 4, 3), dtype=np.uint8)
    rgb[1, :, :, 0] = 255
    for k, cls in enumerate(("zebra", "ant")):
        (tmp_path / "rgb" / cls).mkdir(parents=True)
        Image.fromarray(rgb[k]).save(tmp_path / "rgb" / cls / "a.png")
    x, y, classes = load_image_folder(tmp_path / "rgb")
    assert classes == ["ant", "zebra"] and y.tolist() == [0, 1]
    assert x.shape == (2, 3, 3, 4) and float(x[0, 0].min()) == 1.0 and float(x[1].max()) == 0.0
    (tmp_path / "grey" / "a").mkdir(parents=True)
    Image.fromarray(np.full((5, 5), 51, dtype=np.uint8), mode="L").save(
        tmp_path / "grey" / "a" / "g.png")
    x, _, _ = load_image_folder(tmp_path / "grey")
    assert x.shape == (1, 1, 5, 5) and torch.allclose(x, torch.full_like(x, 0.2))
    Image.fromarray(np.zeros((6, 5), dtype=np.uint8), mode="L").save(
        tmp_path / "grey" / "a" / "h.png")
    with pytest.raises(ImageFolderError, match="resize them to one size"):
        load_image_folder(tmp_path / "grey")
    for cls in ("7", "3"):  # numbered classes keep their number even when others are absent
        (tmp_path / "num" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((2, 2), dtype=np.uint8), mode="L").save(
            tmp_path / "num" / cls / "a.png")
    _, y, classes = load_image_folder(tmp_path / "num")
    assert classes == ["3", "7"] and y.tolist() == [3, 7]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="not an ImageFolder"):
        load_image_folder(tmp_path / "empty")
