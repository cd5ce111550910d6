"""Fail early, with one clear line, when the interpreter cannot build the project's venv."""

from __future__ import annotations

import sys

MIN = (3, 10)
MAX = (3, 13)  # newest Python requirements.lock is checked for (scripts/lock.py)

if sys.version_info < MIN:
    sys.exit(f"error: Python >= {MIN[0]}.{MIN[1]} is needed, {sys.executable} is "
             f"{sys.version.split()[0]}; run `make PYTHON=python3.11` (or newer)")
if sys.version_info[:2] > MAX:
    print(f"warning: {sys.executable} is Python {sys.version.split()[0]}; the lock is checked "
          f"for {MIN[0]}.{MIN[1]}-{MAX[0]}.{MAX[1]} (some wheels may be missing)", file=sys.stderr)
try:
    import ensurepip  # noqa: F401  (Debian/Ubuntu ship venv without it)
    import venv  # noqa: F401
except ImportError:
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    sys.exit(f"error: the venv module of {sys.executable} is missing or incomplete; install it "
             f"(Debian/Ubuntu: apt-get install python{v}-venv) and run make again")
