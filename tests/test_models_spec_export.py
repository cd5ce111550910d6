"""``--model`` accepts ``torch.export`` archives (``.pt2``) beside TorchScript, state dicts and
RobustBench IDs: the same network gives the same per-example results either way; an archive
exported for one fixed batch size, or a file that is no archive, is a one-line error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from tmifpe.cli import app
from tmifpe.models.spec import ModelSpecError, load_spec_model, parse_model_spec


def _export(model: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    x = torch.rand(4, 1, 8, 8)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=shapes), str(path))
    return path


def _evaluate(model: Path, out: Path) -> pl.DataFrame:
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--dataset", "digits",
                                   "--n-examples", "30", "--budget", "5", "--loss", "tmifpe",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    return pl.read_parquet(out / "examples.parquet")


def test_export_archive_matches_torchscript(digits_cnn: torch.nn.Module, tmp_path: Path) -> None:
    pt2 = _export(digits_cnn, tmp_path / "cnn.pt2")
    spec = parse_model_spec(str(pt2))
    assert (spec.kind, spec.name) == ("export", "cnn")
    loaded = load_spec_model(spec)
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), digits_cnn.eval()(x))
    assert loaded.to(torch.float64)(x.double()).dtype == torch.float64  # precision copies cast
    torch.jit.script(digits_cnn).save(str(tmp_path / "cnn.ts"))
    a = _evaluate(pt2, tmp_path / "a")
    b = _evaluate(tmp_path / "cnn.ts", tmp_path / "b")
    assert a.equals(b)


def test_bad_export_archives_are_one_line_errors(digits_cnn: torch.nn.Module,
                                                  tmp_path: Path) -> None:
    fixed = _export(digits_cnn, tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(ModelSpecError, match="batches of exactly 4"):
        load_spec_model(parse_model_spec(str(fixed)))
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    res = CliRunner().invoke(app, ["evaluate", "--model", str(junk), "--dataset", "digits",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "is not a torch.export archive" in res.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(ModelSpecError, match="drop --weights"):
        parse_model_spec(str(fixed), weights=tmp_path / "w.pt")
