"""Run one command in its own process group and kill that group if our parent dies.

A Dask worker runs each stage as ``python -m tmifpe.dispatch.guard <worker pid> -- dvc repro ...``.
If the worker is killed (SIGKILL, node loss), no code of the worker runs any more, and the stage
process DVC started would go on as an orphan, racing the rerun of the task on another worker for
the same checkpoints. The guard polls its parent: once the parent is gone, it kills the whole
group (DVC and the stage command it started). SIGTERM/SIGINT to the guard do the same (a closing
worker sends SIGTERM: tmifpe/dispatch/reaper.py). Either way it says why in the stage's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m tmifpe.dispatch.guard PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    started: list[subprocess.Popen[bytes]] = []

    def kill_group(why: str) -> None:
        # one line in the stage's log (the guard's stdout): what ended the stage
        print(f"guard: {why}: killing the stage's process group", flush=True)
        for child in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        sys.exit(128 + signal.SIGKILL)

    def on_signal(signum: int, _frame: object) -> None:
        kill_group(f"{signal.Signals(signum).name} received (the worker is closing)")

    # handlers first: a SIGTERM (a closing worker, tmifpe/dispatch/reaper.py) that arrives while
    # the command starts must not leave it running
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    child = subprocess.Popen(argv[2:], start_new_session=True)
    started.append(child)
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                kill_group(f"worker process {parent} is gone")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
