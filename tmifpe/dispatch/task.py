"""What a Dask worker does for one task: one DVC stage, run by DVC's CLI in the worker's workspace.

The workspace is a git clone of the user's repository at the run's commit, one per worker, made
on the worker's first task. DVC in it uses the shared cache directory (``dvc cache dir``) or, on a
cluster without a shared filesystem, a DVC remote. The task runs
``dvc repro --single-item <upstream...> <stage>``: the upstream stages (finished by other workers
before this task was scheduled) are restored from DVC's run-cache into this workspace, not
computed, and then the stage itself runs, or is restored if an identical run is already cached.

Each stage runs under :mod:`tmifpe.dispatch.guard`, and a worker that closes (a retirement at its
``--lifetime`` included) ends its running stages at once (:func:`terminate_stages`, called by the
worker plugin :class:`tmifpe.dispatch.reaper.StageReaper`): the scheduler has already given their
tasks to other workers, and a stage left running would compute the same cell a second time beside
the rescheduled attempt.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmifpe.pipeline.runlog import (
    ATTEMPT_ENV,
    RUN_LOG_ENV,
    WORKER_ENV,
    WORKER_PID_ENV,
    computed,
    read_runs,
)

CACHE_TYPE = "reflink,hardlink,copy"  # DVC `cache.type` of the workspaces
WORK_DIR_ENV = "TMIFPE_WORK_DIR"  # checkpoints and AutoAttack state (tmifpe/pipeline/cell.py)


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to know about the run; sent with every task."""

    repo: str  # git URL or path the workspaces are cloned from
    commit: str  # the commit (or `git stash create` snapshot) every workspace checks out
    work_dir: str  # checkpoints, logs, run log: a directory every worker sees
    threads: int  # CPU threads per stage (the suite's `threads`)
    cache_dir: str | None = None  # shared DVC cache directory (None: the workspace's own)
    remote: str | None = None  # DVC remote name: pull before, push after each stage
    remote_url: str | None = None
    workspaces: str | None = None  # where workspaces go (None: <work_dir>/workspaces)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the stages

    @property
    def run_log(self) -> Path:
        return Path(self.work_dir) / "runs.jsonl"


_RUNNING: set[subprocess.Popen[bytes]] = set()  # guards of the stages this worker process runs
_RUNNING_LOCK = threading.Lock()


def terminate_stages() -> int:
    """SIGTERM the guard of every stage this worker process still runs (each guard then kills its
    stage's process group); returns how many. Called when the worker closes
    (:class:`tmifpe.dispatch.reaper.StageReaper`)."""
    with _RUNNING_LOCK:
        running = [g for g in _RUNNING if g.poll() is None]
    for guard in running:
        guard.terminate()
    return len(running)


class StageFailed(RuntimeError):
    """``dvc repro`` of a task exited non-zero; the message names the stage and its log."""


def run_task(spec: RunSpec, stage: str, chain: tuple[str, ...], *upstream: Any) -> dict[str, Any]:
    """Run ``stage`` (the last of ``chain``) in this worker's workspace; returns what happened.

    ``upstream`` are the results of the upstream tasks: Dask passes them only once those tasks are
    done, which is what orders the grid.
    """
    from distributed import get_worker

    worker = get_worker()
    name = str(worker.name)
    ws = ensure_workspace(spec, name)
    attempt = uuid.uuid4().hex[:12]
    env = stage_env(spec, name, attempt)
    logs = Path(spec.work_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage}.log"
    t0 = time.monotonic()
    repro = ["dvc", "repro", "--single-item", *chain]
    if spec.remote:
        repro[2:2] = ["--pull"]
    steps = [repro]
    if spec.remote:
        steps.append(["dvc", "push", "--run-cache", "-r", spec.remote, stage])
    with log.open("a") as out:
        out.write(f"=== {stage}: attempt {attempt} on worker {name} ({socket.gethostname()}, "
                  f"pid {os.getpid()}), workspace {ws}\n")
        out.flush()
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            guarded = [sys.executable, "-m", "tmifpe.dispatch.guard", str(os.getpid()), "--", *cmd]
            guard = subprocess.Popen(guarded, cwd=ws, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with _RUNNING_LOCK:
                _RUNNING.add(guard)
            try:
                rc = guard.wait()
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(guard)
            if rc != 0:
                raise StageFailed(f"{stage}: `{' '.join(cmd)}` exited with {rc} on worker {name}; "
                                  f"see {log}")
    ran = computed(read_runs(spec.run_log), attempt)
    return {"stage": stage, "computed": stage in ran,
            "recomputed_upstream": [s for s in ran if s != stage],
            "seconds": round(time.monotonic() - t0, 2), "worker": name,
            "host": socket.gethostname(), "attempt": attempt}


def stage_env(spec: RunSpec, worker: str, attempt: str) -> dict[str, str]:
    """Environment of the stage processes: fixed threads, shared work dir, the pinned GPU."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(spec.threads)
    # several stages per machine: idle OpenMP threads sleep instead of spinning against the other
    # stages' threads (speed only: results do not depend on it)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONHASHSEED"] = "0"
    env[WORK_DIR_ENV] = spec.work_dir
    env[RUN_LOG_ENV] = str(spec.run_log)
    env[ATTEMPT_ENV] = attempt
    env[WORKER_ENV] = worker
    env[WORKER_PID_ENV] = str(os.getpid())
    gpu = pinned_gpu(worker, env.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    env.update(spec.env)
    return env


def pinned_gpu(worker: str, visible: str | None) -> str | None:
    """The one GPU of this worker when its process sees several.

    A worker started for one GPU already sees only it (``CUDA_VISIBLE_DEVICES`` set by our local
    cluster, by the user, or by SLURM for a one-GPU job). A SLURM job with several GPUs runs one
    worker process per GPU, named ``<job name>-<i>`` by dask-jobqueue: process ``i`` takes the
    ``i``-th GPU of the job.
    """
    devices = [d for d in (visible or "").split(",") if d.strip()]
    if len(devices) <= 1:
        return None
    match = re.search(r"-(\d+)$", worker)
    return devices[int(match.group(1)) % len(devices)] if match else None


def workspace_path(spec: RunSpec, worker: str) -> Path:
    base = Path(spec.workspaces or Path(spec.work_dir) / "workspaces")
    return base / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', worker)}-{spec.commit[:12]}"


def remove_workspace(spec: RunSpec, dask_worker: Any = None) -> None:
    """Delete this worker's workspace of the run (``client.run`` passes ``dask_worker``)."""
    if dask_worker is not None:
        shutil.rmtree(workspace_path(spec, str(dask_worker.name)), ignore_errors=True)


def remove_workspaces(spec: RunSpec) -> list[Path]:
    """Delete every workspace of the run's commit that this machine sees (a shared filesystem:
    those of workers retired or lost during the run too), and half-made clones; returns them."""
    base = Path(spec.workspaces or Path(spec.work_dir) / "workspaces")
    if not base.is_dir():
        return []
    tag = spec.commit[:12]
    gone = [p for p in base.iterdir()
            if p.name.endswith(f"-{tag}") or (p.name.startswith(".") and f"-{tag}." in p.name)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    if not any(base.iterdir()):
        base.rmdir()
    return gone


def ensure_workspace(spec: RunSpec, worker: str) -> Path:
    """This worker's clone of the repository at ``spec.commit``, configured for the run."""
    ws = workspace_path(spec, worker)
    base = ws.parent
    if (ws / ".dvc").is_dir():  # left by a failed run or an earlier task: reused
        return ws
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{ws.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    shared = ["--shared"] if Path(spec.repo).is_dir() else []
    _git("clone", "--quiet", "--no-checkout", *shared, spec.repo, str(tmp))
    _git("-C", str(tmp), "checkout", "--quiet", "--detach", spec.commit)
    dvc = [sys.executable, "-m", "dvc"]
    # outputs linked from the cache, not copied: a workspace costs no second copy of the data
    # (DVC falls back along the list: copy only where the filesystem has neither link)
    subprocess.run([*dvc, "config", "--local", "cache.type", CACHE_TYPE], cwd=tmp, check=True,
                   capture_output=True)
    if spec.cache_dir:
        subprocess.run([*dvc, "cache", "dir", "--local", spec.cache_dir], cwd=tmp, check=True,
                       capture_output=True)
    if spec.remote and spec.remote_url:
        subprocess.run([*dvc, "remote", "add", "--local", "--default", "--force", spec.remote,
                        spec.remote_url], cwd=tmp, check=True, capture_output=True)
    tmp.rename(ws)
    return ws


def _git(*args: str) -> None:
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
