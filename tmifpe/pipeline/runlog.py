"""The project's own record of which stages really ran (not restored from DVC's run-cache).

A stage process appends one JSON line at its start and one at its end to the file named by
``TMIFPE_RUN_LOG``, when that variable is set (the dispatcher sets it). The stage name comes from
``DVC_STAGE``, which DVC sets for every stage command it runs. A stage that DVC restores from the
run-cache runs no command, so it writes nothing: the log counts computations, not restores.
The work directory may be on NFS, where ``O_APPEND`` is not atomic across clients (each client
computes the end of file itself): every record is written under an exclusive POSIX record lock
(``fcntl.lockf``, which NFS serves through its lock manager and which makes the client revalidate
the file's size), at the end of the file as seen under the lock, then flushed to the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

RUN_LOG_ENV = "TMIFPE_RUN_LOG"
ATTEMPT_ENV = "TMIFPE_ATTEMPT"  # set per task attempt by the dispatcher ("main" for the final step)
WORKER_ENV = "TMIFPE_WORKER"  # name of the Dask worker that ran the task
WORKER_PID_ENV = "TMIFPE_WORKER_PID"


def record_run(event: str) -> None:
    """Append ``{"event": event, "stage": $DVC_STAGE, ...}`` to ``$TMIFPE_RUN_LOG`` if set."""
    path = os.environ.get(RUN_LOG_ENV)
    if not path:
        return
    line = json.dumps({
        "event": event, "stage": os.environ.get("DVC_STAGE"), "time": round(time.time(), 3),
        "pid": os.getpid(), "host": socket.gethostname(),
        "attempt": os.environ.get(ATTEMPT_ENV), "worker": os.environ.get(WORKER_ENV),
        "worker_pid": os.environ.get(WORKER_PID_ENV),
    })
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # released by close
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_runs(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a run log (a line cut short by a crash is skipped)."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def computed(runs: list[dict[str, Any]], attempt: str | None = None) -> list[str]:
    """Stages that finished a computation (``done`` lines), optionally of one attempt only."""
    return [r["stage"] for r in runs
            if r.get("event") == "done" and (attempt is None or r.get("attempt") == attempt)]
