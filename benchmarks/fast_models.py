"""The fast preset's validation set of models (benchmarks/fast_validation.py): built from the
protocol file's ``models`` section, trained once and cached under the work dir.

    .venv/bin/python benchmarks/fast_models.py [--protocol benchmarks/fast_protocol.json]

Protocol v2 (``benchmarks/fast_protocol_v2.json``) adds at_s3, at_s4, trades_s2, resbn_at_s1 and
std_s3 (validation) to v1's nine (tuning); protocol v3 (``fast_protocol_v3.json``) adds at_s5,
trades_s3, resbn_at_s2, std_s4, std_s5_e08 and resbn_std_s0_e08 (validation; v2's 14 are its
tuning models). A model's cache key is its ``train`` spec, so cached models serve every protocol.

Recipes: ``standard`` and ``pgd_at`` are the default suite's (tmifpe.pipeline.train.train_model,
same arguments as the model stage), ``trades`` is :func:`tmifpe.pipeline.train.train_trades`.
Architectures: ``small_cnn`` (the default models') and ``small_resnet`` (batch norm). Data: the
default suite's digits split (test_size 0.2, split seed 0), the first ``n_points`` test points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tmifpe.data.digits import digits_split
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.models.small_resnet import SmallResNet
from tmifpe.pipeline.train import TradesConfig, TrainConfig, train_model, train_trades
from tmifpe.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "benchmarks/fast_protocol.json"
WORK = ROOT / ".tmifpe-work/fast_validation"


def digits_data() -> dict[str, Tensor]:
    s = digits_split(0.2, 0)  # the default suite's digits split (params.yaml datasets.digits)
    return {"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test, "y_test": s.y_test}


def build(arch: str) -> nn.Module:
    if arch == "small_cnn":
        return SmallCNN(in_channels=1, image_size=8, n_classes=10)
    if arch == "small_resnet":
        return SmallResNet(in_channels=1, n_classes=10)
    raise ValueError(f"arch {arch!r}: expected small_cnn or small_resnet")


def train_one(spec: dict[str, Any], data: dict[str, Tensor]) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(spec["seed"])  # initial weights, as the model stage seeds them
    model = build(spec["arch"])
    x, y = data["x_train"], data["y_train"]
    if spec["recipe"] == "trades":
        cfg = TradesConfig(epochs=spec["epochs"], adv_eps=spec["adv_eps"], beta=spec["beta"],
                           seed=spec["seed"])
        return model, train_trades(model, x, y, cfg)
    if spec["recipe"] not in ("standard", "pgd_at"):
        raise ValueError(f"recipe {spec['recipe']!r}: expected standard, pgd_at or trades")
    cfg_t = TrainConfig(epochs=spec["epochs"], seed=spec["seed"], adv_eps=spec["adv_eps"],
                        adv_steps=7)
    return model, train_model(model, x, y, cfg_t)


def load_or_train(key: str, spec: dict[str, Any], data: dict[str, Tensor],
                  work: Path = WORK) -> nn.Module:
    """The cached model ``work/models/<key>.pt`` if its recorded spec equals ``spec``, else
    trained now and cached (with ``<key>.json``: spec, losses, clean accuracy)."""
    ckpt, meta = work / "models" / f"{key}.pt", work / "models" / f"{key}.json"
    model = build(spec["arch"])
    if ckpt.exists() and meta.exists() and json.loads(meta.read_text())["spec"] == spec:
        model.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu"))
        return model.float().eval()
    model, history = train_one(spec, data)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt)
    with torch.no_grad():
        acc = (model(data["x_test"]).argmax(1) == data["y_test"]).double().mean().item()
    write_json({"spec": spec, "train_loss": [round(v, 6) for v in history],
                "clean_acc_all_test": round(acc, 6)}, meta)
    print(f"trained {key}: clean acc {acc:.4f}", flush=True)
    return model.float().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", type=Path, default=PROTOCOL)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    proto = json.loads(args.protocol.read_text())
    data = digits_data()
    for key, spec in proto["models"].items():
        load_or_train(key, spec["train"], data)


if __name__ == "__main__":
    main()
