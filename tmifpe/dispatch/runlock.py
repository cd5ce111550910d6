"""One run per work directory at a time: ``<work dir>/run.lock``, made with ``mkdir``.

``mkdir`` either creates the directory or fails, atomically, on local filesystems and on NFS
alike (unlike ``O_APPEND`` writes or ``flock`` on old NFS clients). The owner (host, pid, start
time) is written inside it. A second run on the same work directory stops at once with a message
naming the owner; a lock whose owner died on this host is taken over; one from another host is
left to the user (the message says how to remove it). Two runs that should proceed side by side
use two ``--work-dir``\\ s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tmifpe.dispatch.status import pid_alive
from tmifpe.errors import UserError

LOCK = "run.lock"


def _owner(lock: Path) -> dict[str, object]:
    try:
        return json.loads((lock / "owner.json").read_text())
    except (OSError, ValueError):
        return {}


def acquire(work: Path) -> Path:
    """Take the lock of ``work`` (created if needed); :class:`UserError` if another run has it."""
    work.mkdir(parents=True, exist_ok=True)
    lock = work / LOCK
    for _ in range(2):
        try:
            lock.mkdir()
        except FileExistsError:
            owner = _owner(lock)
            pid, host = owner.get("pid"), owner.get("host")
            if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
                shutil.rmtree(lock, ignore_errors=True)  # its run died: stale
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(
                owner.get("time", 0) or 0)))
            who = f"pid {pid} on {host}, since {since}" if owner else "owner unknown"
            raise UserError(f"another tmifpe run uses {work} ({who}): wait for it, or give "
                            f"this run its own --work-dir; if that run is dead, remove {lock}"
                            ) from None
        tmp = lock / f".owner.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "time": time.time()}))
        tmp.replace(lock / "owner.json")
        return lock
    raise UserError(f"cannot take the lock {lock}: remove it if no run uses {work}")


def release(lock: Path) -> None:
    shutil.rmtree(lock, ignore_errors=True)


@contextlib.contextmanager
def locked(work: Path) -> Iterator[Path]:
    lock = acquire(work)
    try:
        yield lock
    finally:
        release(lock)
