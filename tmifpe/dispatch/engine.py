"""Submit the grid to Dask, report each task as it ends, then finish with ``dvc repro`` here.

Each task is a ``client.submit`` of :func:`tmifpe.dispatch.task.run_task` whose arguments
include the futures of its upstream tasks, so Dask starts it only when they are done, on
whichever worker is free (dynamic load balancing). A task that raises is retried (``retries``);
a task whose worker dies is rescheduled by the scheduler on another worker (up to Dask's
``distributed.scheduler.allowed-failures`` deaths). The final ``dvc repro`` in the user's workspace
restores every stage from the run-cache and runs only ``aggregate`` and ``report``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmifpe.dispatch.graph import FINAL_STAGES, Task
from tmifpe.dispatch.task import (
    WORK_DIR_ENV,
    RunSpec,
    remove_workspace,
    remove_workspaces,
    run_task,
)
from tmifpe.errors import Failure, UserError
from tmifpe.pipeline.runlog import ATTEMPT_ENV, RUN_LOG_ENV, computed, read_runs

PRIORITY = {"autoattack": 1000, "diagnostics": 500, "ablations": 500}  # long stages first


class DispatchError(Failure):
    """A failure of the run (stages failed, no worker came, a command failed): one line, exit 1.
    Bad input raises :class:`tmifpe.errors.UserError` instead (exit 2)."""


@dataclass
class Outcome:
    results: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    final_computed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None,
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, text=True,
                          capture_output=capture)


def snapshot(repo: Path, *, clean: bool = False) -> str:
    """The commit the workers check out: HEAD, or, when the working tree differs from it, a
    snapshot commit of the working tree (tracked edits and new files not ignored by git), built
    with a temporary index so that neither the working tree, the index nor any ref changes.
    ``clean``: the workers clone from another URL, which has pushed commits only: edits are an
    error."""
    def git(*args: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(["git", *args], cwd=repo, text=True, capture_output=True, env=env)
        if proc.returncode != 0:
            raise DispatchError(f"{repo}: `git {' '.join(args)}` failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    head = git("rev-parse", "HEAD")
    index = Path(git("rev-parse", "--absolute-git-dir")) / f"tmifpe-snapshot-{os.getpid()}.index"
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    try:
        git("read-tree", head, env=env)
        git("add", "-A", env=env)
        tree = git("write-tree", env=env)
    finally:
        index.unlink(missing_ok=True)
    if tree == git("rev-parse", f"{head}^{{tree}}"):
        return head
    if clean:
        raise UserError("uncommitted changes: with --repo-url the workers clone pushed "
                            "commits only (commit and push first; `git status` shows them)")
    who = {f"GIT_{r}_{k}": v for r in ("AUTHOR", "COMMITTER")
           for k, v in (("NAME", "tmifpe dispatch"), ("EMAIL", "tmifpe@localhost"))}
    return git("commit-tree", tree, "-p", head, "-m", "tmifpe dispatch: working tree snapshot",
               env={**os.environ, **who})


def shared_cache(repo: Path) -> str:
    """The workspace's DVC cache directory (``dvc cache dir``), shared by every worker."""
    proc = dvc(repo, "cache", "dir")
    if proc.returncode != 0:
        raise DispatchError(f"{repo}: `dvc cache dir` failed: {proc.stderr.strip()}")
    return str(Path(repo, proc.stdout.strip()).resolve())


def remote_url(repo: Path, name: str) -> str:
    """URL of the DVC remote ``name``, which must be the default one: ``dvc repro --pull`` (the
    final step here, and every task) pulls from the default remote and has no option to name one."""
    proc = dvc(repo, "config", f"remote.{name}.url")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise UserError(f"DVC remote {name!r} is not configured here "
                            "(dvc remote add NAME URL; `dvc remote list` shows the known ones)")
    default = dvc(repo, "remote", "default").stdout.strip()
    if default != name:
        raise UserError(f"DVC remote {name!r} is not the default remote "
                            f"({default or 'none'}): `dvc repro --pull` uses the default; "
                            f"run `dvc remote default {name}`")
    url = proc.stdout.strip()
    if "://" not in url and not Path(url).is_absolute():  # relative to .dvc/, where DVC keeps it
        url = str((repo / ".dvc" / url).resolve())
    return url


def submit(client: Any, tasks: list[Task], spec: RunSpec, *, gpu: bool,
           retries: int) -> dict[str, Any]:
    """One future per task; upstream futures are arguments, so Dask orders them."""
    run_id = uuid.uuid4().hex[:8]
    futures: dict[str, Any] = {}
    for t in tasks:
        priority = PRIORITY.get(t.kind, 0)
        futures[t.stage] = client.submit(
            run_task, spec, t.stage, t.chain, *(futures[u] for u in t.upstream),
            key=f"{t.stage}#{run_id}", resources={"GPU": 1} if gpu and t.gpu else None,
            retries=retries, pure=False, priority=priority)
    return futures


def collect(client: Any, futures: dict[str, Any], echo: Callable[[str], None], *,
            no_worker_timeout: float = 1800.0, poll: float = 2.0) -> Outcome:
    """Wait for every task; one line per finished (or failed) task.

    Never waits forever: when the cluster has had no worker for ``no_worker_timeout`` seconds
    while tasks remain (SLURM jobs pending or refused, workers unable to reach the scheduler),
    raises :class:`DispatchError`."""
    from distributed import wait

    out = Outcome()
    stage_of = {f.key: s for s, f in futures.items()}
    pending = set(futures.values())
    done = 0
    idle_since: float | None = None
    while pending:
        try:
            finished, _ = wait(list(pending), timeout=poll, return_when="FIRST_COMPLETED")
        except TimeoutError:
            finished = set()
        for fut in sorted(finished, key=lambda f: stage_of[f.key]):
            pending.discard(fut)
            done += 1
            _report(fut, stage_of[fut.key], done, len(futures), out, echo)
        if not pending:
            break
        if _n_workers(client) > 0:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > no_worker_timeout:
            raise DispatchError(
                f"no Dask worker for {no_worker_timeout / 60:g} min with {len(pending)} task(s) "
                "left: the workers never started or cannot reach the scheduler (SLURM: `squeue "
                "--me` shows pending jobs; check --interface); finished stages are kept, run "
                "again to resume")
    return out


def _n_workers(client: Any) -> int:
    try:
        return len(client.scheduler_info(n_workers=-1)["workers"])
    except TypeError:  # older distributed: no n_workers argument
        return len(client.scheduler_info()["workers"])


def _report(fut: Any, stage: str, done: int, total: int, out: Outcome,
            echo: Callable[[str], None]) -> None:
    try:
        r = fut.result()
    except Exception as err:  # the task's own error, or KilledWorker after repeated deaths
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        out.failed[stage] = msg
        echo(f"[{done}/{total}] {stage}: FAILED: {msg}")
        return
    out.results.append(r)
    how = "computed" if r["computed"] else "restored from the run-cache"
    echo(f"[{done}/{total}] {stage}: {how} on {r['worker']} ({r['seconds']:.1f} s)")
    if r["recomputed_upstream"]:
        echo(f"  warning: {stage} recomputed upstream {r['recomputed_upstream']} instead of "
             "restoring them (were the workspaces at different commits?)")


def repro_here(repo: Path, spec: RunSpec, targets: list[str], echo: Callable[[str], None], *,
               tag: str) -> list[str]:
    """``dvc repro [targets]`` in the user's workspace, logged in the run log under an attempt
    ``<tag>-<id>``; returns the stages it computed (not restored from the run-cache)."""
    attempt = f"{tag}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env.update({RUN_LOG_ENV: str(spec.run_log), ATTEMPT_ENV: attempt,
                WORK_DIR_ENV: spec.work_dir, "PYTHONHASHSEED": "0"})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(spec.threads)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    args = ["repro", "--pull"] if spec.remote else ["repro"]
    shown = " ".join(args) + (f" <{len(targets)} stages>" if len(targets) > 3 else
                              "".join(f" {t}" for t in targets))
    echo(f"dvc {shown} in {repo}")
    Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
    proc = dvc(repo, *args, *targets, env=env, capture=False)
    if proc.returncode != 0:
        raise DispatchError(f"`dvc {shown}` in {repo} exited with {proc.returncode}")
    return computed(read_runs(spec.run_log), attempt)


def finish(repo: Path, spec: RunSpec, echo: Callable[[str], None]) -> list[str]:
    """``dvc repro`` in the user's workspace; returns the stages it computed (not restored)."""
    echo(f"restoring the grid here and running {', '.join(FINAL_STAGES)}")
    ran = repro_here(repo, spec, [], echo, tag="final")
    extra = [s for s in ran if s not in FINAL_STAGES]
    if extra:
        echo(f"warning: the final dvc repro computed {extra}: not restored from the run-cache")
    return ran


def run_grid(client: Any, tasks: list[Task], spec: RunSpec, repo: Path, *, gpu: bool,
             retries: int, finish_here: bool, keep_workspaces: bool,
             echo: Callable[[str], None], no_worker_timeout: float = 1800.0) -> Outcome:
    """A closing worker ends its running stages (:class:`tmifpe.dispatch.reaper.StageReaper`).
    Failed tasks leave the workspaces (and the cells' checkpoints) for a rerun to reuse;
    success removes them: the workers' own (``client.run``) and, on a shared filesystem, every
    workspace of this run's commit (workers retired during the run included)."""
    from tmifpe.dispatch.reaper import StageReaper

    t0 = time.monotonic()
    client.register_plugin(StageReaper())  # workers joining later (adapt, SLURM) get it too
    out = collect(client, submit(client, tasks, spec, gpu=gpu, retries=retries), echo,
                  no_worker_timeout=no_worker_timeout)
    if out.failed:
        out.seconds = time.monotonic() - t0
        return out
    if not keep_workspaces:
        client.run(remove_workspace, spec)
        remove_workspaces(spec)
    if finish_here:
        out.final_computed = finish(repo, spec, echo)
    out.seconds = time.monotonic() - t0
    return out
