"""Numeric precision as a controlled variable of an attack.

Every model call during an attack goes through :class:`PrecisionModel`, so the dtype is applied
in exactly one place: inputs are cast from float32 pixel space to the attack dtype, the model's
parameters live in that dtype, and the logits come back in that dtype.
"""

from __future__ import annotations

import copy
import enum

import torch
from torch import Tensor, nn

from tmifpe.choices import parse_enum


class Precision(str, enum.Enum):
    """Attack arithmetic precision (dtype of model and loss computation)."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"
    FP64 = "fp64"

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self]


_DTYPES = {
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
    Precision.FP32: torch.float32,
    Precision.FP64: torch.float64,
}


def parse_precision(name: str) -> Precision:
    """``"fp16"`` -> ``Precision.FP16``; one-line ValueError naming the bad value otherwise."""
    return parse_enum(Precision, name, "precision")


class PrecisionModel(nn.Module):
    """A frozen copy of ``model`` whose parameters and buffers are cast to ``precision``.

    ``forward`` takes float32 pixels in [0,1], casts them to the attack dtype and returns logits
    in that dtype; logits of another dtype (e.g. from a model that keeps a plain float32 tensor
    attribute, which ``.to(dtype)`` does not cast) stop the attack with a one-line error. The
    wrapped copy is in eval mode and its parameters do not require grad (only the input gradient
    is ever needed), which also saves the parameter-gradient work.

    ``reference`` is the fp32 model that confirms an attack's successes (the project's verdict
    precision): ``self`` at fp32 (a given ``reference`` is not used), else the given fp32
    ``PrecisionModel`` (share one to save a copy) or a new fp32 copy of ``model``.
    """

    def __init__(self, model: nn.Module, precision: Precision, *,
                 reference: PrecisionModel | None = None) -> None:
        super().__init__()
        self.precision = precision
        with torch.no_grad():  # a TorchScript deep copy's parameters are no autograd leaves
            inner = copy.deepcopy(model).eval().to(precision.dtype)
        for p in inner.parameters():
            p.requires_grad_(False)
        self.inner = inner
        if precision is Precision.FP32:  # its own reference; a given one is not needed
            self._reference: PrecisionModel | None = None
        else:
            if reference is not None and reference.precision is not Precision.FP32:
                raise ValueError(f"the reference must be an fp32 PrecisionModel, got "
                                 f"{reference.precision.value}")
            self._reference = (PrecisionModel(model, Precision.FP32) if reference is None
                               else reference)

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    @property
    def reference(self) -> PrecisionModel:
        """The fp32 model of the verdict (``self`` at fp32)."""
        return self if self._reference is None else self._reference

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x.to(self.precision.dtype))
        if out.dtype != self.precision.dtype:
            raise ValueError(f"model {type(self.inner).__name__} returned {out.dtype} logits at "
                            f"{self.precision.value}; expected {self.precision.dtype} (a tensor "
                            "attribute that is not a parameter or buffer is not cast)")
        return out
