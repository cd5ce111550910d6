"""The one atomic writer and hasher (tmifpe.storage) and the environment table of a report."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from tmifpe.aggregate.environment import environment_summary, environment_table
from tmifpe.storage import (
    read_parquet_metadata,
    sha256_path,
    sha256_tensors,
    write_json,
    write_parquet,
)


def test_parquet_metadata_round_trip_and_bytes_stable(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": [1, 2, 3]})
    meta = {"environment": {"hardware_class": "cpu/AVX2/avx2+fma", "threads": 2}}
    write_parquet(frame, tmp_path / "a.parquet", metadata=meta)
    write_parquet(frame, tmp_path / "b.parquet", metadata=meta)
    assert read_parquet_metadata(tmp_path / "a.parquet") == meta
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert pl.read_parquet(tmp_path / "a.parquet").equals(frame)


def test_crash_while_writing_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def half_write(self, path, **_):
        Path(path).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.json"
    write_json({"a": 1}, target)
    write_json({"a": 2}, target)
    assert target.read_text() == '{\n  "a": 2\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_hashes(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    h = sha256_path(tmp_path / "pkg")
    (tmp_path / "pkg" / "m.py").write_text("x = 2\n")
    assert sha256_path(tmp_path / "pkg") != h
    t = torch.arange(4, dtype=torch.bfloat16)  # no NumPy dtype: hashed as bytes
    assert sha256_tensors([t]) == sha256_tensors([t.clone()]) != sha256_tensors([t + 1])


def _result(path: Path, hardware: str | None) -> Path:
    meta = None if hardware is None else {"environment": {
        "hardware_class": hardware, "device_name": "CPU X", "torch": "2.14.1", "cuda": None,
        "cudnn": None, "fp32_precision": {"matmul": "ieee"}}}
    write_parquet(pl.DataFrame({"a": [1]}), path, metadata=meta)
    return path


def test_report_environment_says_when_hardware_is_mixed(tmp_path: Path) -> None:
    a = _result(tmp_path / "a.parquet", "cpu/AVX512/avx512f")
    b = _result(tmp_path / "b.parquet", "cpu/AVX512/avx512f")
    c = _result(tmp_path / "c.parquet", "cpu/AVX2/avx2")
    same = environment_table({"attack": [a], "autoattack": [b]}, "default")
    lines, mixed = environment_summary(same)
    assert not mixed and len(lines) == 1 and "2 result files" in lines[0]
    lines, mixed = environment_summary(environment_table({"attack": [a, c]}, "default"))
    assert mixed and len(lines) == 2
    old = _result(tmp_path / "old.parquet", None)
    table = environment_table({"attack": [old]}, "default")
    assert table["hardware_class"].to_list() == ["unrecorded"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path: Path, umask: int,
                                                    mode: int) -> None:
    """Not mkstemp's 0600: results on a shared filesystem stay readable as the umask allows."""
    import subprocess
    import sys

    code = (f"import os; os.umask({umask}); from pathlib import Path; "
            "from tmifpe.storage import write_json; "
            f"write_json({{'a': 1}}, Path({str(tmp_path / 'out.json')!r}))")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == mode


def test_equal_objects_save_to_equal_bytes(tmp_path: Path) -> None:
    """The temporary file's random name must not leak into the checkpoint (DVC hashes bytes)."""
    from tmifpe.storage import save_torch

    obj = {"x": torch.arange(6.0).view(2, 3), "y": torch.tensor([1, 2])}
    save_torch(obj, tmp_path / "a.pt")
    save_torch(obj, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(back["x"], obj["x"]) and torch.equal(back["y"], obj["y"])
