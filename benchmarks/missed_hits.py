"""Missed hits (iterates fp32 misclassifies but the attack dtype does not) per loss and precision,
what keeping them would change, and what the per-step fp32 forward that finds them costs.

    .venv/bin/python benchmarks/missed_hits.py [--points 180] [--steps 20] [--out PATH]

Models: the digits SmallCNN (width 16) trained here like the tests' fixtures: standard
(8 epochs) and PGD-AT (eps 0.1, 5 steps, 6 epochs), seed 0. Attack: untargeted PGD (cosine,
momentum 0.75, 1 restart), eps 0.2 (the default suite's digits eps), on the first ``--points``
test points, each loss at fp16, bf16 and fp64, once with ``keep_missed_hits=False`` (default)
and once with ``True``. Cost: wall time of an attack that breaks nothing (eps 1e-4, every step
full work) against the time of its fp32 confirmation forwards alone (steps + 1 no-grad fp32
forwards of the batch), median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.data.digits import digits_split
from tmifpe.losses import get_loss
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.pipeline.train import TrainConfig, train_model
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("ce", "cw", "dlr", "mifpe", "tmifpe")
PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP64)


def _models(split) -> dict[str, torch.nn.Module]:
    out = {}
    for name, cfg in (("digits_std", TrainConfig(epochs=8, seed=0)),
                      ("digits_at", TrainConfig(epochs=6, seed=0, adv_eps=0.1, adv_steps=5))):
        torch.manual_seed(cfg.seed)
        net = SmallCNN(width=16)
        train_model(net, split.x_train, split.y_train, cfg)
        out[name] = net
    return out


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # first: warm-up
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=180)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/missed_hits.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = digits_split(test_size=0.25, seed=0)
    x, y = split.x_test[: args.points], split.y_test[: args.points]
    rows, cost = [], []
    for mname, net in _models(split).items():
        for prec in PRECISIONS:
            model = PrecisionModel(net, prec)
            with torch.no_grad():
                correct = model.reference(x).argmax(dim=1) == y
            for loss in LOSSES:
                res = {keep: run_pgd(model, x, y, get_loss(loss),
                                     PGDConfig(eps=args.eps, steps=args.steps,
                                               keep_missed_hits=keep), attack_mask=correct)
                       for keep in (False, True)}
                r0, r1 = res[False], res[True]
                row = {
                    "model": mname, "precision": prec.value, "loss": loss,
                    "n_attacked": int(correct.sum()),
                    "missed_hits": int(r0.missed_hits.sum()),
                    "n_examples_missed": int((r0.missed_hits > 0).sum()),
                    "n_examples_missed_end_robust": int(((r0.missed_hits > 0) & correct
                                                         & ~r0.success).sum()),
                    "dtype_only_hits": int(r0.dtype_only_hits.sum()),
                    "robust_acc_keep_false": float((correct & ~r0.success).float().mean()),
                    "robust_acc_keep_true": float((correct & ~r1.success).float().mean()),
                    "n_success_keep_false": int(r0.success.sum()),
                    "n_success_keep_true": int(r1.success.sum()),
                }
                rows.append(row)
                print(f"{mname:<10} {prec.value:<4} {loss:<6} missed {row['missed_hits']:4d} in "
                      f"{row['n_examples_missed']:3d} ex ({row['n_examples_missed_end_robust']} "
                      f"end robust); dtype-only {row['dtype_only_hits']:4d}; robust acc "
                      f"{100 * row['robust_acc_keep_false']:.2f}% -> keep "
                      f"{100 * row['robust_acc_keep_true']:.2f}%")
            # cost of the per-step fp32 forward: an attack that breaks nothing vs its fp32 passes
            cfg = PGDConfig(eps=1e-4, steps=args.steps)

            def attack(model=model, cfg=cfg, correct=correct):
                run_pgd(model, x, y, get_loss("ce"), cfg, attack_mask=correct)

            def fp32_passes(model=model, correct=correct):
                xs = x[correct]
                with torch.no_grad():
                    for _ in range(args.steps + 1):
                        model.reference(xs)

            t_att, t_ref = _timed(attack, args.repeats), _timed(fp32_passes, args.repeats)
            cost.append({"model": mname, "precision": prec.value, "steps": args.steps,
                         "attack_s": t_att, "fp32_forwards_s": t_ref,
                         "fp32_share_of_attack": t_ref / t_att})
            print(f"{mname:<10} {prec.value:<4} cost: attack {t_att:.3f}s, its fp32 forwards "
                  f"{t_ref:.3f}s = {100 * t_ref / t_att:.1f}% of the attack")
    write_json({"points": args.points, "steps": args.steps, "eps": args.eps,
                "threads": args.threads, "torch": torch.__version__,
                "attack": "untargeted PGD, cosine, momentum 0.75, 1 restart, seed 0",
                "rows": rows, "cost": cost}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
