"""The three ways to get Dask workers, all giving a ``distributed.Client`` for one code path.

* one machine: a local cluster of worker processes, one per GPU (each pinned with
  ``CUDA_VISIBLE_DEVICES``) or ``n`` CPU workers;
* several machines: an existing ``dask scheduler`` that ``dask worker`` processes joined;
* SLURM: dask-jobqueue's ``SLURMCluster``, one batch job per ``gpus_per_job`` GPUs, sized by
  ``cluster.adapt(minimum_jobs=..., maximum_jobs=...)``.

Every worker has one thread: it runs one stage at a time, and the stage uses ``threads`` CPU
threads of its own (the suite's param), whatever the number of workers.

SLURM jobs end at their walltime. dask-jobqueue's advice (docs, "How to handle job queueing
system walltime killing workers") is followed: each worker has a ``--lifetime`` (and
``--lifetime-stagger``) below the walltime, so it retires gracefully (the scheduler moves its
task elsewhere; the stage resumes from its checkpoints), and ``adapt`` submits new jobs while
tasks are pending. Every dask-jobqueue option not given on the command line is not passed at all:
dask's configuration (the user's ``~/.config/dask/jobqueue.yaml``, ``DASK_CONFIG``) fills it.
Options that take lists (``job_extra_directives``, ``worker_extra_args``, ``job_script_prologue``)
are the configured list plus ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tmifpe.errors import UserError

_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


@dataclass(frozen=True)
class SlurmOptions:
    """Command-line SLURM settings; ``None`` = from the user's jobqueue.yaml (dask config)."""

    max_jobs: int = 1
    min_jobs: int = 0
    gpus_per_job: int = 1
    partition: str | None = None
    walltime: str | None = None
    memory: str | None = None
    account: str | None = None
    interface: str | None = None
    lifetime: str | None = None  # worker --lifetime (default: from the walltime)
    lifetime_stagger: str | None = None


def walltime_seconds(walltime: str) -> int:
    """SLURM ``[D-]HH:MM:SS`` or ``MM:SS`` -> seconds; :class:`UserError` otherwise."""
    m = _DURATION.match(walltime.strip())
    if not m:
        raise UserError(f"walltime {walltime!r} is not [D-]HH:MM:SS")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def lifetimes(walltime_s: int) -> tuple[int, int]:
    """(lifetime, stagger) in seconds for a job of ``walltime_s``: the stagger is 5% of the
    walltime (at most 5 min); lifetime + stagger ends 10% of the walltime (at least 5 min) before
    it, time for a graceful retirement. A walltime under 15 min leaves too little: an error."""
    if walltime_s < 15 * 60:
        raise UserError(f"SLURM walltime of {walltime_s} s is too short for a worker lifetime "
                        "below it (need >= 00:15:00, or give --lifetime)")
    stagger = min(300, walltime_s // 20)
    margin = max(300, walltime_s // 10)
    return walltime_s - margin - stagger, stagger


def local_cluster(workers: int, gpus: int, threads: int, dashboard: str = ":8787",
                  lifetime: str | None = None) -> Any:
    """``gpus`` > 0: one worker per GPU, pinned; else ``workers`` CPU workers.

    ``lifetime`` (e.g. ``"10 minutes"``, CPU workers only): each worker retires gracefully after
    it and ``adapt`` starts a fresh one in its place (what SLURM jobs replaced by ``adapt`` do,
    on one machine)."""
    from distributed import Nanny, Scheduler, SpecCluster

    specs: dict[str, dict[str, Any]] = {}
    if gpus > 0:
        for i in range(gpus):
            specs[f"gpu{i}"] = {"cls": Nanny, "options": {
                "nthreads": 1, "resources": {"GPU": 1}, "name": f"gpu{i}",
                "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
    else:
        for i in range(workers):
            specs[f"cpu{i}"] = {"cls": Nanny, "options": {
                "nthreads": 1, "name": f"cpu{i}", "env": {"CUDA_VISIBLE_DEVICES": ""}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard}}
    if not lifetime:
        return SpecCluster(workers=specs, scheduler=scheduler, name="tmifpe")
    if gpus > 0:
        raise UserError("--lifetime with --gpus: a replacement worker cannot be pinned to the GPU "
                        "its predecessor freed; use --lifetime with CPU workers or on SLURM")
    import dask.config
    from dask.utils import parse_timedelta

    # stagger: a quarter of the lifetime, so workers do not all retire at once (the results
    # held by a retiring worker move to another one instead of being lost)
    stagger = f"{parse_timedelta(lifetime) / 4:g}s"
    options = {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": ""}, "lifetime": lifetime,
               "lifetime_stagger": stagger}
    # a retired worker is replaced once the cluster has given it up for lost (default 15 s)
    dask.config.set({"distributed.deploy.lost-worker-timeout": "2s"})
    for spec in specs.values():
        spec["options"].update(options)
    cluster = SpecCluster(workers=specs, scheduler=scheduler, name="tmifpe",
                          worker={"cls": Nanny, "options": options})
    cluster.adapt(minimum=workers, maximum=workers, interval="1s", wait_count=1)
    return cluster


def slurm_kwargs(opts: SlurmOptions, threads: int, dashboard: str = ":8787") -> dict[str, Any]:
    """Keyword arguments of ``SLURMCluster``: only what the command line set, plus what the
    dispatcher needs (processes per job, GPU resources, lifetime, threads), merged with the
    configured lists."""
    import dask.config

    def conf(key: str) -> Any:
        return dask.config.get(f"jobqueue.slurm.{key}", default=None)

    per_job = max(opts.gpus_per_job, 1)
    kw: dict[str, Any] = {"cores": per_job, "processes": per_job}
    for key, value in (("queue", opts.partition), ("walltime", opts.walltime),
                       ("memory", opts.memory), ("account", opts.account),
                       ("interface", opts.interface)):
        if value is not None:
            kw[key] = value
    if conf("job-cpu") is None:
        kw["job_cpu"] = per_job * threads
    walltime = opts.walltime or conf("walltime")
    if opts.lifetime:
        lifetime, stagger = opts.lifetime, opts.lifetime_stagger or "0s"
    elif walltime:
        life_s, stagger_s = lifetimes(walltime_seconds(str(walltime)))
        lifetime, stagger = f"{life_s}s", opts.lifetime_stagger or f"{stagger_s}s"
    else:
        raise UserError("no SLURM walltime: give --walltime or set jobqueue.slurm.walltime in "
                        "jobqueue.yaml (or give --lifetime)")
    args = ["--lifetime", lifetime, "--lifetime-stagger", stagger]
    if opts.gpus_per_job > 0:
        args += ["--resources", "GPU=1"]
    kw["worker_extra_args"] = [*(conf("worker-extra-args") or []), *args]
    if opts.gpus_per_job > 0:
        kw["job_extra_directives"] = [*(conf("job-extra-directives") or []),
                                      f"--gres=gpu:{opts.gpus_per_job}"]
    kw["job_script_prologue"] = [*(conf("job-script-prologue") or []),
                                 f"export OMP_NUM_THREADS={threads}",
                                 f"export MKL_NUM_THREADS={threads}"]
    kw["scheduler_options"] = {**(conf("scheduler-options") or {}),
                               "dashboard_address": dashboard}
    return kw


def slurm_cluster(opts: SlurmOptions, threads: int, dashboard: str = ":8787") -> Any:
    """One SLURM job per ``gpus_per_job`` GPUs, one worker process per GPU in each job.

    Not started yet: :func:`start_slurm` adapts it (``job_script()`` shows what each job runs)."""
    from dask_jobqueue import SLURMCluster

    try:
        return SLURMCluster(**slurm_kwargs(opts, threads, dashboard))
    except (ValueError, RuntimeError) as err:  # no memory set, an unknown --interface, ...
        raise UserError(f"SLURM cluster: {' '.join(str(err).split())}") from None


def start_slurm(cluster: Any, opts: SlurmOptions) -> None:
    """Between ``min_jobs`` and ``max_jobs`` jobs, as many as pending tasks need; a job that
    ends (walltime, lifetime, node failure) is replaced while tasks remain."""
    cluster.adapt(minimum_jobs=opts.min_jobs, maximum_jobs=opts.max_jobs)
