"""POST-HOC robustness check of a protocol's selected preset (not part of its verdict): the
selection run again with other attack seeds (the random starts of every phase and Square's draws)
on every model of the protocol, each scored against the same AutoAttack run (seed 0).

    .venv/bin/python benchmarks/fast_seeds.py [--protocol benchmarks/fast_protocol_v3.json]
        [--result benchmarks/results/fast_validation_v3.json] [--seeds 1 2]
        [--work .tmifpe-work/fast_validation] [--out benchmarks/results/fast_seeds_v3.json]

A verdict that holds at seed 0 only would be one lucky draw; this shows how often the preset's
gap to AutoAttack stays <= 0 when only the preset's own randomness changes. ``--aa-seeds``: the
noise floor of the target itself, AutoAttack with other seeds on the validation models, compared
with AutoAttack at seed 0 the same way (gap, points robust at seed k that seed 0 broke).
Reads the protocol's cached models and AutoAttack frames (run benchmarks/fast_validation.py
first); preset runs are cached per seed under ``<work>/seed<k>/``, AutoAttack runs under
``<work>/aa_seed<k>/``. Seed 0 rows are the protocol result's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_models import ROOT, WORK, digits_data, load_or_train
from fast_validation import autoattack, candidate_config, protocol_sha256, run_preset, score

from tmifpe.runtime import environment
from tmifpe.storage import write_json

FIELDS = ("model", "role", "robust_acc", "aa_robust_acc", "gap_vs_aa_pts", "gap_ci_low",
          "gap_ci_high", "pass_ratio", "n_missed", "n_broken_fast_only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", type=Path, default=ROOT / "benchmarks/fast_protocol_v3.json")
    ap.add_argument("--result", type=Path,
                    default=ROOT / "benchmarks/results/fast_validation_v3.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--aa-seeds", type=int, nargs="*", default=[1])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fast_seeds_v3.json")
    args = ap.parse_args()
    proto = json.loads(args.protocol.read_text())
    result = json.loads(args.result.read_text())
    if result["protocol_sha256"] != protocol_sha256(args.protocol):
        raise SystemExit(f"error: {args.result} was scored with another protocol than "
                         f"{args.protocol} (sha256 {result['protocol_sha256'][:12]})")
    if 0 in args.seeds:
        raise SystemExit("error: --seeds must not contain 0 (seed 0 is the protocol's own run)")
    torch.set_num_threads(proto["threads"])
    data = digits_data()
    n = proto["dataset"]["n_points"]
    x, y = data["x_test"][:n], data["y_test"][:n]
    rows = [{"seed": 0, **{f: r[f] for f in FIELDS}} for r in result["models"]]
    aa_rows = []
    for key, spec in proto["models"].items():
        model = load_or_train(key, spec["train"], data, args.work)
        aa = autoattack(key, model, x, y, spec["eps"], proto, args.work)
        base = candidate_config(result["selected_phases"], spec["eps"], proto)
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed)
            frame, wall, _ = run_preset(f"seed{seed}", key, cfg, model, x, y, proto, args.work)
            r = score(key, spec["role"], spec["eps"], frame, wall, *aa, proto["bootstrap"])
            rows.append({"seed": seed, **{f: r[f] for f in FIELDS}})
            print(f"  {key} seed {seed}: gap {r['gap_vs_aa_pts']:+.2f} pts, missed "
                  f"{r['n_missed']}, pass ratio {r['pass_ratio']:.4f}", flush=True)
        if spec["role"] != "validation":
            continue
        r0 = aa[0].sort("example")["robust_fp32"].to_numpy()
        for seed in args.aa_seeds:
            other_proto = {**proto, "autoattack": {**proto["autoattack"], "seed": seed}}
            other = autoattack(key, model, x, y, spec["eps"], other_proto,
                               args.work / f"aa_seed{seed}")[0]
            rk = other.sort("example")["robust_fp32"].to_numpy()
            aa_rows.append({"model": key, "aa_seed": seed,
                            "robust_acc": round(float(rk.mean()), 6),
                            "aa_robust_acc": round(float(r0.mean()), 6),
                            "gap_vs_aa_pts": round(100.0 * float(rk.mean() - r0.mean()), 4),
                            "n_missed": int((rk & ~r0).sum()),
                            "n_broken_other_only": int((~rk & r0).sum())})
            print(f"  AutoAttack seed {seed} vs seed 0 on {key}: gap "
                  f"{aa_rows[-1]['gap_vs_aa_pts']:+.2f} pts, {aa_rows[-1]['n_missed']} "
                  "robust here that seed 0 broke", flush=True)
    seeds = [0, *args.seeds]
    summary = {}
    for role in ("tuning", "validation"):
        rs = [r for r in rows if r["role"] == role]
        summary[role] = {
            "runs": len(rs),
            "runs_gap_gt_0": sum(r["gap_vs_aa_pts"] > 0 for r in rs),
            "worst_gap_pts": max(r["gap_vs_aa_pts"] for r in rs),
            "missed_points": sum(r["n_missed"] for r in rs),
            "worst_pass_ratio": max(r["pass_ratio"] for r in rs),
            "models_gap_le_0_at_every_seed": sum(
                all(r["gap_vs_aa_pts"] <= 0 for r in rs if r["model"] == m)
                for m in {r["model"] for r in rs}),
            "models": len({r["model"] for r in rs}),
        }
    if aa_rows:
        summary["autoattack_vs_itself"] = {
            "runs": len(aa_rows), "runs_gap_gt_0": sum(r["gap_vs_aa_pts"] > 0 for r in aa_rows),
            "worst_gap_pts": max(r["gap_vs_aa_pts"] for r in aa_rows),
            "missed_points": sum(r["n_missed"] for r in aa_rows)}
    write_json({"benchmark": "fast_seeds", "post_hoc": True,
                "about": "the selected preset of the protocol result with other attack seeds; "
                         "AutoAttack at seed 0 throughout; not part of the protocol's verdict",
                "protocol": str(args.protocol.resolve().relative_to(ROOT)),
                "protocol_sha256": result["protocol_sha256"], "preset": result["preset"],
                "seeds": seeds, "summary": summary, "environment": environment("cpu"),
                "rows": rows, "autoattack_seed_rows": aa_rows}, args.out)
    for role in ("tuning", "validation"):
        s = summary[role]
        print(f"{role}: gap > 0 in {s['runs_gap_gt_0']} of {s['runs']} runs (worst "
              f"{s['worst_gap_pts']:+.2f}), {s['models_gap_le_0_at_every_seed']}/{s['models']} "
              f"models with gap <= 0 at every seed, {s['missed_points']} missed, pass ratio <= "
              f"{s['worst_pass_ratio']:.4f}")
    if aa_rows:
        s = summary["autoattack_vs_itself"]
        print(f"AutoAttack vs itself: gap > 0 in {s['runs_gap_gt_0']} of {s['runs']} runs "
              f"(worst {s['worst_gap_pts']:+.2f}), {s['missed_points']} points")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
