"""Exit 0 when URL answers within a few seconds, else 1 (so the Makefile never waits on an
unreachable package index). Usage: python scripts/reachable.py URL [TIMEOUT_S]"""

from __future__ import annotations

import sys
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]) if len(sys.argv) > 2 else 5)
except Exception:  # DNS, refused, timeout, TLS, HTTP errors: all mean "do not use it"
    sys.exit(1)
