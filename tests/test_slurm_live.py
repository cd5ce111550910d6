"""``tmifpe run --slurm`` on a live SLURM cluster: dask-jobqueue's ``SLURMCluster`` submits real
batch jobs with ``sbatch``, their workers compute the grid, the run completes.

Runs only where a SLURM controller answers (``scontrol ping``) and a node is idle, e.g. a
single-node Debian ``slurm-wlm`` with ``munged``, ``slurmctld`` and ``slurmd`` started (see
docs/scaling.md, Tested); skipped otherwise, with the reason. The grid is the 7-task one of
tests/test_dispatch_lifetime.py; its data and model stages are prefetched here (as on a cluster
whose compute nodes are offline), the 5 others run in SLURM jobs (CPU jobs, ``--gpus-per-job 0``).
A ``jobqueue.yaml`` in a temporary ``DASK_CONFIG`` sets the job name, a job comment
(``job-extra-directives``), a prologue line and the log directory, which the real jobs must show:
site settings reach ``sbatch``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_dispatch import _counts, _env, _run
from test_dispatch_lifetime import PREFETCHED, TASKS, _hydra_repo

from tmifpe.dispatch.graph import FINAL_STAGES
from tmifpe.pipeline.runlog import read_runs

TMIFPE = (sys.executable, "-c", "from tmifpe.cli import app; app()")  # the `tmifpe` command


def _no_slurm() -> str | None:
    """Why no live SLURM run is possible here, or None."""
    for cmd in ("sbatch", "squeue", "sinfo", "scontrol", "scancel"):
        if shutil.which(cmd) is None:
            return f"`{cmd}` is not on PATH (no SLURM client installed)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`scontrol ping` did not answer within 30 s"
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        return f"no SLURM controller is up (`scontrol ping`: {(ping.stdout + ping.stderr).strip()})"
    nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if not {s.strip("*~#") for s in nodes.stdout.split()} & {"idle", "mix"}:
        return f"no idle SLURM node (`sinfo` states: {nodes.stdout.split() or 'none'})"
    return None


def _squeue(name: str) -> list[str]:
    """``jobid state comment`` of the jobs named ``name`` still known to the controller."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T %k"], capture_output=True,
                         text=True, timeout=30).stdout
    return [ln.strip() for ln in out.splitlines() if ln.strip()]


@pytest.mark.slow
@pytest.mark.xdist_group("dispatch")
def test_run_on_a_live_slurm_cluster(tmp_path: Path) -> None:
    reason = _no_slurm()
    if reason:
        pytest.skip(reason)
    repo = _hydra_repo(tmp_path / "repo")
    work = repo / ".tmifpe-work"
    _run(repo, *TMIFPE, "prefetch", "--suite", "tiny")

    name = f"tmifpe-live-{uuid.uuid4().hex[:6]}"
    comment = f"tmifpe-test-{uuid.uuid4().hex[:6]}"
    logs = tmp_path / "slurm-logs"
    config = tmp_path / "dask-config"
    config.mkdir()
    (config / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": {
        "name": name, "log-directory": str(logs), "job-extra-directives": [f"--comment={comment}"],
        "job-script-prologue": ["echo tmifpe-prologue-ran"]}}}))
    env = {**_env(), "DASK_CONFIG": str(config)}
    proc = subprocess.Popen(
        [*TMIFPE, "run", "--suite", "tiny", "--slurm", "--jobs", "2", "--gpus-per-job", "0",
         "--walltime", "00:30:00", "--memory", "2GB", "--no-worker-timeout", "3",
         "--dashboard", ":0"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    seen: set[str] = set()  # jobs of this run seen by the controller while it ran
    left: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(_squeue(name))
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        # the run lets its jobs go when it ends (adapt scales down, close cancels the rest)
        deadline = time.monotonic() + 60
        while (left := [j for j in _squeue(name) if "COMPLETING" not in j]) and \
                time.monotonic() < deadline:
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        for job in _squeue(name):  # never leave jobs behind, even on failure
            subprocess.run(["scancel", job.split()[0]], capture_output=True, timeout=30)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert f"{len(TASKS)} tasks" in out and "0 failed" in out, out
    assert "final dvc repro computed: aggregate, report" in out, out

    # the stages ran in workers of SLURM jobs carrying the jobqueue.yaml settings
    assert seen, f"no job named {name} was ever seen by squeue:\n{out}"
    assert all(job.split()[2:] == [comment] for job in seen), seen
    runs = read_runs(work / "runs.jsonl")
    worker_runs = [r for r in runs if r.get("worker")]
    assert _counts(worker_runs, "done") == Counter(TASKS - PREFETCHED)
    assert all(r["worker"].startswith("SLURMCluster-") for r in worker_runs), worker_runs
    assert _counts(runs, "done", final=True) == Counter(FINAL_STAGES)
    job_ids = {job.split()[0] for job in seen}
    outs = {p.name for p in logs.glob("*.out")}
    assert {f"{name}-{j}.out" for j in job_ids} <= outs, (job_ids, sorted(outs))
    assert all("tmifpe-prologue-ran" in (logs / f"{name}-{j}.out").read_text() for j in job_ids)
    assert not left, f"jobs left after the run: {left}"
