"""A cold ``dvc repro`` of the committed default suite, measured end to end (issue 19 item 7).

    .venv/bin/python benchmarks/cold_repro.py [--emulate-avx2] [--out PATH]

Clones this repository's HEAD into a temporary directory (no DVC cache, no run-cache, no
checkpoints: cold), runs ``dvc repro`` there with this interpreter's environment and
``TMIFPE_RUN_LOG`` set, and writes one JSON record (default
``benchmarks/results/cold_repro[.avx2].json``):

- ``wall_s``: wall time of the whole ``dvc repro`` (:func:`time.perf_counter`);
- ``cpu_s``: user + system CPU seconds of ``dvc repro`` and every process it started
  (``resource.getrusage(RUSAGE_CHILDREN)``), less sensitive to other load than the wall time;
- ``stages``: per stage, the seconds between its ``start`` and ``done`` run-log lines (inside the
  stage process, after its imports); ``outside_stages_s``: wall time not inside any stage body
  (DVC's bookkeeping, interpreter start, imports), and its mean per stage;
- ``load_average`` before and after, the CPU (model, logical cores, whether it has native bf16
  instructions), :func:`tmifpe.runtime.environment`; with ``--emulate-avx2`` the run sets
  ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` (PyTorch's and oneDNN's public
  dispatch controls), so fp16/bf16 kernels run as on a CPU without AVX-512/AMX: the case the
  default suite is sized for.

Numbers are only meaningful on an otherwise idle machine: the record keeps the load averages so
a reader can tell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tmifpe.pipeline.runlog import read_runs  # noqa: E402
from tmifpe.runtime import environment  # noqa: E402

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_facts() -> dict[str, Any]:
    """CPU model, logical cores and its bf16 instruction flags (Linux /proc/cpuinfo)."""
    model, flags = platform.processor(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": model, "logical_cores": os.cpu_count(),
            "bf16_flags": sorted(flags & set(BF16_FLAGS)),
            "native_bf16": bool(flags & set(BF16_FLAGS))}


def stage_walls(run_log: Path) -> dict[str, float]:
    """Seconds between each stage's start and done lines."""
    start: dict[str, float] = {}
    walls: dict[str, float] = {}
    for r in read_runs(run_log):
        if r["event"] == "start":
            start[r["stage"]] = r["time"]
        elif r["event"] == "done" and r["stage"] in start:
            walls[r["stage"]] = round(r["time"] - start[r["stage"]], 3)
    return walls


def cold_repro(emulate_avx2: bool, workdir: Path | None = None) -> dict[str, Any]:
    """Clone HEAD, ``dvc repro`` it cold, return the measurements. ``workdir``: clone there
    (an empty or absent directory) and keep it, outputs, DVC cache and run log included."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"error: --workdir {workdir} is not empty (expected a new directory)")
    with tempfile.TemporaryDirectory(prefix="tmifpe-cold-") as scratch:
        tmp = workdir or Path(scratch)
        clone = tmp / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        run_log = tmp / "runs.jsonl"
        env = {**os.environ, "TMIFPE_RUN_LOG": str(run_log), "PYTHONHASHSEED": "0",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **(AVX2_ENV if emulate_avx2 else {})}
        env.pop("PYTHONPATH", None)
        load_before = os.getloadavg()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=clone, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise SystemExit(f"dvc repro failed ({proc.returncode}):\n{tail}")
        walls = stage_walls(run_log)
        fast = fast_verdicts(clone / "results/metrics.json")
        n_stages = len(subprocess.run([sys.executable, "-m", "dvc", "stage", "list",
                                       "--name-only"], cwd=clone, env=env, capture_output=True,
                                      text=True, check=True).stdout.split())
    inside = sum(walls.values())
    by_kind: dict[str, float] = {}
    for stage, w in walls.items():
        kind = stage.split("@")[0]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + w, 3)
    return {
        "benchmark": "cold_repro",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": head,
        "command": "dvc repro (fresh clone: no DVC cache, run-cache or checkpoints)",
        "emulation": AVX2_ENV if emulate_avx2 else None,
        "cpu": cpu_facts(),
        "environment": environment("cpu"),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in load_after]},
        "wall_s": round(wall, 1),
        "wall_min": round(wall / 60, 2),
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
        "n_stages": n_stages,
        "n_stages_run": len(walls),
        "inside_stages_s": round(inside, 1),
        "outside_stages_s": round(wall - inside, 1),
        "outside_per_stage_s": round((wall - inside) / max(len(walls), 1), 2),
        "inside_by_kind_s": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "stages": walls,
        "fast": fast,
    }


FAST_FIELDS = ("robust_acc", "aa_robust_acc", "gap_vs_aa_pts", "gap_ci_low", "gap_ci_high",
               "pass_ratio", "n_broken_aa_only", "n_broken_fast_only")


def fast_verdicts(metrics: Path) -> dict[str, dict[str, Any]]:
    """Per model of the suite, the fast preset vs AutoAttack on the held-out points of this
    clone's run (``results/metrics.json`` → ``<suite>.<model>.fast``): the models were
    retrained here, so this is the preset's verdict on this machine's (or emulation's) draw of
    the weights."""
    doc = json.loads(metrics.read_text())
    return {model: {f: m["fast"].get(f) for f in FAST_FIELDS}
            for suite in doc.values() if isinstance(suite, dict)
            for model, m in suite.items() if isinstance(m, dict) and "fast" in m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="run with PyTorch/oneDNN dispatch capped at AVX2 (no native bf16)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="clone into this new directory and keep it (outputs, cache, run log)")
    args = ap.parse_args()
    if shutil.which("git") is None:
        raise SystemExit("error: git not found (the benchmark clones the repository)")
    out = args.out or ROOT / "benchmarks/results" / (
        "cold_repro.avx2.json" if args.emulate_avx2 else "cold_repro.json")
    rec = cold_repro(args.emulate_avx2, args.workdir)
    from tmifpe.storage import write_json

    write_json(rec, out)
    print(f"{'cold dvc repro':<28}{rec['wall_min']:>8.2f} min wall, {rec['cpu_s']:.0f} s CPU")
    for model, f in rec["fast"].items():
        print(f"  fast {model:<21}gap {f['gap_vs_aa_pts']:+.2f} pts vs AutoAttack, "
              f"pass ratio {f['pass_ratio']:.4f}")
    print(f"{'stages run / listed':<28}{rec['n_stages_run']:>8} / {rec['n_stages']}")
    print(f"{'outside stage bodies':<28}{rec['outside_stages_s']:>8.1f} s "
          f"({rec['outside_per_stage_s']:.2f} s per stage)")
    for kind, s in rec["inside_by_kind_s"].items():
        print(f"  {kind:<26}{s:>8.1f} s")
    print(f"cpu: {rec['cpu']['model']} ({rec['cpu']['logical_cores']} logical cores, native "
          f"bf16: {rec['cpu']['native_bf16']}), emulation: {rec['emulation']}, load before "
          f"{rec['load_average']['before']} -> {out}")


if __name__ == "__main__":
    main()
