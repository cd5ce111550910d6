"""A worker retired gracefully mid-cell (what a worker ``--lifetime`` below a SLURM walltime does)
and a suite given by name: real processes, real DVC, the tiny grid of tests/test_dispatch.py.

``tmifpe prefetch --suite tiny`` runs the data and model stages here (what needs the internet for
the real suites: torchvision datasets, RobustBench checkpoints). ``tmifpe run --suite tiny
--workers 2 --lifetime '10 minutes'`` then dispatches to two local workers kept by ``adapt``
(the local analogue of SLURM jobs replaced by ``adapt``).

Making the retirement land inside the cell, deterministically: once the T-MIFPE cell has saved a
unit, the test stops its stage process (SIGSTOP: a cell that cannot end before the retirement,
whatever the machine's load; no stage code is changed) and retires the worker running the cell's
task, found with ``Client.processing`` (the scheduler's own task -> worker map), through
``Client.retire_workers`` (the call a worker reaching its ``--lifetime`` makes for itself,
``Worker.close_gracefully``), then checks its return value. The stopped stage must then be ended
by the closing worker (``tmifpe.dispatch.reaper``), the task must rerun in another worker process
and resume from exactly the units saved before the stop, and the run must complete with
per-example files byte-identical to a sequential ``dvc repro`` of the same grid computed here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import repo as repo_support
from support.suites import complete, write_params
from test_dispatch import (
    DISPATCH,
    GRID,
    KILLED,
    ROOT,
    _counts,
    _dvc,
    _env,
    _per_example_files,
    _run,
)

from tmifpe.dispatch.graph import FINAL_STAGES
from tmifpe.pipeline.runlog import read_runs

# the grid of tests/test_dispatch.py without the CE cell and with 20 points (the sequential
# reference and the dispatched run each compute it: time): 7 tasks
LIFE = {**GRID, "losses": ["tmifpe"],
        "datasets": {"digits": {**GRID["datasets"]["digits"], "n_examples": 20}}}
TASKS = {"data@digits", "model@digits_std", KILLED, "autoattack@digits_std",
         "diagnostics@digits_std", "ablations@digits_std", "fast@digits_std"}
UNITS = 8  # 20 points in batches of 5, untargeted and targeted: the T-MIFPE cell's units
PREFETCHED = {"data@digits", "model@digits_std"}


def _make_repo(path: Path) -> Path:
    """A git + DVC copy of the project with the grid ``LIFE`` in params.yaml."""
    repo_support.copy_project(path, ("tmifpe", "stages"), ("dvc.yaml", ".dvcignore"))
    (path / ".gitignore").write_text("__pycache__/\n/.tmifpe-work/\n")
    write_params(path / "params.yaml", LIFE)
    repo_support.init_repo(path)
    repo_support.commit_all(path, "tiny grid")
    return path


def _hydra_repo(path: Path) -> Path:
    """The repository with the project's conf/ + Hydra plugin and the grid as suite ``tiny``."""
    repo = _make_repo(path)
    shutil.copytree(ROOT / "conf", repo / "conf")
    shutil.copytree(ROOT / "hydra_plugins", repo / "hydra_plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "conf/suite/tiny.yaml").write_text(yaml.safe_dump(complete(LIFE), sort_keys=False))
    _dvc(repo, "config", "hydra.enabled", "true")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "suites as Hydra config")
    return repo


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (this container's init may not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_for(what: str, ok: Any, timeout: float, poll: float = 0.05) -> float:
    """Poll ``ok()`` until true; returns the seconds it took; fails naming ``what``."""
    t0 = time.monotonic()
    while not ok():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - t0


def _units(work: Path) -> list[Path]:
    return sorted((work / "checkpoints").glob("digits_std-tmifpe-10-*/*.pt"))


def _worker_of(client: Any, stage: str) -> list[str]:
    """Addresses of the workers the scheduler has ``stage``'s task processing on."""
    return [addr for addr, keys in client.processing().items()
            if any(str(k).startswith(f"{stage}#") for k in keys)]


@pytest.mark.slow
@pytest.mark.xdist_group("dispatch")
def test_worker_retired_mid_cell_resumes_elsewhere_and_a_named_suite_matches_sequential(
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    # the reference: a plain sequential `dvc repro` of the same grid's stages, in its own
    # repository and DVC cache, computed meanwhile (aggregate and report are not compared)
    seq = _make_repo(tmp_path / "sequential")
    seq_log = tmp_path / "sequential.log"
    with seq_log.open("w") as log:
        reference = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *sorted(TASKS)],
                                     cwd=seq, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    repo = _hydra_repo(tmp_path / "repo")
    work = repo / ".tmifpe-work"
    pre = _run(repo, *DISPATCH, "prefetch", "--suite", "tiny")
    assert "params.yaml composed with suite=tiny" in pre.stdout
    runs = read_runs(work / "runs.jsonl")
    assert not [r for r in runs if r.get("worker")]  # computed here, not by workers
    assert Counter(r["stage"] for r in runs if r["event"] == "done") == Counter(PREFETCHED)

    t_pre = time.monotonic() - t0
    proc = subprocess.Popen([*DISPATCH, "run", "--suite", "tiny", "--workers", "2",
                             "--lifetime", "10 minutes", "--dashboard", ":0"], cwd=repo, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    victim: dict[str, Any] | None = None
    frozen: list[Path] = []
    retired: dict[str, Any] = {}
    address, reaped_s = "", -1.0
    try:
        from distributed import Client

        _wait_for("the scheduler's address", lambda: any(
            re.search(r"scheduler (tcp://\S+)\)", ln) for ln in list(lines))
            or proc.poll() is not None, 600)
        found = [m[1] for ln in list(lines) if (m := re.search(r"scheduler (tcp://\S+)\)", ln))]
        assert found, "".join(lines)
        with Client(found[0], timeout="60s") as client:
            _wait_for("the T-MIFPE cell's first saved unit",
                      lambda: _units(work) or proc.poll() is not None, 600, poll=0.01)
            assert proc.poll() is None, f"the run ended before the cell saved a unit:\n{lines}"
            (victim,) = [r for r in read_runs(work / "runs.jsonl")
                         if r["stage"] == KILLED and r["event"] == "start"]
            os.kill(int(victim["pid"]), signal.SIGSTOP)  # the cell cannot end before retirement
            frozen = _units(work)
            assert 1 <= len(frozen) < UNITS
            (address,) = _worker_of(client, KILLED)
            (pid,) = client.run(os.getpid, workers=[address]).values()
            assert pid == int(victim["worker_pid"])  # the scheduler's worker is the run log's
            retired = client.retire_workers(workers=[address])
            assert address in retired, f"the scheduler did not retire {address}: {retired}"
            assert address not in client.scheduler_info(n_workers=-1)["workers"]
            # the closing worker ends the stopped stage (SIGTERM to its guard, which SIGKILLs
            # the stage's group); without the reaper only the worker's exit would, after the
            # 30 s Worker.close waits for its threads
            reaped_s = _wait_for("the retired attempt's stage process to end",
                                 lambda: not _alive(int(victim["pid"])), 20)
        proc.wait(timeout=600)
        t_run = time.monotonic() - t0 - t_pre
        reference.wait(timeout=600)
        t_seq = time.monotonic() - t0
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
        if victim is not None and _alive(int(victim["pid"])):
            os.kill(int(victim["pid"]), signal.SIGKILL)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert reference.returncode == 0, seq_log.read_text()
    sequential = _per_example_files(seq)
    assert len(sequential) >= 5  # attack, autoattack, diagnostics, ablations, fast
    assert f"{len(TASKS)} tasks" in out
    print(f"froze the cell at {len(frozen)}/{UNITS} units; retired {address}; its stage ended "
          f"{reaped_s:.1f} s after the retirement; prefetch {t_pre:.1f} s, run {t_run:.1f} s, "
          f"sequential reference done at {t_seq:.1f} s")

    runs = read_runs(work / "runs.jsonl")
    worker_runs = [r for r in runs if r.get("worker")]
    # data and model: restored from the cache on the workers, never computed there
    assert not [r for r in worker_runs if r["stage"] in PREFETCHED]
    # the retirement is not a failure: every task computed once, the cell's attempt cut by the
    # retirement then rerun once, in another worker process, which finished it
    assert _counts(worker_runs, "start") == Counter(TASKS - PREFETCHED) + Counter([KILLED])
    assert _counts(worker_runs, "done") == Counter(TASKS - PREFETCHED)
    (again,) = [r for r in worker_runs if r["stage"] == KILLED and r["event"] == "start"
                and r["attempt"] != victim["attempt"]]
    assert again["worker_pid"] != victim["worker_pid"]
    assert [r["attempt"] for r in worker_runs if r["stage"] == KILLED
            and r["event"] == "done"] == [again["attempt"]]
    # ... resuming from the units saved before the stop: exactly those, none recomputed
    log = (work / "logs" / f"{KILLED}.log").read_text()
    first, second = log.split(f"attempt {victim['attempt']}")[1].split(
        f"attempt {again['attempt']}")
    # ended by its closing worker (tmifpe/dispatch/reaper.py), not only once the process exited
    assert "guard: SIGTERM received (the worker is closing)" in first, log
    assert len(re.findall(rf"\[\d+/{UNITS}\]", second)) == UNITS, log
    assert second.count("(resumed)") == len(frozen), log
    assert _counts(runs, "done", final=True) == Counter(FINAL_STAGES)
    assert _per_example_files(repo) == sequential
    assert not (work / "workspaces").exists()  # cleaned on success, the retired worker's too
    assert not (work / "run.lock").exists()
