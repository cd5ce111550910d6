"""The one atomic writer and the one content hasher of the project.

Writes go to a unique temporary file in the target's folder and are renamed into place, so a
crash never leaves a half-written file that DVC could cache as complete, and two processes
writing the same path never share a temporary name; files get the mode an ordinary write gives
(0666 minus the umask). Hashes are SHA-256 over bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor


def _process_umask() -> int:
    """The process umask, read once at import (``os.umask`` can only read it by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# the mode an ordinary ``open(path, "w")`` gives: mkstemp's temporary files are 0600, which
# would leave every result unreadable to the group on a shared lab filesystem
FILE_MODE = 0o666 & ~_process_umask()


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet(frame: pl.DataFrame, path: Path, *, metadata: dict[str, Any] | None = None
                  ) -> None:
    """Deterministic Parquet (zstd, no statistics); ``metadata`` values are stored as JSON
    strings in the file's key-value metadata (read back with :func:`read_parquet_metadata`)."""
    kv = {k: json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    _atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=False,
                                                  metadata=kv or None))


def read_parquet_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata`` given to :func:`write_parquet` (JSON-decoded); {} when none."""
    raw = pl.read_parquet_metadata(path)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("ARROW:schema",):
            continue
        try:
            out[k] = json.loads(v)
        except ValueError:
            continue
    return out


def write_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes(data: bytes, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_bytes(data))


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` via rename (load with ``torch.load(path, weights_only=True)``). Saved to
    memory first: ``torch.save`` to a path names the zip's records after the file, and the
    temporary file's random name would make equal objects give different bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(buf.getvalue(), path)


def sha256_path(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's Python files (relative path and content,
    sorted), so a package hashes like the files it holds."""
    h = hashlib.sha256()
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_tensors(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' bytes (CPU, contiguous), in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha256_json(doc: Any) -> str:
    """SHA-256 of a JSON document with sorted keys (resume keys)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
