"""Shared door of every stage entry point: params validated first, clean one-line errors.

The process settings a stage's floats can depend on come from params, not from the caller's
environment: the hash seed (``suite.hash_seed``: a stage started with another PYTHONHASHSEED
re-executes itself once with the right one, since Python fixes it at start-up) and the thread
count and torch kernel flags (``suite.threads``, :func:`tmifpe.runtime.numerics`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from tmifpe.pipeline.config import ParamsError, SuiteParams, load_params
from tmifpe.pipeline.runlog import record_run
from tmifpe.runtime import numerics

# Errors a user can cause (bad params, missing or corrupt files): message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, ValueError, FileNotFoundError,
                                                RuntimeError)


def _is_stage_process() -> bool:
    """True when this interpreter was started as ``python -m stages.<name>`` (never in tests
    that call a stage body in-process: re-executing would replace the test runner)."""
    argv = getattr(sys, "orig_argv", [])
    return len(argv) >= 3 and argv[1] == "-m" and argv[2].startswith("stages.")


def apply_hash_seed(seed: int) -> None:
    """Re-execute the stage with ``PYTHONHASHSEED=seed`` unless it already runs with it."""
    if os.environ.get("PYTHONHASHSEED") == str(seed) or not _is_stage_process():
        return
    os.environ["PYTHONHASHSEED"] = str(seed)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run_stage(body: Callable[[SuiteParams], None], params_path: Path = Path("params.yaml")) -> None:
    """Validate params, apply hash seed and torch settings, run ``body``; exit 2 with the
    message on user errors."""
    try:
        suite = load_params(params_path)
        apply_hash_seed(suite.hash_seed)
        record_run("start")
        with numerics(suite.threads):
            body(suite)
        record_run("done")
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
