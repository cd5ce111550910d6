"""What a cold `dvc repro` of the suite in params.yaml costs on this machine, and on one without
native bf16 (emulated): attack cost per precision and cell kind, fixed cost per stage, prediction.

    .venv/bin/python benchmarks/suite_timing.py [--quick] [--no-emulation] [--no-dvc]
        [--run-log PATH] [--out benchmarks/results/suite_timing.json]

(a) Attack cost: for each model of the suite and each precision, one unit of the attack cell's
    own code (:func:`tmifpe.evaluation.attack.run_unit`, loss ``--loss``, budget ``--budget``,
    the suite's eps/schedule/restarts, ``suite.threads``), untargeted and targeted (the suite's
    ``n_targets``, 3 if the precision runs untargeted only). Reported as seconds per *budgeted*
    point-step: attack wall time / (points attacked × budget × restarts × runs), early stops
    included, which is what the prediction multiplies by each cell's point-steps.
(b) Fixed cost per stage: interpreter start, ``import stages.<name>``, the smallest attack cell
    as a real stage (`python -m stages.attack`, in a scratch directory) on a 2-point dataset (all
    of a stage's cost but the attack: imports, params, model and data load, outputs), and the
    same under `dvc repro -s -f` in a scratch clone minus the bare stage (DVC's own overhead).
    Needs the data and model stages' outputs (data/eval, models/); skipped otherwise.

Every attack measurement runs in a subprocess, natively and (unless --no-emulation) with
``ATEN_CPU_CAPABILITY=avx2`` (ATen's kernel dispatch) and ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's
ISA cap): on a CPU with AVX-512-bf16/AMX this reproduces a CPU without native bf16, where bf16
kernels run emulated (the JSON records ``torch.backends.cpu.get_cpu_capability()`` in both, and
a bare bf16/fp32 conv ratio as the check). Precisions the suite lists but this package does not
know (``amp-fp16``/``amp-bf16`` before they land) are predicted at the cost of fp16/bf16.

The prediction of a cold repro = Σ over attack cells of point-steps × cost + number of stages ×
(stage fixed cost + DVC overhead) + the other stages' compute (model training, AutoAttack,
diagnostics, ablations, fast, aggregate, report) read from ``--run-log`` (the start/done lines a
`TMIFPE_RUN_LOG=... dvc repro` writes), reported as missing when not given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
STAGES = ("data", "model", "attack", "autoattack", "diagnostics", "ablations", "fast",
          "aggregate", "report")
# precisions not (yet) known to this package: predicted at the cost of this one
# On a shared machine wall times overstate; CPU time (user+sys) of the measured work does not
# depend on other processes' load, and bounds an unloaded run's wall time from above when the
# work keeps at most one core busy (stage start-up) and from below x threads otherwise.
CPU_CLOCK = True
FIXED_COST_POINTS = 2
COST_PROXY = {"amp-fp16": "fp16", "amp-bf16": "bf16"}


def cpu_flags() -> dict[str, Any]:
    """Native bf16 support of this CPU (Linux /proc/cpuinfo flags) and torch's kernel level."""
    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "bf16_flags": native,
            "native_bf16": bool(native), "torch_cpu_capability":
            torch.backends.cpu.get_cpu_capability()}


# ---------------------------------------------------------------- (a) attack cost (worker side)

def _conv_ratio(threads: int) -> float:
    """bf16/fp32 wall-time ratio of a bare conv forward+backward (the emulation check)."""
    import torch

    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        c = conv.to(dt)
        x = torch.rand(64, 32, 8, 8, dtype=dt, requires_grad=True)
        for _ in range(2):
            c(x).sum().backward()
        t0 = time.perf_counter()
        for _ in range(5):
            c(x).sum().backward()
        times[dt] = time.perf_counter() - t0
    return times[torch.bfloat16] / times[torch.float32]


def attack_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time one unit per (model, precision, untargeted/targeted) with the cell's code."""
    import torch

    from tmifpe.data.sources import load_eval_points
    from tmifpe.evaluation.attack import AttackSettings, VerdictModels, run_unit
    from tmifpe.losses import parse_loss
    from tmifpe.models.zoo import build_small_cnn, load_model, model_files
    from tmifpe.pipeline.config import load_params
    from tmifpe.precision import Precision
    from tmifpe.runtime import numerics

    suite = load_params(ROOT / "params.yaml")
    rows = []
    with numerics(suite.threads):
        for model in suite.models:
            mp, ds = suite.model_and_dataset(model)
            ds_key, _ = suite.dataset_of(model)
            data = ROOT / "data" / "eval" / f"{ds_key}.pt"
            trained = bool(model_files(model, ROOT / "models"))
            cwd = Path.cwd()
            os.chdir(ROOT)  # load_model reads models/<key> relative to the project
            try:
                net = (load_model(model, mp, ds) if trained
                       else build_small_cnn(mp, suite.datasets[ds_key].source).eval())
            finally:
                os.chdir(cwd)
            if data.exists():
                x, y = load_eval_points(data, args.points)
            else:  # no data stage output: random points (cost only; a smoke run)
                gen = torch.Generator().manual_seed(0)
                x = torch.rand(args.points, 1, 8, 8, generator=gen)
                y = torch.randint(0, 10, (args.points,), generator=gen)
            if not trained:  # untrained: its own predictions as labels, so points get attacked
                with torch.no_grad():
                    y = net(x).argmax(1)
            models = VerdictModels(net, torch.device("cpu"))
            ap = suite.attack
            settings = AttackSettings(loss=parse_loss(args.loss), eps=ds.eps, budget=args.budget,
                                      schedule=ap.schedule, momentum=ap.momentum,
                                      restarts=ap.restarts, seed=ap.seed,
                                      batch_size=ap.batch_size, tstar_rule=ap.tstar_rule)
            for name, pp in suite.precisions.items():
                prec = Precision(name)
                for n_targets in (0, pp.n_targets or 3):
                    cpu0 = time.process_time()
                    unit = run_unit(models, settings, prec, x, y, n_targets=n_targets, batch=0)
                    cpu = time.process_time() - cpu0  # incl. the verdict: load-independent
                    runs = max(int(unit["n_targets"]), 1)
                    attacked = int(unit["n_attacked"])
                    steps = attacked * args.budget * ap.restarts * runs
                    wall = float(unit["wall_time_s"])
                    rows.append({
                        "model": model, "trained": trained, "real_data": data.exists(),
                        "precision": prec.value, "kind": "targeted" if n_targets else "untargeted",
                        "runs": runs, "points": attacked, "budget": args.budget,
                        "wall_s": round(wall, 4),
                        "s_per_point_step": wall / steps if steps else None,
                        "cpu_s": round(cpu, 4),
                        "cpu_s_per_point_step": cpu / steps if steps else None,
                        "n_forward": int(unit["n_forward"].sum()),
                    })
    return {"cpu": cpu_flags(), "conv_bf16_over_fp32": round(_conv_ratio(suite.threads), 2),
            "rows": rows}


def run_worker(emulate: bool, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0",
           **(AVX2_ENV if emulate else {})}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--points",
           str(args.points), "--budget", str(args.budget), "--loss", args.loss]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- (b) fixed cost per stage

def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _wall(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """CPU seconds (user+sys) of the command's processes if ``CPU_CLOCK`` else wall seconds."""
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return cpu if CPU_CLOCK else wall


def _median(cmd: list[str], repeats: int, env: dict[str, str]) -> float:
    return statistics.median(_wall(cmd, ROOT, env) for _ in range(repeats))


def smallest_cell(suite: Any) -> tuple[str, str, int]:
    return suite.models[0], suite.losses[0].value, min(suite.budgets)


def fixed_costs(args: argparse.Namespace) -> dict[str, Any]:
    from tmifpe.pipeline.config import load_params

    suite = load_params(ROOT / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": str(suite.hash_seed)}
    py = sys.executable
    out: dict[str, Any] = {"repeats": args.repeats, "clock": "cpu" if CPU_CLOCK else "wall"}
    out["interpreter_s"] = round(_median([py, "-c", "pass"], args.repeats, env), 3)
    out["import_s"] = {s: round(_median([py, "-c", f"import stages.{s}"], args.repeats, env), 3)
                       for s in STAGES}
    model, loss, budget = smallest_cell(suite)
    ds_key, _ = suite.dataset_of(model)
    have = (ROOT / "data/eval" / f"{ds_key}.pt").exists() and (ROOT / "models" / model).is_dir()
    out["cell"] = f"{model}-{loss}"  # the attack stage, at one budget (the smallest)
    if not have:
        out["stage_s"] = out["stage_fixed_s"] = out["dvc_overhead_s"] = None
        out["skipped"] = "no data/eval or models/ outputs: run the data and model stages first"
        return out
    cmd = [py, "-m", "stages.attack", "--model", model, "--loss", loss]
    # the same stage on a 2-point dataset: all of its cost but the attack is the fixed cost
    import yaml

    from tmifpe.pipeline.suite_grid import derive_grid

    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["suite"]["datasets"][ds_key]["n_examples"] = FIXED_COST_POINTS
    doc["suite"]["budgets"] = [budget]
    doc["grid"] = derive_grid(doc["suite"])
    tiny = yaml.safe_dump(doc, sort_keys=False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(tiny)
        (work / "data").mkdir()
        (work / "data/eval").symlink_to(ROOT / "data/eval")
        (work / "models").symlink_to(ROOT / "models")
        (work / "stages").symlink_to(ROOT / "stages")
        wall = statistics.median(_wall(cmd, work, {**env, "TMIFPE_WORK_DIR": str(work / "wk")})
                                 for _ in range(args.repeats))
    out.update(stage_points=FIXED_COST_POINTS, stage_fixed_s=round(wall, 3))
    out["dvc_overhead_s"] = None
    if args.dvc and shutil.which("dvc"):
        with tempfile.TemporaryDirectory() as tmp:
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            (clone / "params.yaml").write_text(tiny)
            for rel in (f"data/eval/{ds_key}.pt", f"models/{model}"):
                (clone / rel).parent.mkdir(parents=True, exist_ok=True)
                copy = shutil.copytree if (ROOT / rel).is_dir() else shutil.copy
                copy(ROOT / rel, clone / rel)
            dvc_wall = _wall(["dvc", "repro", "-s", "-f", f"attack@{out['cell']}"], clone,
                             {**env, "TMIFPE_WORK_DIR": str(Path(tmp) / "wk")})
        out["dvc_stage_s"] = round(dvc_wall, 3)
        out["dvc_overhead_s"] = round(dvc_wall - wall, 3)
    return out


# ---------------------------------------------------------------- prediction

def _grid_steps(suite: Any, n_points: dict[str, int]) -> list[dict[str, Any]]:
    """Budgeted point-steps of every attack unit of the suite (cap rules of the cell)."""
    units = []
    for model in suite.models:
        n = n_points[model]
        for _loss in suite.losses:
            for b in suite.budgets:
                for prec in suite.precisions_for_budget(b):
                    pp = suite.precisions[prec]
                    n_prec = min(n, pp.n_examples or n)
                    kinds = [("untargeted", 1)] + ([("targeted", pp.n_targets)]
                                                   if pp.n_targets else [])
                    for kind, runs in kinds:
                        units.append({"model": model, "precision": prec.value, "kind": kind,
                                      "steps": n_prec * b * suite.attack.restarts * runs})
    return units


def stage_count(suite: Any) -> int:
    n_models = len(suite.models)
    return (len(suite.datasets) + n_models + len(suite.models) * len(suite.losses)
            + 4 * n_models + 2)  # attack: one stage per model × loss, every budget inside


def other_stages(run_log: Path | None) -> dict[str, Any] | None:
    """Compute seconds of the non-attack stages from a run log (start/done per stage)."""
    if run_log is None or not run_log.exists():
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cold_repro import stage_walls

    walls = stage_walls(run_log)
    by_kind: dict[str, float] = {}
    for stage, w in walls.items():
        kind = stage.split("@")[0]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + w, 2)
    return by_kind


def predict(suite: Any, measured: dict[str, Any], fixed: dict[str, Any],
            others: dict[str, Any] | None, n_points: dict[str, int]) -> dict[str, Any]:
    key = "cpu_s_per_point_step" if CPU_CLOCK else "s_per_point_step"
    cost = {(r["model"], r["precision"], r["kind"]): r[key] for r in measured["rows"]}
    attack = 0.0
    by_prec: dict[str, float] = {}
    for u in _grid_steps(suite, n_points):
        prec = COST_PROXY.get(u["precision"], u["precision"])
        c = cost.get((u["model"], prec, u["kind"])) or 0.0
        attack += u["steps"] * c
        by_prec[u["precision"]] = by_prec.get(u["precision"], 0.0) + u["steps"] * c
    n_stages = stage_count(suite)
    per_stage = (fixed.get("stage_fixed_s") or 0.0) + (fixed.get("dvc_overhead_s") or 0.0)
    other = sum(v for k, v in (others or {}).items() if k != "attack")
    return {"clock": "cpu (user+sys; an upper bound of an unloaded 2-core wall time for the "
                     "attack compute, which uses up to suite.threads cores)" if CPU_CLOCK
            else "wall",
            "attack_compute_s": round(attack, 1),
            "attack_compute_by_precision_s": {k: round(v, 1) for k, v in by_prec.items()},
            "n_stages": n_stages, "fixed_per_stage_s": round(per_stage, 2),
            "fixed_total_s": round(n_stages * per_stage, 1),
            "other_stages_compute_s": round(other, 1) if others else None,
            "cold_repro_s": round(attack + n_stages * per_stage + other, 1),
            "complete": others is not None and fixed.get("dvc_overhead_s") is not None}


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few points, budget 3, 1 repeat")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--loss", default="tmifpe")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-emulation", dest="emulation", action="store_false")
    ap.add_argument("--no-dvc", dest="dvc", action="store_false")
    ap.add_argument("--no-fixed", dest="fixed", action="store_false")
    ap.add_argument("--run-log", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, default=None,
                    help="take the measurements from this earlier JSON; predict for params.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/suite_timing.json")
    args = ap.parse_args()
    args.points = args.points or (16 if args.quick else 120)
    args.budget = args.budget or (3 if args.quick else 10)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.worker:
        print(json.dumps(attack_worker(args)))
        return

    from rich.console import Console
    from rich.table import Table

    from tmifpe.pipeline.config import load_params
    from tmifpe.runtime import environment

    suite = load_params(ROOT / "params.yaml")
    n_points = {m: suite.dataset_of(m)[1].n_examples for m in suite.models}
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        modes, fixed = old["modes"], old["fixed_cost"]
        args.points, args.budget, args.loss = old["points"], old["budget"], old["loss"]
    else:
        modes = {"native": run_worker(False, args)}
        if args.emulation:
            modes["avx2_emulated"] = run_worker(True, args)
        fixed = fixed_costs(args) if args.fixed else {}
    others = other_stages(args.run_log)
    report = {
        "benchmark": "suite_timing", "mode": "quick" if args.quick else "full",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite": suite.name, "threads": suite.threads, "loss": args.loss,
        "points": args.points, "budget": args.budget,
        "load_average": list(os.getloadavg()), "logical_cores": os.cpu_count(),
        "emulation": {m: AVX2_ENV for m in modes if m != "native"},
        "measured_in": str(args.reuse) if args.reuse else None,
        "environment": environment("cpu"), "cpu": cpu_flags(),
        "modes": modes, "fixed_cost": fixed, "other_stages_compute_s": others,
        "prediction": {m: predict(suite, r, fixed, others, n_points) for m, r in modes.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    con = Console()
    table = Table(title=f"attack cost, CPU µs per budgeted point-step ({args.loss}, budget "
                        f"{args.budget}, {args.points} points, {suite.threads} threads)")
    for col in ("model", "precision", "kind", *modes):
        table.add_column(col)
    for i, r in enumerate(modes["native"]["rows"]):
        vals = [m["rows"][i]["cpu_s_per_point_step"] for m in modes.values()]
        table.add_row(r["model"], r["precision"], r["kind"],
                      *(f"{v * 1e6:.1f}" if v else "-" for v in vals))
    con.print(table)
    for name, m in modes.items():
        con.print(f"{name}: torch capability {m['cpu']['torch_cpu_capability']}, "
                  f"bf16/fp32 conv {m['conv_bf16_over_fp32']}×")
    con.print(f"native bf16 on this CPU: {report['cpu']['native_bf16']} "
              f"({', '.join(report['cpu']['bf16_flags']) or 'no avx512_bf16/amx_bf16'})")
    con.print({"fixed_cost": fixed})
    for name, p in report["prediction"].items():
        con.print(f"predicted cold repro ({name}): {p['cold_repro_s']} s "
                  f"(attack {p['attack_compute_s']} s, {p['n_stages']} stages × "
                  f"{p['fixed_per_stage_s']} s fixed, other stages "
                  f"{p['other_stages_compute_s']} s; complete={p['complete']})")
    con.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
