"""Content hashes of the files a resumable run depends on (its checkpoint / state keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_path(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's Python files (relative path and content,
    sorted), so a loss package hashes like the files it holds."""
    h = hashlib.sha256()
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
