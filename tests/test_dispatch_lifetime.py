"""Workers that retire at their lifetime mid-cell (what SLURM jobs do before their walltime) and a
suite given by name: real processes, real DVC, the tiny grid of tests/test_dispatch.py.

``tmifpe prefetch --suite tiny`` runs the data and model stages here (what needs the internet for
the real suites: torchvision datasets, RobustBench checkpoints); ``tmifpe run --suite tiny
--lifetime 90s`` then dispatches to two local workers that each retire gracefully after 68-113 s
and are replaced by ``adapt`` (the local analogue of ``adapt`` submitting a new SLURM job). The
run must complete with per-example files byte-identical to a sequential ``dvc repro``; the workers
must restore data and model from the cache (never download), and at least one cell attempt must
have been cut by a retirement and finished by a later attempt (an attack cell cut after saving
units resumes from them: ``(resumed)`` in its log; printed, as when the cut falls is up to the
machine's load).
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from suite_support import complete
from test_dispatch import (
    DISPATCH,
    GRID,
    ROOT,
    TASKS,
    _counts,
    _dvc,
    _make_repo,
    _per_example_files,
    _run,
    sequential,  # noqa: F401  (module fixture)
)

from tmifpe.dispatch.graph import FINAL_STAGES
from tmifpe.pipeline.runlog import read_runs


def _hydra_repo(path: Path) -> Path:
    """The tiny repository with the project's conf/ + Hydra plugin and the grid as a suite."""
    repo = _make_repo(path)
    shutil.copytree(ROOT / "conf", repo / "conf")
    shutil.copytree(ROOT / "hydra_plugins", repo / "hydra_plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "conf/suite/tiny.yaml").write_text(yaml.safe_dump(complete(GRID), sort_keys=False))
    _dvc(repo, "config", "hydra.enabled", "true")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "suites as Hydra config")
    return repo


@pytest.mark.slow
@pytest.mark.xdist_group("dispatch")
def test_workers_retired_mid_cell_by_lifetime_and_a_named_suite_match_sequential(
    tmp_path: Path, sequential: dict[str, bytes],  # noqa: F811
) -> None:
    repo = _hydra_repo(tmp_path / "repo")
    work = repo / ".tmifpe-work"
    pre = _run(repo, *DISPATCH, "prefetch", "--suite", "tiny")
    assert "params.yaml composed with suite=tiny" in pre.stdout
    runs = read_runs(work / "runs.jsonl")
    assert not [r for r in runs if r.get("worker")]  # computed here, not by workers
    prefetched = Counter(r["stage"] for r in runs if r["event"] == "done")
    assert prefetched == Counter(["data@digits", "model@digits_std"])
    proc = _run(repo, *DISPATCH, "run", "--suite", "tiny", "--workers", "2",
                "--lifetime", "90s", "--dashboard", ":0")
    assert "8 tasks" in proc.stdout, proc.stdout
    runs = read_runs(work / "runs.jsonl")
    worker_runs = [r for r in runs if r.get("worker")]
    # data and model: restored from the cache on the workers, never computed there
    assert not [r for r in worker_runs if r["stage"] in ("data@digits", "model@digits_std")]
    # every cell finished on a worker (a stage cut after its computation but before DVC recorded
    # it may run again: same bytes, see below)
    done = {r["stage"] for r in worker_runs if r["event"] == "done"}
    assert done == TASKS - {"data@digits", "model@digits_std"}
    # some attempt was cut by a retirement (started, never done) and its stage done later
    finished = {r["attempt"] for r in worker_runs if r["event"] == "done"}
    cut = [r for r in worker_runs if r["event"] == "start" and r["attempt"] not in finished]
    assert cut, f"no worker retired mid-stage: {proc.stdout}"
    assert {r["stage"] for r in cut} <= set(done)
    for r in cut:
        log = (work / "logs" / f"{r['stage']}.log").read_text()
        resumed = log.split(f"attempt {r['attempt']}")[1].count("(resumed)")
        print(f"cut: {r['stage']} attempt {r['attempt']} on {r['worker']}; later attempts "
              f"resumed {resumed} unit(s)")
    assert _counts(runs, "done", final=True) == Counter(FINAL_STAGES)
    assert _per_example_files(repo) == sequential
    assert not (work / "workspaces").exists()  # cleaned on success, retired workers' included
    assert not (work / "run.lock").exists()
