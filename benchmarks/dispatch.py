"""2 Dask workers vs a sequential `dvc repro` of the default suite, from one run of each.

    .venv/bin/python benchmarks/dispatch.py [--workers 2] [--budgets 10 ...] [--out PATH]

``--budgets`` cuts the suite's attack budgets (recorded in the JSON) for a shorter run.

Each mode runs in its own fresh copy of the repository (git + DVC initialised, empty cache, the
suite of this checkout's params.yaml), so neither finds the other's run-cache. The ratio is from
one run of each: on a shared machine it is noisy, so the 1-minute load average before and after
each mode is recorded next to it. Both copies must produce the same per-example files; the
benchmark checks that and records it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = ""
    return env


def _run(cwd: Path, *args: str) -> None:
    subprocess.run(args, cwd=cwd, env=_env(), check=True, stdout=subprocess.DEVNULL)


def _copy(dst: Path, budgets: list[int] | None) -> Path:
    dst.mkdir(parents=True)
    for name in ("tmifpe", "stages"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dst / name)
    if budgets:  # the suite with other budgets, and the grid derived from it (as DVC would)
        from tmifpe.pipeline.suite_grid import derive_grid

        suite = yaml.safe_load((ROOT / "params.yaml").read_text())["suite"]
        suite["budgets"] = budgets
        doc = {"suite": suite, "grid": derive_grid(suite)}
        (dst / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (dst / ".gitignore").write_text("__pycache__/\n/.tmifpe-work/\n")
    _run(dst, "git", "init", "-q")
    _run(dst, "git", "config", "user.email", "bench@example.invalid")
    _run(dst, "git", "config", "user.name", "bench")
    _run(dst, sys.executable, "-m", "dvc", "init", "-q")
    _run(dst, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    _run(dst, "git", "add", "-A")
    _run(dst, "git", "commit", "-qm", "benchmark copy")
    return dst


def _timed(cwd: Path, *args: str) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    _run(cwd, *args)
    return {"wall_s": round(time.monotonic() - t0, 1), "load1_before": round(load_before, 2),
            "load1_after": round(os.getloadavg()[0], 2)}


def _files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes()
            for p in sorted((repo / "results").rglob("*.parquet")) if "aggregate" not in p.parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budgets", type=int, nargs="+", help="attack budgets (default: the suite's)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dispatch.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tmifpe.pipeline.config import load_params
    from tmifpe.storage import write_json

    suite = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="tmifpe-bench-") as tmp:
        seq_repo, par_repo = (_copy(Path(tmp) / m, args.budgets)
                              for m in ("sequential", "dispatch"))
        seq = _timed(seq_repo, sys.executable, "-m", "dvc", "repro")
        print(f"sequential dvc repro: {seq['wall_s']} s")
        par = _timed(par_repo, sys.executable, "-m", "tmifpe.dispatch", "run", "--workers",
                     str(args.workers), "--dashboard", ":0")
        print(f"dispatch run --workers {args.workers}: {par['wall_s']} s")
        identical = _files(seq_repo) == _files(par_repo)
    result = {
        "benchmark": "dispatch", "suite": suite.name, "threads_per_stage": suite.threads,
        "budgets": args.budgets or suite.budgets, "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "sequential": seq, "dispatch": par,
        "speedup": round(seq["wall_s"] / par["wall_s"], 3),
        "per_example_files_identical": identical,
        "machine": platform.platform(), "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "one run of each mode on a machine shared with other jobs: see the load averages",
    }
    write_json(result, args.out)
    print(f"speedup {result['speedup']}x, files identical: {identical} -> {args.out}")


if __name__ == "__main__":
    main()
