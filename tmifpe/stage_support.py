"""Shared door of every stage entry point: params validated first, clean one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tmifpe.config import ParamsError, SuiteParams, load_params
from tmifpe.dispatch.runlog import record_run
from tmifpe.runtime import configure

# Errors a user can cause (bad params, missing or corrupt files): message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, ValueError, FileNotFoundError,
                                                RuntimeError)


def run_stage(body: Callable[[SuiteParams], None], params_path: Path = Path("params.yaml")) -> None:
    """Validate params, configure torch, run ``body``; exit 2 with the message on user errors."""
    try:
        suite = load_params(params_path)
        configure(suite.threads)
        record_run("start")
        body(suite)
        record_run("done")
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
