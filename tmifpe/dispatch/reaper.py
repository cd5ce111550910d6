"""A closing Dask worker ends the stages it runs (worker plugin, ``client.register_plugin``).

A graceful retirement (``Worker.close_gracefully`` at a worker's ``--lifetime``, or
``Client.retire_workers``) first hands the worker's running task to another worker, then closes
the worker; ``Worker.close`` waits up to its timeout (30 s) for running threads before the
process exits, and only then would :mod:`tmifpe.dispatch.guard` end the stage. Meanwhile the
stage would compute the same cell beside the rescheduled attempt, on the same checkpoints.
``Worker.close`` tears plugins down before it waits for its threads: there, this plugin ends them.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from tmifpe.dispatch.task import terminate_stages


class StageReaper(WorkerPlugin):
    """On worker close: SIGTERM every running stage's guard (which kills the stage's group)."""

    name = "tmifpe-stage-reaper"
    idempotent = True

    def teardown(self, worker: Any) -> None:
        terminate_stages()
