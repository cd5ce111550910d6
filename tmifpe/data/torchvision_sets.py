"""torchvision's dataset classes with the published MD5s (optionally overridden) and the split
the caller needs, plus one-line errors for a missing or corrupt file.

Download, MD5 checks, extraction, parsing and the on-disk layout are torchvision's. The classes
are configured through their public class attributes (``resources`` of ``MNIST``;
``train_list``/``test_list``/``meta`` of ``CIFAR10``/``CIFAR100``), in a subclass of the same
name (MNIST's folder is named after its class): an ``md5`` override replaces a published MD5 (a
re-packed or hand-made staged copy), and a test-only evaluation lists only the test files, so
it neither needs nor downloads the training files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from torchvision.datasets import CIFAR10, MNIST
from torchvision.datasets.utils import check_integrity

from tmifpe.data.integrity import DataIntegrityError, guarded_download, md5_of

D = TypeVar("D", bound=type)


def configured_mnist(*, train: bool, md5: Mapping[str, str] | None) -> type[MNIST]:
    """``MNIST`` listing only the files of the split (``train``: training files, else the test
    files), each with its published MD5 unless ``md5`` names the file."""
    prefix = "train-" if train else "t10k-"
    resources = [(f, _md5(f, m, md5)) for f, m in MNIST.resources if f.startswith(prefix)]
    return type("MNIST", (MNIST,), {"resources": resources})


def configured_cifar(cls: type[CIFAR10], *, md5: Mapping[str, str] | None) -> type[CIFAR10]:
    """``cls`` (CIFAR10 or CIFAR100) checking only its test files and meta file, with overrides."""
    test_list = [[f, _md5(f, m, md5)] for f, m in cls.test_list]
    meta = {**cls.meta, "md5": _md5(cls.meta["filename"], cls.meta["md5"], md5)}
    return type(cls.__name__, (cls,), {"train_list": [], "test_list": test_list, "meta": meta})


def open_dataset(cls: type[D], root: Path, expected: Mapping[Path, str], *, train: bool,
                 download: bool, source: str, hint: str) -> D:
    """``cls(root, train=train, download=download)``; a staged file whose MD5 differs is a
    DataIntegrityError naming it, a missing file that cannot be fetched a FileNotFoundError."""
    for path, want in expected.items():
        if path.is_file() and not check_integrity(str(path), want):
            raise DataIntegrityError(
                f"{path}: md5 {md5_of(path)} does not match the published md5 {want} (corrupt, "
                "truncated or another file); delete it and run again to download it")
    missing = next((p for p in expected if not p.is_file()), next(iter(expected)))
    if not download:
        try:
            return _parse(cls, root, train, download=False)
        except RuntimeError:
            raise FileNotFoundError(f"{missing} is missing and download=False; place the "
                                    f"file there{hint}") from None
    holder = []
    guarded_download(lambda: holder.append(_parse(cls, root, train, download=True)),
                     source=source, missing=missing, hint=hint)
    return holder[0]


def _parse(cls: type[D], root: Path, train: bool, *, download: bool) -> D:
    """The class's own loading; a file that passed its MD5 check but does not parse (a
    hand-made copy under an MD5 override) is a DataIntegrityError, not a traceback."""
    try:
        return cls(str(root), train=train, download=download)
    except (RuntimeError, OSError):  # not found / download failures: the caller words them
        raise
    except Exception as exc:  # unpickling, IDX header and shape errors of torchvision's parsers
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise DataIntegrityError(f"{root}: the {cls.__name__} files pass their MD5 check but "
                                 f"do not parse ({msg[:160]})") from None


def _md5(name: str, published: str, overrides: Mapping[str, str] | None) -> str:
    return overrides[name] if overrides is not None and name in overrides else published
