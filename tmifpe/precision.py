"""Numeric precision as a controlled variable of an attack.

Every model call during an attack goes through :class:`PrecisionModel`, so the dtype is applied
in exactly one place. Two families:

- pure dtypes (``fp16``, ``bf16``, ``fp32``, ``fp64``): inputs are cast from float32 pixel space
  to the attack dtype, the model's parameters live in that dtype, and the logits come back in
  that dtype (the loss is computed in it too);
- autocast (``amp-fp16``, ``amp-bf16``): mixed precision as people run it — the parameters stay
  float32 and the forward pass, and the loss (:meth:`PrecisionModel.autocast`), run under
  ``torch.autocast(device_type, dtype)``, which picks each op's dtype (convolutions and matmuls
  in fp16/bf16, ``log_softmax``/``cross_entropy`` promoted to fp32). The logits come back as
  autocast makes them (fp16/bf16 from a final linear layer, fp32 after a promoted op).

Either way the verdicts are those of the fp32 reference (:attr:`PrecisionModel.reference`).
"""

from __future__ import annotations

import contextlib
import copy
import enum

import torch
from torch import Tensor, nn

from tmifpe.choices import parse_enum


class Precision(str, enum.Enum):
    """Attack arithmetic precision: a pure dtype (model and loss cast to it) or an autocast mode
    (``amp-*``: float32 model, ops in the dtype autocast chooses)."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"
    FP64 = "fp64"
    AMP_FP16 = "amp-fp16"
    AMP_BF16 = "amp-bf16"

    @property
    def dtype(self) -> torch.dtype:
        """The low-precision compute dtype (pure: the one dtype; autocast: autocast's dtype)."""
        return _DTYPES[self]

    @property
    def autocast(self) -> bool:
        """True for the autocast family (``amp-fp16``, ``amp-bf16``)."""
        return self in _AUTOCAST

    @property
    def weight_dtype(self) -> torch.dtype:
        """dtype of the attacked copy's parameters (float32 under autocast)."""
        return torch.float32 if self.autocast else self.dtype


_DTYPES = {
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
    Precision.FP32: torch.float32,
    Precision.FP64: torch.float64,
    Precision.AMP_FP16: torch.float16,
    Precision.AMP_BF16: torch.bfloat16,
}
_AUTOCAST = frozenset({Precision.AMP_FP16, Precision.AMP_BF16})
PURE_PRECISIONS = tuple(p for p in Precision if p not in _AUTOCAST)
AUTOCAST_PRECISIONS = tuple(p for p in Precision if p in _AUTOCAST)


def parse_precision(name: str) -> Precision:
    """``"fp16"`` -> ``Precision.FP16``, ``"amp-fp16"`` -> ``Precision.AMP_FP16``; one-line
    ValueError naming the bad value otherwise."""
    return parse_enum(Precision, name, "precision")


class PrecisionModel(nn.Module):
    """A frozen copy of ``model`` whose parameters and buffers are cast to
    ``precision.weight_dtype`` (float32 for the autocast family).

    Pure dtypes: ``forward`` takes float32 pixels in [0,1], casts them to the attack dtype and
    returns logits in that dtype; logits of another dtype (e.g. from a model that keeps a plain
    float32 tensor attribute, which ``.to(dtype)`` does not cast) stop the attack with a
    one-line error. The wrapped copy is in eval mode and its parameters do not require grad
    (only the input gradient is ever needed), which saves the parameter-gradient work.
    Autocast: ``forward`` runs the float32 copy under ``torch.autocast(x.device.type,
    precision.dtype)`` and returns the logits as autocast makes them (its dtype or float32);
    compute the loss under :meth:`autocast` too.

    ``reference`` is the fp32 model that confirms an attack's successes (the project's verdict
    precision): ``self`` at fp32 (a given ``reference`` is not used), else the given fp32
    ``PrecisionModel`` (share one to save a copy) or a new fp32 copy of ``model``.
    """

    def __init__(self, model: nn.Module, precision: Precision, *,
                 reference: PrecisionModel | None = None) -> None:
        super().__init__()
        self.precision = precision
        with torch.no_grad():  # a TorchScript deep copy's parameters are no autograd leaves
            inner = copy.deepcopy(model).eval().to(precision.weight_dtype)
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

    @property
    def is_reference(self) -> bool:
        """True when this model's own forward is the verdict's fp32 pass (fp32 only)."""
        return self._reference is None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        """The context the loss is computed in: ``torch.autocast(device.type, dtype)`` for the
        autocast family, a no-op for pure dtypes (their loss runs in the logits' dtype)."""
        if self.precision.autocast:
            return torch.autocast(device.type, dtype=self.precision.dtype)
        return contextlib.nullcontext()

    def forward(self, x: Tensor) -> Tensor:
        if self.precision.autocast:
            with self.autocast(x.device):
                out = self.inner(x)
            if out.dtype not in (self.precision.dtype, torch.float32):
                raise ValueError(f"model {type(self.inner).__name__} returned {out.dtype} "
                                 f"logits under {self.precision.value}; expected "
                                 f"{self.precision.dtype} or torch.float32")
            return out
        out = self.inner(x.to(self.precision.dtype))
        if out.dtype != self.precision.dtype:
            raise ValueError(f"model {type(self.inner).__name__} returned {out.dtype} logits at "
                            f"{self.precision.value}; expected {self.precision.dtype} (a tensor "
                            "attribute that is not a parameter or buffer is not cast)")
        return out


PROBE_POINTS = 8  # points of the two forward passes of :func:`check_deterministic`


def check_deterministic(model: nn.Module, x: Tensor, *, name: str = "") -> None:
    """Refuse a randomized model [rule of every door: ``tmifpe.evaluate``, ``evaluate_fast``,
    ``evaluate_autoattack``, the CLI and the pipeline's cells]: one-line ValueError naming the
    model and the reason.

    Randomized = two forward passes of a deep copy of ``model``, *in the mode the caller gave*
    (train-mode dropout stays active), on the first :data:`PROBE_POINTS` points of ``x`` give
    different logits (not bitwise equal, NaNs equal). The caller's model, its mode and the
    global RNG state are left as they were (the copy runs under ``torch.random.fork_rng``).
    tmifpe does not evaluate randomized models (no expectation over transformation): every
    verdict is one fp32 forward pass, which a stochastic model would make a coin flip, and
    evaluating an eval-mode copy instead (what :class:`PrecisionModel` runs) would silently
    attack a different, deterministic model.
    """
    params = [*model.parameters(), *model.buffers()]
    dev = params[0].device if params else x.device
    probe = x[:PROBE_POINTS].detach().to(dev)
    devices = [dev] if dev.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        copy_ = copy.deepcopy(model)  # same mode as the caller's model
        a, b = copy_(probe), copy_(probe)
    same = a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
    if same:
        return
    label = name or type(model).__name__
    active = sorted({type(m).__name__ for m in model.modules()
                     if m.training and isinstance(m, nn.modules.dropout._DropoutNd)})
    why = (f"train-mode {', '.join(active)} active" if active
           else "its forward pass is stochastic")
    raise ValueError(f"model {label} is randomized: two forward passes of the same points "
                     f"differ ({why}); tmifpe evaluates deterministic models only (call "
                     ".eval() or remove the randomness)")
