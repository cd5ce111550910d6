"""``run`` and ``status``: plain Typer-annotated functions (mounted into the ``tmifpe`` app).

    python -m tmifpe.dispatch run --workers 4                   # this machine, 4 CPU workers
    python -m tmifpe.dispatch run --gpus 4                      # this machine, one worker per GPU
    python -m tmifpe.dispatch run --scheduler tcp://host:8786   # workers started by hand
    python -m tmifpe.dispatch run --slurm --partition gpu --gpus-per-job 1 --jobs 16
    python -m tmifpe.dispatch run --scheduler tcp://host:8786 --remote store  # no shared disk
    python -m tmifpe.dispatch status
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tmifpe.dispatch.clusters import SlurmOptions, local_cluster, slurm_cluster
from tmifpe.dispatch.engine import (
    DispatchError,
    dvc,
    remote_url,
    run_grid,
    shared_cache,
    snapshot,
)
from tmifpe.dispatch.graph import build_tasks, read_suite
from tmifpe.dispatch.status import stage_states, summary
from tmifpe.dispatch.task import RunSpec
from tmifpe.pipeline.config import ParamsError

DEFAULT_WORK = ".tmifpe-work"


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(2)


def run(
    workers: Annotated[int, typer.Option(help="local CPU worker processes")] = 2,
    gpus: Annotated[int, typer.Option(help="local GPUs: one worker per GPU, pinned")] = 0,
    scheduler: Annotated[str | None, typer.Option(
        help="address of a running `dask scheduler` (tcp://host:8786)")] = None,
    gpu: Annotated[bool, typer.Option(
        help="with --scheduler: the workers have GPU=1 resources")] = False,
    slurm: Annotated[bool, typer.Option(help="start workers as SLURM jobs")] = False,
    partition: Annotated[str, typer.Option(help="SLURM partition")] = "gpu",
    gpus_per_job: Annotated[int, typer.Option(help="SLURM GPUs (= workers) per job")] = 1,
    jobs: Annotated[int, typer.Option(help="SLURM jobs")] = 1,
    walltime: Annotated[str, typer.Option(help="SLURM time limit per job")] = "04:00:00",
    memory: Annotated[str, typer.Option(help="SLURM memory per job")] = "16GB",
    account: Annotated[str | None, typer.Option(help="SLURM account")] = None,
    remote: Annotated[str | None, typer.Option(
        help="DVC remote for clusters without a shared filesystem")] = None,
    repo_url: Annotated[str | None, typer.Option(
        help="git URL the workers clone (default: this repository's path)")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        help="checkpoints, logs, workspaces: a directory every worker sees")] = None,
    retries: Annotated[int, typer.Option(help="retries of a task that fails")] = 1,
    finish: Annotated[bool, typer.Option(
        help="run `dvc repro` here at the end (aggregate, report)")] = True,
    keep_workspaces: Annotated[bool, typer.Option(
        help="keep the worker workspaces after a successful run")] = False,
    dashboard: Annotated[str, typer.Option(help="Dask dashboard address")] = ":8787",
    params: Annotated[Path, typer.Option(help="params file")] = Path("params.yaml"),
) -> None:
    """Compute the grid's stages on Dask workers, then `dvc repro` here."""
    repo = Path.cwd()
    try:
        suite = read_suite(params)
        tasks = build_tasks(suite)
        work = (work_dir or repo / DEFAULT_WORK).resolve()
        spec = RunSpec(
            repo=repo_url or str(repo), commit=snapshot(repo, clean=repo_url is not None),
            work_dir=str(work),
            threads=suite.threads, cache_dir=None if remote else shared_cache(repo),
            remote=remote, remote_url=remote_url(repo, remote) if remote else None)
    except (ParamsError, DispatchError) as err:
        _fail(str(err))
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # workers inherit it
    if slurm:
        cluster = slurm_cluster(SlurmOptions(partition, jobs, gpus_per_job, walltime, memory,
                                             account, sys.executable), suite.threads, dashboard)
        cluster.scale(jobs=jobs)
        use_gpu = gpus_per_job > 0
    elif scheduler:
        cluster, use_gpu = None, gpu
    else:
        cluster, use_gpu = local_cluster(workers, gpus, suite.threads, dashboard), gpus > 0
    from distributed import Client

    client = Client(cluster if cluster is not None else scheduler)
    typer.echo(f"{len(tasks)} tasks, suite {suite.name!r}, {suite.threads} thread(s) per stage; "
               f"Dask dashboard: {client.dashboard_link}")
    try:
        out = run_grid(client, tasks, spec, repo, gpu=use_gpu, retries=retries,
                       finish_here=finish, keep_workspaces=keep_workspaces, echo=typer.echo)
    except DispatchError as err:
        _fail(str(err))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    n = sum(r["computed"] for r in out.results)
    typer.echo(f"{len(out.results)} tasks done ({n} computed, {len(out.results) - n} restored), "
               f"{len(out.failed)} failed, {out.seconds:.1f} s")
    if out.failed:
        _fail(f"{len(out.failed)} task(s) failed: {', '.join(sorted(out.failed))}; logs in "
              f"{spec.work_dir}/logs")
    if finish:
        typer.echo(f"final dvc repro computed: {', '.join(out.final_computed) or 'nothing'}")


def status(
    work_dir: Annotated[Path | None, typer.Option(help="work directory of the runs")] = None,
) -> None:
    """Per stage: up to date / changed / missing / running (from `dvc status --json`)."""
    repo = Path.cwd()
    listed = dvc(repo, "stage", "list", "--name-only")
    st = dvc(repo, "status", "--json")
    if listed.returncode != 0 or st.returncode != 0:
        _fail((listed.stderr or st.stderr).strip().splitlines()[-1])
    work = (work_dir or repo / DEFAULT_WORK).resolve()
    states = stage_states(listed.stdout.split(), st.stdout, work / "runs.jsonl")
    width = max(map(len, states), default=0)
    for stage, state in states.items():
        typer.echo(f"{stage:<{width}}  {state}")
    typer.echo(summary(states))


app = typer.Typer(add_completion=False, help="Dispatch the DVC grid to Dask workers.")
app.command()(run)
app.command()(status)
