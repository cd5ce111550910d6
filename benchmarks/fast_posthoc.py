"""POST-HOC, exploratory (not a validation): compositions run on every model of the protocol
*after* its validation result was seen (benchmarks/results/fast_validation.json). The
validation models are no longer unseen for these rows: they can only suggest the next
protocol's candidates, never support a claim.

    .venv/bin/python benchmarks/fast_posthoc.py [--out benchmarks/results/fast_posthoc.json]

Reads the cached models and AutoAttack frames of benchmarks/fast_validation.py (run it first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_models import PROTOCOL, ROOT, WORK, digits_data, load_or_train
from fast_validation import preset_config, run_preset, score

from tmifpe.attacks.fast import Kind, Phase
from tmifpe.runtime import environment
from tmifpe.storage import write_json

U, T = Kind.UNTARGETED, Kind.TARGETED
COMPOSITIONS = {
    "u50+t20k3malt+u50": (Phase(U, 50), Phase(T, 20, n_targets=3, targets="malt"),
                          Phase(U, 50)),
    "u20+t20k5malt+u50+t20k3rank": (Phase(U, 20), Phase(T, 20, n_targets=5, targets="malt"),
                                    Phase(U, 50), Phase(T, 20, n_targets=3)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fast_posthoc.json")
    args = ap.parse_args()
    proto = json.loads(PROTOCOL.read_text())
    torch.set_num_threads(proto["threads"])
    data = digits_data()
    n = proto["dataset"]["n_points"]
    x, y = data["x_test"][:n], data["y_test"][:n]
    rows = []
    for name, phases in COMPOSITIONS.items():
        for k, s in proto["models"].items():
            model = load_or_train(k, s["train"], data)
            aa = pl.read_parquet(WORK / "aa" / f"{k}.parquet")
            aa_wall = json.loads((WORK / "aa" / f"{k}.json").read_text())["wall_time_s"]
            cfg = preset_config(phases, s["eps"], proto)
            frame, wall, _ = run_preset("posthoc", k, cfg, model, x, y, proto, WORK)
            r = score(k, s["role"], s["eps"], frame, wall, aa, aa_wall, True, proto["bootstrap"])
            rows.append({"composition": name, "preset": cfg.name, **r})
            print(name, k, r["gap_vs_aa_pts"], r["pass_ratio"], flush=True)
    write_json({"status": "post hoc, exploratory: validation models already seen",
                "environment": environment("cpu"), "rows": rows}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
