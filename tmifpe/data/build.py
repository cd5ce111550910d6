"""Evaluation (and training) sets by source name: what the data stage writes (read back with
:func:`tmifpe.data.sources.load_eval_points`)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from tmifpe.params import DatasetParams


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
