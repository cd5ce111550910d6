"""Dispatch of the DVC grid through Dask (tmifpe/dispatch), with real processes: a local Dask
cluster of 2 worker processes, real `dvc`, real stages. No mock of Dask or DVC.

The grid is a documented subset: 1 trained digits model x 2 losses (ce, tmifpe) x 1 budget,
fp32 only, 40 points in batches of 5 (16 checkpointed units per attack cell), plus AutoAttack,
diagnostics and ablations: 7 tasks, then aggregate and report. Stage runs are counted from the
project's own run log (`TMIFPE_RUN_LOG`, one line per stage start/end, written by the stage
processes; a stage restored from DVC's run-cache runs no process and writes none).

SLURM: only the job script dask-jobqueue generates is checked (here and, against a user's
jobqueue.yaml, in tests/test_dispatch_ops.py). A real single-node SLURM (Debian's slurm-wlm:
slurmctld + slurmd + munge as root services) is not started in CI: it is a system service setup of
its own, not something a test can bring up quickly and reliably here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from support import repo as repo_support
from support.suites import complete, write_params

from tmifpe.dispatch.graph import FINAL_STAGES, KINDS, Kind, build_tasks, read_suite
from tmifpe.pipeline.config import parse_suite
from tmifpe.pipeline.runlog import read_runs

ROOT = Path(__file__).resolve().parents[1]

GRID = {
    "name": "tiny",
    "device": "cpu",
    "threads": 1,
    "datasets": {"digits": {"source": "digits", "n_examples": 40, "eps": 0.2,
                            "test_size": 0.2, "split_seed": 0}},
    "model_zoo": {"digits_std": {"source": "trained", "dataset": "digits", "epochs": 2,
                                 "lr": 0.003, "seed": 0}},
    "models": ["digits_std"],
    "losses": ["ce", "tmifpe"],
    "budgets": [10],
    "precisions": {"fp32": {"n_targets": 2}},
    "attack": {"batch_size": 5, "seed": 0},
    "autoattack": {"seed": 0, "batch_size": 40},
    "ablations": {"budgets": [3]},
}
TASKS = {"data@digits", "model@digits_std", "attack@digits_std-ce",
         "attack@digits_std-tmifpe", "autoattack@digits_std", "diagnostics@digits_std",
         "ablations@digits_std", "fast@digits_std"}
KILLED = "attack@digits_std-tmifpe"


def _run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return repo_support.run(repo, *args, check=check)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return repo_support.dvc(repo, *args)


_env = repo_support.env


DISPATCH = (sys.executable, "-m", "tmifpe.dispatch")


def _make_repo(path: Path) -> Path:
    repo_support.copy_project(path, ("tmifpe", "stages"), ("dvc.yaml", ".dvcignore"))
    (path / ".gitignore").write_text("__pycache__/\n/.tmifpe-work/\n")
    write_params(path / "params.yaml", GRID)
    repo_support.init_repo(path)
    repo_support.commit_all(path, "tiny grid")
    return path


def _per_example_files(repo: Path) -> dict[str, bytes]:
    files = sorted((repo / "results").rglob("*.parquet"))
    return {str(p.relative_to(repo)): p.read_bytes() for p in files
            if "aggregate" not in p.parts}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Per-example Parquet files of a plain single-process `dvc repro` of the grid."""
    repo = _make_repo(tmp_path_factory.mktemp("dispatch") / "sequential")
    _dvc(repo, "repro")
    files = _per_example_files(repo)
    assert len(files) >= 5
    return files


def _status(repo: Path) -> dict[str, str]:
    out = _run(repo, *DISPATCH, "status").stdout.splitlines()
    return dict(line.rsplit(None, 1) if not line.endswith("up to date")
                else (line.removesuffix("up to date").strip(), "up to date")
                for line in out[:-1])


def _counts(runs: list[dict], event: str, final: bool = False) -> Counter[str]:
    return Counter(r["stage"] for r in runs if r["event"] == event
                   and str(r["attempt"]).startswith("final-") == final)


# --- the task graph (fast) ---------------------------------------------------------------------

def test_tasks_are_the_dvc_stages_of_the_suite_in_dependency_order() -> None:
    tasks = build_tasks(read_suite(ROOT / "params.yaml"))
    listed = _dvc(ROOT, "stage", "list", "--name-only").stdout.split()
    assert {t.stage for t in tasks} | set(FINAL_STAGES) == set(listed)
    seen: set[str] = set()
    for t in tasks:
        assert set(t.upstream) <= seen and set(t.chain[:-1]) <= seen and t.chain[-1] == t.stage
        seen.add(t.stage)
    cell = next(t for t in tasks if t.stage == "attack@digits_std-cw")
    assert cell.upstream == ("model@digits_std",)
    assert cell.chain == ("data@digits", "model@digits_std", "attack@digits_std-cw")


def test_a_model_needs_only_its_own_datasets_stage() -> None:
    """Paper suite (three datasets): each model's chain holds the data stage of its dataset only."""
    from test_suites import composed

    suite = parse_suite(yaml.safe_load(composed("suite=paper"))["suite"])
    tasks = {t.stage: t for t in build_tasks(suite)}
    for model in suite.models:
        dataset = suite.dataset_of(model)[0]
        assert tasks[f"model@{model}"].upstream == (f"data@{dataset}",)
        assert [s for s in tasks[f"fast@{model}"].chain if s.startswith("data@")] == \
            [f"data@{dataset}"]


def test_a_new_kind_is_one_table_entry() -> None:
    suite = parse_suite(complete(GRID))
    kinds = {**KINDS, "probe": Kind(("model",), ("model",))}
    probe = [t for t in build_tasks(suite, kinds) if t.kind == "probe"]
    assert [(t.stage, t.upstream) for t in probe] == [("probe@digits_std",
                                                        ("model@digits_std",))]
    with pytest.raises(ValueError, match="cycle"):
        build_tasks(suite, {**KINDS, "x": Kind(("model",), ("y",))})


def test_slurm_job_script_for_a_gpu_partition() -> None:
    from tmifpe.dispatch.clusters import SlurmOptions, slurm_cluster

    cluster = slurm_cluster(SlurmOptions(max_jobs=16, partition="gpu", gpus_per_job=2,
                                         walltime="02:30:00", memory="24GB"),
                            threads=8, dashboard=":0")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:2", "#SBATCH -t 02:30:00",
                      "#SBATCH --cpus-per-task=16", "#SBATCH --mem=23G"):
        assert directive in lines, script
    assert "export OMP_NUM_THREADS=8" in lines
    command = lines[-1]
    assert command.startswith(f"{sys.executable} -m distributed.cli.dask_worker tcp://")
    for arg in ("--nthreads 1", "--nworkers 2", "--resources GPU=1", "--nanny"):
        assert arg in command, command


def test_worker_takes_its_gpu_from_its_process_index() -> None:
    from tmifpe.dispatch.task import pinned_gpu

    assert pinned_gpu("SLURMCluster-3-1", "4,5") == "5"
    assert pinned_gpu("SLURMCluster-3-0", "4,5") == "4"
    assert pinned_gpu("gpu0", "0") is None  # already pinned: one device visible
    assert pinned_gpu("cpu0", None) is None


# --- real runs (slow) --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.xdist_group("dispatch")
def test_two_workers_compute_each_stage_once_and_match_sequential(
    tmp_path: Path, sequential: dict[str, bytes],
) -> None:
    repo = _make_repo(tmp_path / "repo")
    before = _status(repo)
    assert set(before) == TASKS | set(FINAL_STAGES)
    assert set(before.values()) == {"changed"}
    proc = _run(repo, *DISPATCH, "run", "--workers", "2", "--dashboard", ":0",
                "--keep-workspaces")
    assert "Dask dashboard: http" in proc.stdout
    runs = read_runs(repo / ".tmifpe-work/runs.jsonl")
    # every task computed exactly once, by the workers, in two workspaces
    assert _counts(runs, "start") == Counter(TASKS)
    assert _counts(runs, "done") == Counter(TASKS)
    assert {r["worker"] for r in runs if r["stage"] in TASKS} == {"cpu0", "cpu1"}
    assert len(list((repo / ".tmifpe-work/workspaces").iterdir())) == 2
    # the final `dvc repro` here restored every task and computed only aggregate and report
    assert _counts(runs, "done", final=True) == Counter(FINAL_STAGES)
    assert _counts(runs, "start", final=True) == Counter(FINAL_STAGES)
    assert set(_status(repo).values()) == {"up to date"}
    assert _per_example_files(repo) == sequential
    (repo / "results/autoattack/digits_std.parquet").unlink()
    assert _status(repo)["autoattack@digits_std"] == "missing"


@pytest.mark.slow
@pytest.mark.xdist_group("dispatch")
def test_sigkill_of_a_worker_inside_a_cell_resumes_it_elsewhere(
    tmp_path: Path, sequential: dict[str, bytes],
) -> None:
    repo = _make_repo(tmp_path / "repo")
    work = repo / ".tmifpe-work"
    proc = subprocess.Popen([*DISPATCH, "run", "--workers", "2", "--dashboard", ":0"], cwd=repo,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim, units = None, []
    deadline = time.monotonic() + 300
    try:
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            units = list((work / "checkpoints").glob("digits_std-tmifpe-10-*/*.pt"))
            if len(units) >= 2:
                started = [r for r in read_runs(work / "runs.jsonl")
                           if r["stage"] == KILLED and r["event"] == "start"]
                victim = started[0]
                os.kill(int(victim["worker_pid"]), signal.SIGKILL)
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "the cell finished before a worker could be killed"
    assert proc.returncode == 0, out
    runs = read_runs(work / "runs.jsonl")
    assert not any(r["stage"] == KILLED and r["event"] == "done"
                   and r["attempt"] == victim["attempt"] for r in runs), "killed too late"
    # the cell ran twice (killed, then resumed by a live worker), every other stage once
    assert _counts(runs, "start") == Counter(TASKS) + Counter([KILLED])
    assert _counts(runs, "done") == Counter(TASKS)
    (retry,) = [r for r in runs if r["stage"] == KILLED and r["event"] == "done"]
    assert retry["worker_pid"] != victim["worker_pid"]
    # the killed worker's stage process did not survive it (the guard killed its group)
    with pytest.raises(ProcessLookupError):
        os.kill(int(victim["pid"]), 0)
    log = (work / "logs" / f"{KILLED}.log").read_text()
    second = log.split(f"attempt {retry['attempt']}")[1]
    assert second.count("(resumed)") >= len(units)
    assert _counts(runs, "done", final=True) == Counter(FINAL_STAGES)
    assert _per_example_files(repo) == sequential


@pytest.mark.slow
@pytest.mark.xdist_group("dispatch")
def test_without_shared_cache_the_workers_go_through_a_dvc_remote(
    tmp_path: Path, sequential: dict[str, bytes],
) -> None:
    """`--remote`: each workspace has its own DVC cache; stages reach each other (and the final
    `dvc repro --pull` here) only through the remote's outputs and run-cache entries."""
    repo = _make_repo(tmp_path / "repo")
    store = tmp_path / "store"
    _dvc(repo, "remote", "add", "store", str(store))
    proc = _run(repo, *DISPATCH, "run", "--remote", "store", check=False)
    assert proc.returncode == 2 and "dvc remote default store" in proc.stderr
    _dvc(repo, "remote", "default", "store")
    _run(repo, "git", "commit", "-qam", "remote")
    origin = tmp_path / "origin.git"  # what the workers clone, as from a git server
    _run(tmp_path, "git", "clone", "-q", "--bare", str(repo), str(origin))
    _run(repo, *DISPATCH, "run", "--workers", "2", "--dashboard", ":0", "--remote", "store",
         "--repo-url", origin.as_uri(), "--keep-workspaces")
    runs = read_runs(repo / ".tmifpe-work/runs.jsonl")
    assert _counts(runs, "done") == Counter(TASKS)
    assert _counts(runs, "done", final=True) == Counter(FINAL_STAGES)
    caches = [ws / ".dvc/cache" for ws in (repo / ".tmifpe-work/workspaces").iterdir()]
    assert len(caches) == 2 and all(c.is_dir() for c in caches)  # not the shared one
    assert _per_example_files(repo) == sequential
    # uncommitted edits cannot reach workers that clone from a URL: refused before any work
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    proc = _run(repo, *DISPATCH, "run", "--remote", "store", "--repo-url", origin.as_uri(),
                check=False)
    assert proc.returncode == 2 and "uncommitted changes" in proc.stderr
