"""``run``, ``prefetch`` and ``status``: plain Typer-annotated functions (mounted into the
``tmifpe`` app).

    tmifpe run --workers 4                        # this machine, 4 CPU workers
    tmifpe run --gpus 4                           # this machine, one worker per GPU
    tmifpe run --scheduler tcp://host:8786        # workers started by hand
    tmifpe run --slurm --partition gpu --jobs 16  # SLURM jobs, adapted between 0 and 16
    tmifpe run --suite paper -S 'suite.budgets=[10,20]'  # params composed as `dvc exp run -S`
    tmifpe prefetch --suite paper                 # downloads/trains here, before dispatch
    tmifpe status

Bad input: one line, exit 2; a failed run: one line, exit 1 (tmifpe/errors.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tmifpe.dispatch.clusters import SlurmOptions, local_cluster, slurm_cluster, start_slurm
from tmifpe.dispatch.engine import (
    DispatchError,
    dvc,
    remote_url,
    repro_here,
    run_grid,
    shared_cache,
    snapshot,
)
from tmifpe.dispatch.graph import build_tasks, read_suite
from tmifpe.dispatch.params import overrides_of, write_params
from tmifpe.dispatch.runlock import locked
from tmifpe.dispatch.status import stage_states, summary
from tmifpe.dispatch.task import RunSpec
from tmifpe.errors import UserError, handled
from tmifpe.pipeline.config import ParamsError

DEFAULT_WORK = ".tmifpe-work"
PREFETCH_KINDS = ("data", "model")  # the stages that download (torchvision, RobustBench)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set-param", "-S", help="Hydra override of params.yaml, as `dvc exp run -S` "
                              "(e.g. -S 'suite.budgets=[10,20]'); repeatable")]
SuiteOpt = Annotated[str | None, typer.Option(
    help="suite of conf/suite/ (= -S suite=NAME), e.g. paper")]


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


def _suite(repo: Path, overrides: list[str]) -> Any:
    """Compose params.yaml when -S/--suite are given (as `dvc exp run -S`), then read it."""
    if overrides:
        path = write_params(repo, overrides)
        typer.echo(f"params.yaml composed with {' '.join(overrides)} (as dvc exp run -S)")
    else:
        path = repo / "params.yaml"
    try:
        return read_suite(path)
    except ParamsError as err:
        raise UserError(str(err)) from None


def _validate(*, workers: int | None, gpus: int | None, scheduler: str | None, gpu: bool,
              slurm: bool, slurm_given: list[str], lifetime: str | None, retries: int,
              no_worker_timeout: float, jobs: int | None, min_jobs: int | None,
              gpus_per_job: int | None) -> None:
    _check(not (slurm and scheduler), "--slurm and --scheduler exclude each other: SLURM jobs "
           "start their own scheduler here; give one of them")
    local = not slurm and not scheduler
    if not local:
        where = "--slurm" if slurm else "--scheduler"
        _check(workers is None and gpus is None, f"--workers/--gpus size a local cluster; with "
               f"{where} the workers are {'SLURM jobs (--jobs)' if slurm else 'yours'}")
    if not slurm:
        _check(not slurm_given, f"{', '.join(slurm_given)} only apply with --slurm")
    _check(not (gpu and not scheduler), "--gpu is for --scheduler (workers started by hand); "
           "use --gpus N here or --gpus-per-job with --slurm")
    _check(not (lifetime and scheduler), "--lifetime applies to workers this command starts; "
           "with --scheduler give `dask worker --lifetime` yourself")
    if lifetime is not None:
        from dask.utils import parse_timedelta

        try:
            ok = parse_timedelta(lifetime) > 0
        except (KeyError, ValueError, TypeError):
            ok = False
        _check(ok, f"--lifetime {lifetime!r}: expected a duration such as '50 minutes' or "
               "'3000s'")
    _check(workers is None or workers >= 1, f"--workers {workers}: expected at least 1")
    _check(gpus is None or gpus >= 0, f"--gpus {gpus}: expected 0 or more")
    _check(jobs is None or jobs >= 1, f"--jobs {jobs}: expected at least 1")
    _check(min_jobs is None or min_jobs >= 0, f"--min-jobs {min_jobs}: expected 0 or more")
    _check(min_jobs is None or min_jobs <= (jobs or 1),
           f"--min-jobs {min_jobs} is above --jobs {jobs or 1} (the maximum)")
    _check(gpus_per_job is None or gpus_per_job >= 0,
           f"--gpus-per-job {gpus_per_job}: expected 0 or more")
    _check(retries >= 0, f"--retries {retries}: expected 0 or more")
    _check(no_worker_timeout > 0, f"--no-worker-timeout {no_worker_timeout:g}: expected minutes "
           "> 0")


def run(
    workers: Annotated[int | None, typer.Option(
        help="local CPU worker processes (default: 2)")] = None,
    gpus: Annotated[int | None, typer.Option(
        help="local GPUs: one worker per GPU, pinned")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="address of a running `dask scheduler` (tcp://host:8786)")] = None,
    gpu: Annotated[bool, typer.Option(
        help="with --scheduler: the workers have GPU=1 resources")] = False,
    slurm: Annotated[bool, typer.Option(help="start workers as SLURM jobs")] = False,
    partition: Annotated[str | None, typer.Option(
        help="SLURM partition (default: jobqueue.yaml's queue)")] = None,
    gpus_per_job: Annotated[int | None, typer.Option(
        help="SLURM GPUs (= workers) per job (default: 1)")] = None,
    jobs: Annotated[int | None, typer.Option(
        help="SLURM jobs at most at a time (adaptive) (default: 1)")] = None,
    min_jobs: Annotated[int | None, typer.Option(
        help="SLURM jobs kept even when idle (default: 0)")] = None,
    walltime: Annotated[str | None, typer.Option(
        help="SLURM time limit per job (default: jobqueue.yaml's)")] = None,
    memory: Annotated[str | None, typer.Option(
        help="SLURM memory per job (default: jobqueue.yaml's)")] = None,
    account: Annotated[str | None, typer.Option(
        help="SLURM account (default: jobqueue.yaml's)")] = None,
    interface: Annotated[str | None, typer.Option(
        help="SLURM: network interface of workers and scheduler, e.g. ib0 "
             "(default: jobqueue.yaml's)")] = None,
    lifetime: Annotated[str | None, typer.Option(
        help="worker lifetime, e.g. '50 minutes': retired gracefully and replaced "
             "(default with --slurm: below the walltime; else none)")] = None,
    no_worker_timeout: Annotated[float, typer.Option(
        help="minutes without any worker before the run gives up (exit 1)")] = 30.0,
    remote: Annotated[str | None, typer.Option(
        help="DVC remote for clusters without a shared filesystem")] = None,
    repo_url: Annotated[str | None, typer.Option(
        help="git URL the workers clone (default: this repository's path)")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        help="checkpoints, logs, workspaces: a directory every worker sees; one run at a time "
             "each")] = None,
    retries: Annotated[int, typer.Option(help="retries of a task that fails")] = 1,
    prefetch: Annotated[bool, typer.Option(
        help="first run the data and model stages here (downloads: compute nodes need no "
             "internet)")] = False,
    finish: Annotated[bool, typer.Option(
        help="run `dvc repro` here at the end (aggregate, report)")] = True,
    keep_workspaces: Annotated[bool, typer.Option(
        help="keep the worker workspaces after a successful run")] = False,
    dashboard: Annotated[str, typer.Option(help="Dask dashboard address")] = ":8787",
    set_param: SetOpt = None,
    suite: SuiteOpt = None,
) -> None:
    """Compute the grid's stages on Dask workers, then `dvc repro` here."""
    with handled():
        given = {"--partition": partition, "--gpus-per-job": gpus_per_job, "--jobs": jobs,
                 "--min-jobs": min_jobs, "--walltime": walltime, "--memory": memory,
                 "--account": account, "--interface": interface}
        _validate(workers=workers, gpus=gpus, scheduler=scheduler, gpu=gpu, slurm=slurm,
                  slurm_given=[k for k, v in given.items() if v is not None], lifetime=lifetime,
                  retries=retries, no_worker_timeout=no_worker_timeout, jobs=jobs,
                  min_jobs=min_jobs, gpus_per_job=gpus_per_job)
        overrides = overrides_of(set_param or [], suite)
        repo = Path.cwd()
        work = (work_dir or repo / DEFAULT_WORK).resolve()
        with locked(work):
            _run(repo, work, workers=2 if workers is None else workers, gpus=gpus or 0,
                 scheduler=scheduler, gpu=gpu, slurm=slurm,
                 slurm_opts=SlurmOptions(
                     max_jobs=jobs or 1, min_jobs=min_jobs or 0,
                     gpus_per_job=1 if gpus_per_job is None else gpus_per_job,
                     partition=partition, walltime=walltime, memory=memory, account=account,
                     interface=interface, lifetime=lifetime),
                 lifetime=lifetime, no_worker_timeout=no_worker_timeout * 60, remote=remote,
                 repo_url=repo_url, retries=retries, prefetch=prefetch, finish=finish,
                 keep_workspaces=keep_workspaces, dashboard=dashboard, overrides=overrides)


def _run(repo: Path, work: Path, *, workers: int, gpus: int, scheduler: str | None, gpu: bool,
         slurm: bool, slurm_opts: SlurmOptions, lifetime: str | None, no_worker_timeout: float,
         remote: str | None, repo_url: str | None, retries: int, prefetch: bool, finish: bool,
         keep_workspaces: bool, dashboard: str, overrides: list[str]) -> None:
    suite = _suite(repo, overrides)
    tasks = build_tasks(suite)
    spec = RunSpec(
        repo=repo_url or str(repo), commit=snapshot(repo, clean=repo_url is not None),
        work_dir=str(work),
        threads=suite.threads, cache_dir=None if remote else shared_cache(repo),
        remote=remote, remote_url=remote_url(repo, remote) if remote else None)
    if prefetch:
        _prefetch(repo, spec, tasks)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # workers inherit it
    cluster = None
    if slurm:
        cluster = slurm_cluster(slurm_opts, suite.threads, dashboard)
        start_slurm(cluster, slurm_opts)
        use_gpu = slurm_opts.gpus_per_job > 0
    elif scheduler:
        use_gpu = gpu
    else:
        cluster = local_cluster(workers, gpus, suite.threads, dashboard, lifetime=lifetime)
        use_gpu = gpus > 0
    from distributed import Client

    try:
        try:
            client = Client(cluster if cluster is not None else scheduler, timeout="60s")
        except (OSError, TimeoutError) as err:
            raise DispatchError(f"cannot connect to the Dask scheduler "
                                f"{scheduler or 'of the cluster'}: {err}") from None
        try:
            typer.echo(f"{len(tasks)} tasks, suite {suite.name!r}, {suite.threads} thread(s) per "
                       f"stage; Dask dashboard: {client.dashboard_link} (scheduler "
                       f"{client.scheduler.address})")
            out = run_grid(client, tasks, spec, repo, gpu=use_gpu, retries=retries,
                           finish_here=finish, keep_workspaces=keep_workspaces, echo=typer.echo,
                           no_worker_timeout=no_worker_timeout)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
    n = sum(r["computed"] for r in out.results)
    typer.echo(f"{len(out.results)} tasks done ({n} computed, {len(out.results) - n} restored), "
               f"{len(out.failed)} failed, {out.seconds:.1f} s")
    if out.failed:
        raise DispatchError(f"{len(out.failed)} task(s) failed: {', '.join(sorted(out.failed))}; "
                            f"logs in {spec.work_dir}/logs; run again to resume (finished stages "
                            "and checkpoints are kept)")
    if finish:
        typer.echo(f"final dvc repro computed: {', '.join(out.final_computed) or 'nothing'}")


def _prefetch(repo: Path, spec: RunSpec, tasks: list[Any]) -> list[str]:
    targets = [t.stage for t in tasks if t.kind in PREFETCH_KINDS]
    ran = repro_here(repo, spec, targets, typer.echo, tag="prefetch")
    typer.echo(f"prefetch: {len(targets)} data/model stages ready in the DVC cache "
               f"({len(ran)} computed here)")
    return ran


def prefetch(
    set_param: SetOpt = None,
    suite: SuiteOpt = None,
    work_dir: Annotated[Path | None, typer.Option(help="work directory of the runs")] = None,
) -> None:
    """Run the suite's data and model stages here (downloads of datasets and RobustBench
    checkpoints), into the DVC cache and run-cache, so workers without internet restore them."""
    with handled():
        overrides = overrides_of(set_param or [], suite)
        repo = Path.cwd()
        work = (work_dir or repo / DEFAULT_WORK).resolve()
        with locked(work):
            s = _suite(repo, overrides)
            spec = RunSpec(repo=str(repo), commit="", work_dir=str(work), threads=s.threads)
            _prefetch(repo, spec, build_tasks(s))


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip().removeprefix("ERROR: ").removeprefix("ERROR:").strip()
    return "no message"


def status(
    work_dir: Annotated[Path | None, typer.Option(help="work directory of the runs")] = None,
) -> None:
    """Per stage: up to date / changed / missing / running (from `dvc status --json`)."""
    with handled():
        repo = Path.cwd()
        listed = dvc(repo, "stage", "list", "--name-only")
        if listed.returncode != 0:
            raise DispatchError(f"`dvc stage list` in {repo} failed: "
                                f"{_last_line(listed.stderr, listed.stdout)}")
        st = dvc(repo, "status", "--json")
        if st.returncode != 0:
            raise DispatchError(f"`dvc status` in {repo} failed: "
                                f"{_last_line(st.stderr, st.stdout)}")
        work = (work_dir or repo / DEFAULT_WORK).resolve()
        states = stage_states(listed.stdout.split(), st.stdout, work / "runs.jsonl")
        width = max(map(len, states), default=0)
        for stage, state in states.items():
            typer.echo(f"{stage:<{width}}  {state}")
        typer.echo(summary(states))


app = typer.Typer(add_completion=False, help="Dispatch the DVC grid to Dask workers.")
app.command()(run)
app.command()(prefetch)
app.command()(status)

