"""Where a PGD-CE step's time goes beyond the bare forward+backward (torch.profiler, CPU).

    .venv/bin/python benchmarks/step_profile.py [--batch 16] [--steps 4] [--out PATH]

For the CIFAR-10 ResNet-18 of ``benchmarks/attack_step.py`` (same points, eps 1e-4: nothing is
ever broken, every step does full work) at fp32 and fp64: ``run_pgd`` with CE for S steps and
the bare loop (S forward+backward passes + 1 no-grad forward, what PGD must do) are each
profiled once. Per op name, the self CPU time of PGD minus the bare loop's, divided by S, is the
engine's per-step excess; ops that only PGD calls are its bookkeeping. Also counted per step:
ops that force a device->host sync on a GPU (``aten::item``/``_local_scalar_dense``,
``aten::nonzero``: boolean-mask indexing) and gathers/scatters (``aten::index``,
``aten::index_put_``). Profiler overhead inflates small ops; the wall-time ratio is measured
without the profiler (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.losses import get_loss
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")
INDEX_OPS = ("aten::index", "aten::index_put_", "aten::index_select", "aten::masked_select")


def _step_module():  # benchmarks/ is not a package: load attack_step.py by path
    spec = importlib.util.spec_from_file_location("attack_step", ROOT / "benchmarks/attack_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["attack_step"] = mod
    spec.loader.exec_module(mod)
    return mod


def _bare(model, x, y, steps: int) -> None:
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        torch.autograd.grad(loss, xg)
    with torch.no_grad():
        model(x)


def _pgd(model, x, y, steps: int, eps: float) -> None:
    res = run_pgd(model, x, y, get_loss("ce"), PGDConfig(eps=eps, steps=steps))
    if res.success.any() or (res.n_backward < steps).any():
        raise RuntimeError("a point was broken: not a full-work measurement")


def _self_times(fn) -> dict[str, tuple[float, int]]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}


def measure(model, x, y, prec: Precision, steps: int, repeats: int, eps: float) -> dict:
    pm = PrecisionModel(model, prec)
    wall: dict[str, list[float]] = {"pgd": [], "bare": []}
    for _ in range(repeats + 1):  # first round is a warm-up
        for name, fn in (("bare", lambda: _bare(pm, x, y, steps)),
                         ("pgd", lambda: _pgd(pm, x, y, steps, eps))):
            t0 = time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in wall.items()}
    p = _self_times(lambda: _pgd(pm, x, y, steps, eps))
    b = _self_times(lambda: _bare(pm, x, y, steps))
    excess = sorted(((k, (p[k][0] - b.get(k, (0.0, 0))[0]) / steps,
                      (p[k][1] - b.get(k, (0.0, 0))[1]) / steps) for k in p),
                    key=lambda t: -t[1])
    pgd_total, bare_total = sum(v[0] for v in p.values()), sum(v[0] for v in b.values())
    only_pgd = sum(v[0] for k, v in p.items() if k not in b)
    return {
        "precision": prec.value, "batch": x.shape[0], "steps": steps, "repeats": repeats,
        "wall_pgd_s": med["pgd"], "wall_bare_s": med["bare"],
        "wall_ratio_pgd_vs_bare": med["pgd"] / med["bare"],
        "profiled_self_cpu_pgd_s": pgd_total, "profiled_self_cpu_bare_s": bare_total,
        "ops_only_in_pgd_s_per_step": only_pgd / steps,
        "ops_only_in_pgd_share_of_step": only_pgd / pgd_total,
        "sync_ops_per_step": {k: p[k][1] / steps for k in SYNC_OPS if k in p},
        "index_ops_per_step": {k: p[k][1] / steps for k in INDEX_OPS if k in p},
        "top_excess_ops": [{"op": k, "s_per_step": round(s, 6), "calls_per_step": c}
                           for k, s, c in excess[:12]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/step_profile.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mod = _step_module()
    model, x_all, y_all, source = mod.load_resnet(args.batch)
    x, y = mod.confident_points(model, x_all, y_all, args.batch)
    rows = []
    for prec, steps in ((Precision.FP32, args.steps), (Precision.FP64, max(2, args.steps // 2))):
        r = measure(model, x, y, prec, steps, args.repeats, mod.EPS)
        rows.append(r)
        print(f"{prec.value}: PGD-CE {r['wall_pgd_s']:.3f}s vs bare {r['wall_bare_s']:.3f}s "
              f"= {r['wall_ratio_pgd_vs_bare']:.3f}x; ops only in PGD "
              f"{1e3 * r['ops_only_in_pgd_s_per_step']:.2f} ms/step "
              f"({100 * r['ops_only_in_pgd_share_of_step']:.2f}%); syncs/step "
              f"{r['sync_ops_per_step']}")
        for e in r["top_excess_ops"][:8]:
            print(f"   {e['op']:<40} {1e3 * e['s_per_step']:8.3f} ms/step "
                  f"{e['calls_per_step']:6.1f} calls/step")
    write_json({"model": "CIFAR-10 ResNet-18 (pyautoattack 0.2.0)", "source": source,
                "threads": args.threads, "torch": torch.__version__, "rows": rows}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
