"""Exit codes and error messages of the ``tmifpe`` commands (one place for every command).

* bad input (a flag, a file, a combination the user can fix): one line ``error: ...``, exit 2
  (the usage code, as Typer/Click use for unknown options);
* a failure while running (a stage failed, a scheduler unreachable, a bug): one line, exit 1;
* ``tmifpe --debug <command>``: the full traceback as well;
* CUDA out of memory: one line naming the batch-size option to lower, exit 1.

Commands wrap their body in :func:`handled` (``with handled(batch_option="--batch-size"):``) and
raise :class:`UserError` for bad input, :class:`Failure` for a failure they describe in
full; anything else that escapes is a runtime failure.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

USAGE = 2  # bad input
FAILURE = 1  # runtime failure
DEBUG_ENV = "TMIFPE_DEBUG"  # set by `tmifpe --debug` (or by the user): tracebacks are printed


class UserError(ValueError):
    """Bad input the user can fix; the message is one line naming the value and what was
    expected."""


EXTRA_OF = {"dask": "cluster", "distributed": "cluster", "dask_jobqueue": "cluster",
            "bokeh": "cluster", "dvc": "pipeline", "hydra": "pipeline", "omegaconf": "pipeline",
            "matplotlib": "pipeline", "jinja2": "pipeline"}  # module -> extra of pyproject.toml


class Failure(RuntimeError):
    """A runtime failure whose message says all (a stage failed, no worker came): exit 1, no
    exception type in the message."""


_SET_BY_FLAG = False  # DEBUG_ENV was set by --debug (not by the user's environment)


def set_debug(on: bool) -> None:
    """``--debug`` of this invocation, exported in DEBUG_ENV so that stage processes inherit it;
    an invocation without it clears what an earlier ``--debug`` in the same process set (a
    user's own DEBUG_ENV is left alone)."""
    global _SET_BY_FLAG
    if on:
        os.environ[DEBUG_ENV] = "1"
        _SET_BY_FLAG = True
    elif _SET_BY_FLAG:
        os.environ.pop(DEBUG_ENV, None)
        _SET_BY_FLAG = False


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(err: BaseException | str) -> str:
    """The message of ``err`` on one line (its type name when it has none)."""
    text = " ".join(str(err).split())
    if isinstance(err, BaseException) and not text:
        return type(err).__name__
    return text.removeprefix("ERROR: ").removeprefix("error: ")


def _print(msg: str) -> None:
    print(f"error: {one_line(msg)}", file=sys.stderr)


def usage_error(msg: str) -> typer.Exit:
    """Print ``msg`` as one line; return the exit (code 2) to raise."""
    _print(msg)
    return typer.Exit(USAGE)


def runtime_error(msg: str) -> typer.Exit:
    """Print ``msg`` as one line; return the exit (code 1) to raise."""
    _print(msg)
    return typer.Exit(FAILURE)


def is_oom(err: BaseException) -> bool:
    """CUDA (or MPS) out-of-memory error, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(err, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


@contextmanager
def handled(batch_option: str | None = None) -> Iterator[None]:
    """Map what escapes a command's body to a one-line message and its exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except KeyboardInterrupt:
        _print("interrupted")
        raise typer.Exit(130) from None
    except UserError as err:
        if debug():
            traceback.print_exc()
        raise usage_error(str(err)) from None
    except Failure as err:
        if debug():
            traceback.print_exc()
        raise runtime_error(str(err)) from None
    except ModuleNotFoundError as err:
        extra = EXTRA_OF.get((err.name or "").split(".")[0])
        if debug() or extra is None:
            traceback.print_exc()
        if extra is None:
            raise runtime_error(f"{type(err).__name__}: {one_line(err)}") from None
        raise runtime_error(f"this command needs the [{extra}] extra ({one_line(err)}): "
                            f"pip install 'tmifpe[{extra}]'") from None
    except Exception as err:
        if debug():
            traceback.print_exc()
        if is_oom(err):
            lower = f"lower {batch_option}" if batch_option else "lower the batch size"
            raise runtime_error(f"out of GPU memory ({one_line(err)[:160]}); {lower} and run "
                                "again") from None
        hint = "" if debug() else " (tmifpe --debug ... shows the traceback)"
        raise runtime_error(f"{type(err).__name__}: {one_line(err)}{hint}") from None
