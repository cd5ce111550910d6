"""Where do CE's gradients vanish on this device? Measured thresholds beside the theory table.

    .venv/bin/python benchmarks/device_check.py [--device cpu|cuda|cuda:1] [--out PATH]

The thresholds of ``docs/theory.md`` (fp16 7.6/17.3, bf16 5.5/92.9, fp32 16.6/104.0, fp64
36.7/745.1) are derived for a softmax evaluated entirely in the attack dtype, and were checked on
CPU. On CUDA, ``log_softmax`` may accumulate fp16/bf16 in fp32, so they may not hold there. This
script measures them on any device in well under a minute: two-class logits (m, 0), label 0, top-2
gap m on a fine grid, the project's CE loss (``tmifpe.losses``) and its gradient computed in each
dtype on the device, through a 2×2 identity linear layer so that the gradient is an *input*
gradient as in an attack (all gaps in one batch). Per dtype it reports

* the true-class term: the smallest gap at which ∂L/∂z_y is exactly 0 (theory: −ln u, u the unit
  roundoff: 1 + e^{−m} rounds to 1), and the largest gap at which it is still non-zero;
* the whole gradient w.r.t. the logits and w.r.t. the input: the smallest gap at which every
  entry is exactly 0 (theory: −ln(s/2), s the smallest subnormal: e^{−m} rounds to 0), and the
  largest gap with a non-zero entry. The two differ where a kernel flushes subnormals (e.g. a
  batched bf16 matrix product on CPU: the input gradient then vanishes at −ln(smallest normal)).

Autocast (``amp-fp16``, ``amp-bf16``, :class:`tmifpe.precision.Precision`): the same layer with
float32 weights and a float32 input, forward and loss under ``torch.autocast(device type,
dtype)`` as the attack engines run it (:meth:`tmifpe.precision.PrecisionModel.autocast`): the
logits come out in fp16/bf16, ``cross_entropy`` is promoted to fp32, and its logit gradient is
cast back to fp16/bf16 on the way into the layer. Theory there [derived here, not in
docs/theory.md §3]: the true-class term is 0 once fp32 rounds 1 + e^{−m} to 1 *or* the cast
flushes the term, from min(fp32 rounding, dtype underflow) (16.64 for both); the whole logit
gradient is 0 once e^{−m} is below half the smallest subnormal of fp32 or of the dtype, from
min(fp32 underflow, dtype underflow) (fp16 17.33, bf16 92.88). So amp-fp16 keeps CE's true-class
term up to fp32's limit (pure fp16: 7.62) but loses the whole gradient where pure fp16 does.

A measured threshold "agrees" when it is within two grid steps (or two dtype spacings at that gap,
whichever is larger) of the theory value and no non-zero value follows the first zero. Prints a
table and writes JSON (default ``benchmarks/results/device_check.<device type>.json``): ``rows``
(pure dtypes) and ``autocast_rows`` (same fields; ``dtype`` is autocast's dtype, ``precision``
the mode).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from tmifpe.losses import get_loss
from tmifpe.losses.tmifpe.tstar import gap_thresholds
from tmifpe.precision import AUTOCAST_PRECISIONS, Precision
from tmifpe.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
          "fp64": torch.float64}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
STEP = 1e-3  # grid step of the gap m (the dtype then rounds each m to its own spacing)
REACH = 1.25  # grid up to REACH × the theory's underflow threshold


def autocast_thresholds(dtype: torch.dtype) -> tuple[float, float]:
    """(true-class term, whole gradient) limits of CE's top-2 gap under ``torch.autocast`` to
    ``dtype`` [derived, module docstring]: the loss in fp32, its logit gradient cast to dtype."""
    r32, u32 = gap_thresholds(torch.float32)
    underflow = gap_thresholds(dtype)[1]
    return min(r32, underflow), min(u32, underflow)


def theory(precision: Precision) -> tuple[float, float]:
    """(true-class term, whole gradient) theory limits of ``precision`` (pure or autocast)."""
    if precision.autocast:
        return autocast_thresholds(precision.dtype)
    return gap_thresholds(precision.dtype)


def gap_grid(dtype: torch.dtype, device: torch.device, top: float | None = None) -> torch.Tensor:
    """(G,) distinct gaps m of ``dtype`` in [0, ``top``), ascending; ``top`` defaults to
    REACH × the dtype's underflow threshold."""
    top = REACH * gap_thresholds(dtype)[1] if top is None else top
    grid = torch.arange(0.0, top, STEP, dtype=torch.float64).to(dtype)
    return torch.unique(grid).to(device)  # rounding merges neighbours in low precision


def ce_gradients(m: torch.Tensor, *, autocast: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per gap: (∂L/∂z_y, whole logit gradient zero, whole input gradient zero) of CE with label
    0, logits (m, 0) = an identity 2×2 linear layer of the input x = (m, 0), the whole batch of
    gaps in one call on m's device. Pure: everything in m's dtype. ``autocast``: float32 layer
    and input, forward and loss under ``torch.autocast(device type, m.dtype)`` (the logits come
    out in m's dtype, exactly (m, 0); the loss in fp32)."""
    weight_dtype = torch.float32 if autocast else m.dtype
    layer = nn.Linear(2, 2, bias=False, dtype=weight_dtype, device=m.device)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2, dtype=weight_dtype, device=m.device))
    x = torch.stack([m, torch.zeros_like(m)], dim=1).to(weight_dtype).requires_grad_(True)
    labels = torch.zeros(m.shape[0], dtype=torch.int64, device=m.device)
    ctx = (torch.autocast(m.device.type, dtype=m.dtype) if autocast
           else contextlib.nullcontext())
    with ctx:
        logits = layer(x)
        loss = get_loss("ce")(logits, labels)
    if autocast and (logits.dtype != m.dtype or loss.dtype != torch.float32):
        raise RuntimeError(f"autocast on {m.device.type} gave {logits.dtype} logits and a "
                           f"{loss.dtype} loss; expected {m.dtype} and torch.float32")
    g_logits, g_x = torch.autograd.grad(loss.sum(), (logits, x))
    return g_logits[:, 0], (g_logits == 0).all(dim=1), (g_x == 0).all(dim=1)


def threshold(m: torch.Tensor, zero: torch.Tensor) -> tuple[float | None, float | None]:
    """(smallest m with zero, largest m without), as floats; None where there is none."""
    first = m[zero].min().item() if bool(zero.any()) else None
    last = m[~zero].max().item() if bool((~zero).any()) else None
    return first, last


def _agrees(first: float | None, last: float | None, theory: float, dtype: torch.dtype) -> bool:
    if first is None or (last is not None and last > first):
        return False
    spacing = torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(max(theory, 1.0)))
    return abs(first - theory) <= 2 * max(STEP, spacing)


def measure(device: torch.device) -> list[dict[str, object]]:
    """One row per pure dtype: theory and measured thresholds (module docstring)."""
    return [_row(Precision(name), device) for name in DTYPES]


def measure_autocast(device: torch.device) -> list[dict[str, object]]:
    """One row per autocast precision (``amp-fp16``, ``amp-bf16``), same fields as
    :func:`measure` (``dtype`` = autocast's dtype) plus ``precision``."""
    return [_row(p, device) for p in AUTOCAST_PRECISIONS]


def _row(precision: Precision, device: torch.device) -> dict[str, object]:
    dtype = precision.dtype
    rounding, underflow = theory(precision)
    m = gap_grid(dtype, device, REACH * underflow if precision.autocast else None)
    term, logit_zero, input_zero = ce_gradients(m, autocast=precision.autocast)
    m64 = m.double().cpu()
    t_first, t_last = threshold(m64, (term == 0).cpu())
    l_first, l_last = threshold(m64, logit_zero.cpu())
    w_first, w_last = threshold(m64, input_zero.cpu())
    row: dict[str, object] = {"precision": precision.value} if precision.autocast else {}
    return {**row,
            "dtype": _NAMES[dtype], "n_gaps": int(m.shape[0]),
            "theory_true_class": rounding, "true_class_first_zero": t_first,
            "true_class_last_nonzero": t_last,
            "true_class_agrees": _agrees(t_first, t_last, rounding, dtype),
            "theory_whole_gradient": underflow,
            "logit_gradient_first_zero": l_first, "logit_gradient_last_nonzero": l_last,
            "logit_gradient_agrees": _agrees(l_first, l_last, underflow, dtype),
            "input_gradient_first_zero": w_first, "input_gradient_last_nonzero": w_last,
            "input_gradient_agrees": _agrees(w_first, w_last, underflow, dtype)}


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/device_check.<type>.json)")
    args = ap.parse_args()
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        raise SystemExit(f"device {args.device!r} is not usable here: {err}") from None
    t0 = time.perf_counter()
    rows = measure(device)
    autocast_rows = measure_autocast(device)
    wall = time.perf_counter() - t0
    name = str(device) + (f" ({torch.cuda.get_device_name(device)})"
                          if device.type == "cuda" else "")
    table = Table(title=f"CE gradient thresholds on {name}: top-2 gap m (theory | measured)")
    for col in ("precision", "term: theory", "term: 0 from", "whole: theory", "logit grad: 0 from",
                "input grad: 0 from", "agree (term/logit/input)"):
        table.add_column(col, justify="left" if col == "precision" else "right")
    for r in [*rows, *autocast_rows]:
        agree = "/".join("yes" if r[f"{k}_agrees"] else "NO"
                         for k in ("true_class", "logit_gradient", "input_gradient"))
        table.add_row(str(r.get("precision", r["dtype"])), _fmt(r["theory_true_class"]),
                      _fmt(r["true_class_first_zero"]),
                      _fmt(r["theory_whole_gradient"]), _fmt(r["logit_gradient_first_zero"]),
                      _fmt(r["input_gradient_first_zero"]), agree)
    Console(width=120).print(table)
    print("amp-*: torch.autocast, CE in fp32, its logit gradient cast to the dtype (theory: "
          "min of the fp32 and dtype limits, module docstring)")
    out = args.out or ROOT / f"benchmarks/results/device_check.{device.type}.json"
    write_json({
        "schema_version": 1, "device": name, "torch_version": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {"logits": "(m, 0), label 0, identity 2x2 linear layer, CE of tmifpe.losses",
                     "autocast": "float32 layer and input; forward and CE under torch.autocast("
                                 "device type, dtype); grid up to the reach x the autocast "
                                 "whole-gradient threshold",
                     "grid_step": STEP, "grid_reach": f"{REACH} x theory underflow threshold"},
        "rows": rows, "autocast_rows": autocast_rows, "wall_seconds": round(wall, 3),
    }, out)
    print(f"wrote {out} ({wall:.2f} s)")


if __name__ == "__main__":
    main()
