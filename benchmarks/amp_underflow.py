"""Where the input gradient underflows under autocast fp16 (``amp-fp16``), and what a constant
loss scale or the scaled losses change, beside the pure dtypes.

    .venv/bin/python benchmarks/amp_underflow.py [--points 360] [--out PATH]

Models: the default suite's digits models (SmallCNN width 16, standard 40 epochs and PGD-AT eps
0.2 7 steps 15 epochs, lr 1e-3, batch 64, seed 0, test split 0.2 seed 0) and a deeper
ResNet-style model (stem + 4 residual blocks of two 3x3 convolutions, width 16, global average
pool, linear head; standard training, 15 epochs). Logit gaps are swept by a temperature: the head
(weight and bias) is multiplied by alpha in {1, 2, 4, 8, 16}, which multiplies every logit gap
by alpha and leaves the predictions unchanged.

For each clean test point, each mode (``fp32``, ``fp16``, ``bf16`` pure; ``amp-fp16``,
``amp-bf16`` autocast), loss (CE, C&W, MIFPE, T-MIFPE) and loss scale S in {1, 2^8, 2^16}
(2^16 = ``torch.amp.GradScaler``'s initial scale), the gradient of S·Σ loss is taken as AMP
users take it (``autograd.grad`` of the scaled loss): first into the logits (where autocast
casts the fp32 loss's gradient to fp16), then through the network into the float32 input.
Recorded per point: the fp32 top-2 logit gap and CE loss, whether the logit gradient and the
input gradient are exactly zero, their fraction of zero entries, and whether either is
non-finite. The engine's gradient (:func:`tmifpe.attacks.runs.input_gradient`, S = 1) is
recorded too. Output: counts per (model, mode, loss, S, gap bin) and per (…, CE-loss bin).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from tmifpe.attacks.runs import input_gradient
from tmifpe.data.digits import digits_split
from tmifpe.losses import get_loss
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.pipeline.train import TrainConfig, train_model
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.runtime import environment
from tmifpe.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("ce", "cw", "mifpe", "tmifpe")
MODES = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.AMP_FP16, Precision.AMP_BF16)
SCALES = (1.0, 2.0**8, 2.0**16)
ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0)
GAP_EDGES = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, float("inf"))
LOSS_EDGES = (0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, float("inf"))


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class ResNetToy(nn.Module):
    """Stem, ``blocks`` residual blocks, global average pool, linear head."""

    def __init__(self, c: int = 16, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.Sequential(*[_Block(c) for _ in range(blocks)])
        self.head = nn.Linear(c, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean(dim=(2, 3)))


def _head(net: nn.Module) -> nn.Linear:
    return net.head if isinstance(net, ResNetToy) else [m for m in net.modules()
                                                         if isinstance(m, nn.Linear)][-1]


def _models(split) -> dict[str, nn.Module]:
    out = {}
    for name, make, cfg in (
        ("digits_std", lambda: SmallCNN(width=16), TrainConfig(epochs=40, seed=0)),
        ("digits_at", lambda: SmallCNN(width=16),
         TrainConfig(epochs=15, seed=0, adv_eps=0.2, adv_steps=7)),
        ("resnet_toy", ResNetToy, TrainConfig(epochs=15, seed=0)),
    ):
        torch.manual_seed(cfg.seed)
        net = make()
        train_model(net, split.x_train, split.y_train, cfg)
        out[name] = net.eval()
    return out


def _tempered(net: nn.Module, alpha: float) -> nn.Module:
    import copy

    out = copy.deepcopy(net)
    with torch.no_grad():
        head = _head(out)
        head.weight.mul_(alpha)
        if head.bias is not None:
            head.bias.mul_(alpha)
    return out


def _grads(model: PrecisionModel, x: Tensor, y: Tensor, loss: str, scale: float
           ) -> dict[str, Tensor]:
    """Per point: logit-gradient and input-gradient zero/nonfinite flags (gradient of S·Σ loss)."""
    fn = get_loss(loss)
    xk = x.clone().requires_grad_(True)
    logits = model(xk)
    with model.autocast(x.device):
        lv = fn(logits, y)
    (g,) = torch.autograd.grad(lv.sum() * scale, logits, retain_graph=True)
    (gx,) = torch.autograd.grad(logits, xk, grad_outputs=g, retain_graph=True)
    keep = torch.ones_like(y, dtype=torch.bool)
    engine = input_gradient(lv, logits, xk, keep) if scale == 1.0 else None
    gf, gxf = g.detach().flatten(1).float(), gx.detach().flatten(1)
    out = {
        "logit_zero": (gf == 0).all(dim=1), "logit_zero_frac": (gf == 0).float().mean(dim=1),
        "logit_nonfinite": ~torch.isfinite(gf).all(dim=1),
        "input_zero": (gxf == 0).all(dim=1), "input_zero_frac": (gxf == 0).float().mean(dim=1),
        "input_nonfinite": ~torch.isfinite(gxf).all(dim=1),
    }
    if engine is not None:
        ef = engine.flatten(1)
        out["engine_zero"] = (ef == 0).all(dim=1)
        out["engine_nonfinite"] = ~torch.isfinite(ef).all(dim=1)
    return out


def _bin(values: Tensor, edges: tuple[float, ...]) -> Tensor:
    return torch.bucketize(values, torch.tensor(edges[1:-1], dtype=values.dtype), right=True)


def _summarise(rows: list[dict], key: str, edges: tuple[float, ...]) -> list[dict]:
    out = []
    for r in rows:
        b = _bin(r[key], edges)
        for i in range(len(edges) - 1):
            sel = b == i
            n = int(sel.sum())
            if n == 0:
                continue
            rec = {k: r[k] for k in ("model", "alpha", "mode", "loss", "loss_scale")}
            rec.update(bin=f"[{edges[i]:g}, {edges[i + 1]:g})", lo=edges[i], n=n)
            for f in ("logit_zero", "input_zero", "logit_nonfinite", "input_nonfinite",
                      "engine_zero", "engine_nonfinite"):
                if f in r["flags"]:
                    rec[f] = int(r["flags"][f][sel].sum())
            rec["input_zero_frac_mean"] = round(float(r["flags"]["input_zero_frac"][sel].mean()), 6)
            out.append(rec)
    return out


def _first_zero_gap(rows: list[dict]) -> list[dict]:
    """Per (model, mode, loss, S): the smallest fp32 gap whose input gradient is exactly zero
    and the largest gap whose is not (over all alphas)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["mode"], r["loss"], r["loss_scale"]), []).append(r)
    out = []
    for (m, mode, loss, s), rs in groups.items():
        gap = torch.cat([r["gap"] for r in rs])
        zero = torch.cat([r["flags"]["input_zero"] for r in rs])
        nonfin = torch.cat([r["flags"]["input_nonfinite"] for r in rs])
        out.append({"model": m, "mode": mode, "loss": loss, "loss_scale": s, "n": int(gap.numel()),
                    "n_input_zero": int(zero.sum()), "n_input_nonfinite": int(nonfin.sum()),
                    "first_zero_gap": round(float(gap[zero].min()), 3) if zero.any() else None,
                    "last_nonzero_gap": round(float(gap[~zero & ~nonfin].max()), 3)
                    if (~zero & ~nonfin).any() else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=360)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/amp_underflow.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    split = digits_split(test_size=0.2, seed=0)
    x, y = split.x_test[: args.points], split.y_test[: args.points]
    rows = []
    for mname, net in _models(split).items():
        for alpha in ALPHAS:
            tnet = _tempered(net, alpha)
            ref = PrecisionModel(tnet, Precision.FP32)
            with torch.no_grad():
                z = ref(x)
                top2 = z.topk(2, dim=1).values
                gap = (top2[:, 0] - top2[:, 1]).double()
                ce = torch.nn.functional.cross_entropy(z, y, reduction="none").double()
                correct = z.argmax(dim=1) == y
            xs, ys, gap, ce = x[correct], y[correct], gap[correct], ce[correct]
            for mode in MODES:
                model = PrecisionModel(tnet, mode, reference=None if mode is Precision.FP32
                                       else ref)
                for loss in LOSSES:
                    for s in SCALES:
                        rows.append({"model": mname, "alpha": alpha, "mode": mode.value,
                                     "loss": loss, "loss_scale": s, "gap": gap, "ce": ce,
                                     "flags": _grads(model, xs, ys, loss, s)})
    doc = {
        "description": __doc__.splitlines()[0],
        "settings": {"points": args.points, "alphas": ALPHAS, "losses": LOSSES,
                     "modes": [m.value for m in MODES], "loss_scales": SCALES,
                     "gap_edges": [e if e != float("inf") else "inf" for e in GAP_EDGES],
                     "ce_loss_edges": [e if e != float("inf") else "inf" for e in LOSS_EDGES],
                     "threads": args.threads},
        "by_gap": _summarise(rows, "gap", GAP_EDGES),
        "by_ce_loss": _summarise(rows, "ce", LOSS_EDGES),
        "zero_gap_range": _first_zero_gap(rows),
        "environment": environment(torch.device("cpu")),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    write_json(doc, args.out)
    for r in doc["zero_gap_range"]:
        if r["loss"] in ("ce", "tmifpe"):
            print(r)


if __name__ == "__main__":
    main()
