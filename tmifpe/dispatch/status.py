"""Per-stage state of the user's workspace, from ``dvc status --json`` (DVC's JSON output).

* up to date: DVC lists nothing for the stage;
* changed: a dep, param or the command differs from ``dvc.lock`` (or the stage never ran here):
  ``dvc repro`` restores it from the run-cache if an identical run is cached, else runs it;
* missing: inputs as in ``dvc.lock`` but outputs absent (``dvc checkout``/``dvc pull``, or a
  ``dvc repro``, brings them back);
* running: a stage process of a dispatch run is alive on this machine (from the run log).
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from tmifpe.pipeline.runlog import read_runs


def dvc_states(status: dict[str, Any]) -> dict[str, str]:
    """Stage -> changed / missing for the stages ``dvc status --json`` lists."""
    states = {}
    for stage, changes in status.items():
        kinds = set()
        for change in changes:
            kinds |= set(change) if isinstance(change, dict) else {str(change)}
        states[stage] = "missing" if kinds == {"changed outs"} else "changed"
    return states


def running(run_log: Path) -> set[str]:
    """Stages started and not finished by a process still alive on this host."""
    live: dict[tuple[str, int], str] = {}
    host = socket.gethostname()
    for r in read_runs(run_log):
        if r.get("host") != host or not r.get("stage"):
            continue
        key = (r["stage"], int(r["pid"]))
        if r["event"] == "start":
            live[key] = r["stage"]
        else:
            live.pop(key, None)
    return {stage for (stage, pid) in live if pid_alive(pid)}


def pid_alive(pid: int) -> bool:
    """A process with ``pid`` exists on this host (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_states(stages: list[str], status_json: str, run_log: Path) -> dict[str, str]:
    states = {s: "up to date" for s in stages}
    states.update(dvc_states(json.loads(status_json or "{}")))
    for stage in running(run_log) & set(states):
        states[stage] = "running"
    return states


def summary(states: dict[str, str]) -> str:
    counts = Counter(states.values())
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
