"""DVC stage entry points (``python -m stages.<name>``).

A stage process must run with ``PYTHONHASHSEED = suite.hash_seed``
(:func:`tmifpe.pipeline.stage_support.apply_hash_seed`); started without it (a plain
``dvc repro``; ``make repro`` exports it), it re-executes itself here, before any stage module
imports torch, so the imports are paid once. Unreadable params are left to ``run_stage``, which
reports them.
"""

from __future__ import annotations

import os
import sys


def _early_hash_seed() -> None:
    argv = getattr(sys, "orig_argv", [])
    if not (len(argv) >= 3 and argv[1] == "-m" and argv[2].startswith("stages.")):
        return
    try:
        import yaml

        with open("params.yaml") as fh:
            seed = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        seed = seed["suite"]["hash_seed"]
    except Exception:  # run_stage validates params and names the problem
        return
    if isinstance(seed, int) and not isinstance(seed, bool) \
            and os.environ.get("PYTHONHASHSEED") != str(seed):
        os.environ["PYTHONHASHSEED"] = str(seed)
        os.execv(sys.executable, [sys.executable, *argv[1:]])


_early_hash_seed()
