"""Cells spread over workers/machines with DVC's own mechanisms (scripts/workers.py).

Temporary git + DVC repos with a tiny grid (1 model x 2 losses x 2 budgets = 4 attack cells and
1 AutoAttack cell) and a local-directory DVC remote. What users rely on: every cell is computed
exactly once across the workers, the final `dvc repro` restores every cell from the run-cache and
runs only aggregate/report, and the per-example Parquet files are byte-identical to a
single-process `dvc repro`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from suite_support import write_params

from tmifpe import workers as W

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "workers.py"
SLOW = [pytest.mark.slow, pytest.mark.xdist_group("workers")]

GRID = {
    "name": "tiny",
    "device": "cpu",
    "threads": 1,
    "datasets": {"digits": {"source": "digits", "n_examples": 40, "eps": 0.2,
                            "test_size": 0.2, "split_seed": 0}},
    "model_zoo": {"digits_std": {"source": "trained", "dataset": "digits", "epochs": 3,
                                 "lr": 0.003, "seed": 0}},
    "models": ["digits_std"],
    "losses": ["ce", "tmifpe"],
    "budgets": [3, 5],
    "precisions": {"bf16": {"max_budget": 5, "n_targets": 2},
                   "fp32": {"n_targets": 2}},
    "attack": {"batch_size": 25, "seed": 0},
    "autoattack": {"seed": 0, "batch_size": 40},
    "ablations": {"budgets": [3]},
}
CELLS = {f"attack@digits_std-{loss}-{b}" for loss in ("ce", "tmifpe") for b in (3, 5)}
CELLS |= {"autoattack@digits_std", "diagnostics@digits_std", "ablations@digits_std"}
UPSTREAM = {"data@digits", "model@digits_std"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONHASHSEED"] = "0"
    return env


def _run(repo: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=repo, env=_env(), text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(repo, sys.executable, "-m", "dvc", *args)


def _workers(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(repo, sys.executable, SCRIPT, *args)


def _ran(out: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", out)


def _cached(out: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run", out))


def _worker_ran(repo: Path) -> list[str]:
    """Stages DVC ran in the worker copies (their logs survive the copies)."""
    logs = sorted((repo / W.WORKDIR).glob("w*.log"))
    return [s for log in logs for s in _ran(log.read_text())]


def _results(repo: Path) -> dict[str, bytes]:
    files = [*(repo / "results/attack").rglob("*.parquet"),
             *(repo / "results/autoattack").glob("*.parquet"),
             *(repo / "results/diagnostics").glob("*.parquet"),
             *(repo / "results/ablations").glob("*.parquet")]
    return {str(f.relative_to(repo)): f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("workers")
    repo = base / "origin"
    repo.mkdir()
    for name in ("tmifpe", "stages"):
        shutil.copytree(ROOT / name, repo / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_params(repo / "params.yaml", GRID)
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "config", "user.email", "ci@example.invalid")
    _run(repo, "git", "config", "user.name", "ci")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    _dvc(repo, "remote", "add", "-d", "store", str(base / "remote"))
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "tiny grid")
    return repo


def _clone(origin: Path, name: str) -> Path:
    dest = origin.parent / name
    _run(origin.parent, "git", "clone", "-q", origin, dest)
    return dest


@pytest.fixture(scope="module")
def reference(origin: Path) -> dict[str, bytes]:
    """Per-example Parquet files of one single-process `dvc repro` (own cache, no remote use)."""
    repo = _clone(origin, "single")
    proc = _dvc(repo, "repro")
    assert set(_ran(proc.stdout)) == CELLS | UPSTREAM | {"aggregate", "report"}
    results = _results(repo)
    assert len(results) == len(CELLS) + 1  # diagnostics: two files (bins and t* trace)
    return results


def test_shards_are_disjoint_cover_the_cells_and_mix_the_budgets() -> None:
    cells = W.select([*CELLS, *UPSTREAM, "aggregate", "report"])
    assert set(cells) == CELLS
    shards = [W.shard(cells, i, 2) for i in (1, 2)]
    assert sorted(shards[0] + shards[1]) == cells
    big = [c for c in cells if c.endswith("-5")]
    assert all(any(c in s for c in big) for s in shards)  # the expensive cells are spread
    assert W.cost_order(["attack@m-ce-10", "attack@m-ce-100", "autoattack@m"]) == [
        "autoattack@m", "attack@m-ce-100", "attack@m-ce-10"]
    with pytest.raises(ValueError):
        W.shard(cells, 3, 2)


@pytest.mark.parametrize("bad", ["3/2", "0/2", "x", "1-2"])
def test_bad_shard_is_a_one_line_usage_error(bad: str) -> None:
    proc = subprocess.run([sys.executable, SCRIPT, "plan", "--shard", bad], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [f"workers.py plan: error: argument --shard: got {bad!r}, expected i/n "
                      "with 1 <= i <= n (e.g. 2/3)"]


@pytest.mark.slow
@pytest.mark.xdist_group("workers")
def test_two_machines_share_cells_through_the_remote_run_cache(
    origin: Path, reference: dict[str, bytes]
) -> None:
    plans = [set(_workers(origin, "plan", "--shard", f"{i}/2").stdout.split()) for i in (1, 2)]
    assert plans[0] | plans[1] == CELLS and not plans[0] & plans[1]

    a = _clone(origin, "machine_a")  # computes data + model, its half, pushes with run-cache
    out_a = _workers(a, "run", "--shard", "1/2", "--workers", "1", "--push").stdout
    assert set(_ran(out_a)) == UPSTREAM  # in its main workspace; the cells ran in the worker
    b = _clone(origin, "machine_b")  # takes data + model from the remote run-cache
    out_b = _workers(b, "run", "--shard", "2/2", "--workers", "1", "--pull", "--push").stdout
    assert _ran(out_b) == [] and _cached(out_b) >= UPSTREAM
    ran = Counter(_worker_ran(a) + _worker_ran(b))
    assert set(ran) == CELLS and set(ran.values()) == {1}  # each cell computed exactly once
    assert set(_worker_ran(a)) == plans[0] and set(_worker_ran(b)) == plans[1]

    # Any clone: `dvc repro --pull` fetches the run-cache and, for each stage it finds there, the
    # outputs (`dvc pull --run-cache` alone fetches only what this clone's dvc.lock lists).
    c = _clone(origin, "machine_c")
    proc = _dvc(c, "repro", "--pull")
    assert set(_ran(proc.stdout)) == {"aggregate", "report"}
    assert _cached(proc.stdout) == CELLS | UPSTREAM
    assert _results(c) == reference


@pytest.mark.slow
@pytest.mark.xdist_group("workers")
def test_two_workers_on_one_machine_then_repro_runs_only_aggregate_and_report(
    origin: Path, reference: dict[str, bytes]
) -> None:
    repo = _clone(origin, "one_machine")
    out = _workers(repo, "run", "--workers", "2", "--no-finish").stdout
    done = re.findall(r"^\[(w\d)\] (\S+): computed", out, re.M)
    assert sorted(cell for _, cell in done) == sorted(CELLS)  # each cell once
    assert {w for w, _ in done} == {"w0", "w1"}  # both workers took cells
    assert Counter(_worker_ran(repo)) == Counter(CELLS)
    assert not (repo / W.WORKDIR / "w0").exists()  # copies removed after success

    def status() -> dict[str, str]:
        doc = json.loads(_workers(repo, "status", "--json").stdout)
        return {c: v["state"] for c, v in doc["cells"].items()}

    assert status() == dict.fromkeys(CELLS, "cached")
    # a cell some DVC process is writing (its rwlock) in a worker copy shows as running
    fake = repo / W.WORKDIR / "w7"
    (fake / ".dvc/tmp").mkdir(parents=True)
    out_path = fake / "results/attack/digits_std/ce/b3.parquet"
    lock = {"write": {str(out_path): {"pid": os.getpid(), "cmd": "dvc repro"}}, "read": {}}
    (fake / ".dvc/tmp/rwlock").write_text(json.dumps(lock))
    assert status()["attack@digits_std-ce-3"] == "running"
    shutil.rmtree(fake)

    proc = _dvc(repo, "repro")
    assert set(_ran(proc.stdout)) == {"aggregate", "report"}
    assert _cached(proc.stdout) == CELLS
    assert status() == dict.fromkeys(CELLS, "done")
    assert _results(repo) == reference
