"""Integrity and availability of data files: chunked MD5, the errors raised when a file is bad
or missing, and a guarded download that turns network failures into one-line messages."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = 1 << 20
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0  # per socket operation, so a dead network fails instead of hanging


class DataIntegrityError(ValueError):
    """A data file exists but is not the published file (wrong MD5, truncated, bad header)."""


def md5_of(path: Path, chunk_size: int = _CHUNK) -> str:
    """Hex MD5 of a file, read in chunks (not used for security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()



@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else min(previous, seconds))
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def guarded_download(
    fetch: Callable[[], None], *, source: str, missing: Path, hint: str = ""
) -> None:
    """Run ``fetch`` (a real torchvision/gdown download); on a network failure raise a one-line
    FileNotFoundError saying which file is missing and where to place it."""
    try:
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            fetch()
    except (OSError, RuntimeError) as exc:  # URLError and requests' errors are OSErrors
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise FileNotFoundError(
            f"{missing} is missing and downloading it from {source} failed ({reason}); "
            f"place the file at {missing}{hint} and run again"
        ) from exc
