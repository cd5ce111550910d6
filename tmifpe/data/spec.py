"""``--dataset`` specs of ``tmifpe evaluate``: ``digits``, ``mnist``, ``cifar10``, ``cifar100``
(the suites' test sets, first n in order) or a folder in torchvision's ImageFolder layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

NAMED = ("digits", "mnist", "cifar10", "cifar100")
DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED = 0.2, 0  # the default suite's split (params.yaml)


class DatasetSpecError(ValueError):
    """--dataset names neither a known dataset nor a usable image folder."""


@dataclass(frozen=True)
class EvalSet:
    name: str  # dataset name, or the folder's name
    x: Tensor  # (N, C, H, W) float32 in [0,1]
    y: Tensor  # (N,) int64
    classes: tuple[str, ...]


def check_dataset_spec(spec: str) -> None:
    """Raise DatasetSpecError unless ``spec`` is a known name or an existing folder."""
    if spec not in NAMED and not Path(spec).is_dir():
        raise DatasetSpecError(f"--dataset {spec!r}: expected one of {', '.join(NAMED)} or a "
                               "folder in ImageFolder layout (<dir>/<class>/<image>)")


def load_eval_set(spec: str, n_examples: int | None, data_dir: Path) -> EvalSet:
    """The first ``n_examples`` test points of ``spec`` (all of them when None)."""
    if n_examples is not None and n_examples < 1:
        raise DatasetSpecError(f"--n-examples must be >= 1, got {n_examples}")
    if spec == "digits":
        from tmifpe.data.digits import digits_split

        split = digits_split(DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
        x, y = split.x_test, split.y_test
        if n_examples is not None and n_examples > x.shape[0]:
            raise DatasetSpecError(f"--n-examples {n_examples} exceeds the {x.shape[0]} digits "
                                   "test points")
        n = x.shape[0] if n_examples is None else n_examples
        return EvalSet("digits", x[:n], y[:n], tuple(str(k) for k in range(10)))
    if spec == "mnist":
        from tmifpe.data.mnist import N_TEST, load_mnist

        x, y = load_mnist(n_examples or N_TEST, data_dir)
        return EvalSet("mnist", x, y, tuple(str(k) for k in range(10)))
    if spec in ("cifar10", "cifar100"):
        from tmifpe.data.cifar import N_TEST, load_cifar

        x, y = load_cifar(spec, n_examples or N_TEST, data_dir)
        k = 10 if spec == "cifar10" else 100
        return EvalSet(spec, x, y, tuple(str(c) for c in range(k)))
    check_dataset_spec(spec)
    path = Path(spec)
    from tmifpe.data.folder import load_image_folder

    x, y, classes = load_image_folder(path, n_examples)
    return EvalSet(path.resolve().name, x, y, tuple(classes))
