"""The three ways to get Dask workers, all giving a ``distributed.Client`` for one code path.

* one machine: a local cluster of worker processes, one per GPU (each pinned with
  ``CUDA_VISIBLE_DEVICES``) or ``n`` CPU workers;
* several machines: an existing ``dask scheduler`` that ``dask worker`` processes joined;
* SLURM: dask-jobqueue's ``SLURMCluster``, one batch job per ``gpus_per_job`` GPUs.

Every worker has one thread: it runs one stage at a time, and the stage uses ``threads`` CPU
threads of its own (the suite's param), whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SlurmOptions:
    partition: str
    jobs: int
    gpus_per_job: int = 1
    walltime: str = "04:00:00"
    memory: str = "16GB"
    account: str | None = None
    python: str | None = None  # the python of the project's environment on the nodes


def local_cluster(workers: int, gpus: int, threads: int, dashboard: str = ":8787") -> Any:
    """``gpus`` > 0: one worker per GPU, pinned; else ``workers`` CPU workers."""
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
    return SpecCluster(workers=specs, scheduler=scheduler, name="tmifpe")


def slurm_cluster(opts: SlurmOptions, threads: int, dashboard: str = ":8787") -> Any:
    """One SLURM job per ``gpus_per_job`` GPUs, one worker process per GPU in each job.

    Not scaled yet: ``cluster.scale(jobs=opts.jobs)`` submits the jobs (``job_script()`` shows
    what each one runs)."""
    from dask_jobqueue import SLURMCluster

    per_job = max(opts.gpus_per_job, 1)
    extra = [f"--gres=gpu:{opts.gpus_per_job}"] if opts.gpus_per_job > 0 else []
    resources = ["--resources", "GPU=1"] if opts.gpus_per_job > 0 else []
    return SLURMCluster(
        queue=opts.partition, account=opts.account, walltime=opts.walltime,
        cores=per_job, processes=per_job, memory=opts.memory,
        job_cpu=per_job * threads, job_extra_directives=extra,
        worker_extra_args=resources, python=opts.python,
        job_script_prologue=[f"export OMP_NUM_THREADS={threads}",
                             f"export MKL_NUM_THREADS={threads}"],
        scheduler_options={"dashboard_address": dashboard},
    )
