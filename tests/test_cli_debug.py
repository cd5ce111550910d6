"""``tmifpe --debug`` applies to its own invocation only (in-process callers run the app twice)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tmifpe.cli import app
from tmifpe.errors import DEBUG_ENV

runner = CliRunner()


def _missing_model(tmp_path: Path, *flags: str):
    args = [*flags, "evaluate", "--model", str(tmp_path / "missing.pt"), "--dataset", "digits",
            "--out", str(tmp_path / "out")]
    return runner.invoke(app, args)


def test_debug_does_not_leak_into_the_next_invocation(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    first = _missing_model(tmp_path, "--debug")
    assert first.exit_code == 2 and "Traceback" in first.stderr
    second = _missing_model(tmp_path)
    assert second.exit_code == 2 and "Traceback" not in second.stderr
    assert second.stderr.count("\n") == 1, second.stderr
    assert not (tmp_path / "out").exists()


def test_users_own_debug_environment_is_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    res = _missing_model(tmp_path)
    assert res.exit_code == 2 and "Traceback" in res.stderr


def test_debug_is_cleared_when_the_invocation_ends(tmp_path, monkeypatch) -> None:
    """Subprocesses started after an in-process ``--debug`` run must not inherit it."""
    import os

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    _missing_model(tmp_path, "--debug")
    assert DEBUG_ENV not in os.environ
