"""Install on every supported Python (issue 20): requirements.lock is a universal, hashed lock,
fresh with respect to pyproject.toml; `pip install tmifpe` (no extra) runs `tmifpe evaluate`
without DVC, Hydra, Dask or matplotlib; and the lock installs and the package imports on the
oldest and newest Python 3.10-3.13 found on this machine (torch aside: the Makefile installs it
from PyTorch's index; `uv pip compile --universal` resolved a torch wheel for 3.10 and 3.13)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _lock_module():
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts/lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_is_fresh_universal_and_hashed() -> None:
    lock = _lock_module()
    text = LOCK.read_text()
    assert lock.problems(text, lock.project()) == []
    # one numpy per Python: 3.10 cannot take the numpy of this machine's 3.11
    numpy = [(v, str(m)) for n, v, m, _ in lock.pins(text) if n == "numpy"]
    assert len(numpy) >= 2 and any('< "3.11"' in m for _, m in numpy), numpy
    assert all(h for *_, h in lock.pins(text))
    assert not re.search(r"^(torch|torchvision|nvidia-\S+|triton)==", text, re.M)


def test_lock_check_catches_a_stale_or_incomplete_lock() -> None:
    lock = _lock_module()
    proj = lock.project()
    text = LOCK.read_text()
    changed = {**proj, "dependencies": [*proj["dependencies"], "tabulate>=99"]}
    found = lock.problems(text, changed)
    assert any("changed since the lock" in p for p in found)
    assert any(p.startswith("tabulate>=99: pinned") for p in found)
    without_polars = re.sub(r"^polars==.*?(?=^\S)", "", text, flags=re.M | re.S)
    assert any(p.startswith("polars>=1.0: not pinned for Python 3.10")
               for p in lock.problems(without_polars, proj))


def test_pyproject_has_no_caps_copied_from_this_machine() -> None:
    proj = _lock_module().project()
    base = {re.split(r"[\[<>=!; ]", r)[0]: r for r in proj["dependencies"]}
    assert base["torch"] == "torch>=2.9" and base["torchvision"] == "torchvision>=0.24"
    for heavy in ("dvc", "dask", "distributed", "dask-jobqueue", "bokeh", "matplotlib",
                  "hydra-core"):
        assert heavy not in base, f"{heavy} is mandatory for library users"
    extras = proj["optional-dependencies"]
    assert any(r.startswith("dvc") for r in extras["pipeline"])
    assert any(r.startswith("dask-jobqueue") for r in extras["cluster"])


BLOCK = """
import sys
BLOCKED = {"dvc", "dask", "distributed", "dask_jobqueue", "hydra", "omegaconf", "matplotlib",
           "jinja2", "bokeh"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from tmifpe.cli import app
app()
"""


def test_evaluate_needs_no_pipeline_or_cluster_extra(digits_cnn, tmp_path: Path) -> None:
    """As after `pip install tmifpe`: DVC, Hydra, Dask, matplotlib, jinja2 cannot be imported."""
    import torch

    torch.jit.script(digits_cnn).save(str(tmp_path / "cnn.ts"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c", BLOCK]
    proc = subprocess.run([*run, "evaluate", "--model", str(tmp_path / "cnn.ts"), "--dataset",
                           "digits", "--n-examples", "10", "--budget", "2", "--out",
                           str(tmp_path / "out")], env=env, text=True, capture_output=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/examples.parquet").is_file()
    # the cluster commands say which extra they need, on one line
    proc = subprocess.run([*run, "prefetch", "-S", "suite=paper"], env=env, text=True,
                          capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'tmifpe[pipeline]'" in proc.stderr


def _pythons() -> list[Path]:
    """Interpreters 3.10-3.13 on this machine (PATH, pyenv), one per minor version."""
    found: dict[str, Path] = {}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{m}") for m in range(10, 14)]
    candidates += [str(p / "bin/python3") for p in sorted(pyenv.glob("3.1[0-3].*"))]
    for c in filter(None, candidates):
        proc = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() in ("3.10", "3.11", "3.12", "3.13"):
            found.setdefault(proc.stdout.strip(), Path(c))
    return [found[v] for v in sorted(found, key=lambda v: int(v.split(".")[1]))]


CHECK = """
import compileall, sys
from pathlib import Path
# torch is not installed here (PyPI's Linux wheels are the CUDA ones, GBs): the modules that do
# not need it are imported, every module is compiled for this Python
import tmifpe, tmifpe.errors, tmifpe.dispatch.clusters, tmifpe.dispatch.runlock
import dvc, dask_jobqueue, distributed, hydra, polars, pyarrow, numpy, scipy, sklearn, typer
import pydantic, yaml, rich, matplotlib, jinja2
from tmifpe.dispatch.params import compose
root = Path(sys.argv[1])
assert compileall.compile_dir(str(root / "tmifpe"), quiet=1, force=True, legacy=True)
assert "suite:" in compose(root, ["suite=paper"])
print(sys.version_info[:2], numpy.__version__)
"""


@pytest.mark.slow
def test_lock_installs_and_package_imports_on_oldest_and_newest_python(tmp_path: Path) -> None:
    pythons = _pythons()
    if len(pythons) < 2:
        pytest.skip(f"fewer than two Pythons 3.10-3.13 on this machine: {pythons}")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (it is in tmifpe[dev], installed by make)")
    for python in (pythons[0], pythons[-1]):
        venv = tmp_path / python.parent.parent.name
        subprocess.run([uv, "venv", "-q", "-p", str(python), str(venv)], check=True)
        exe = venv / "bin/python"
        proc = subprocess.run([uv, "pip", "install", "-q", "--python", str(exe),
                               "--require-hashes", "--no-deps", "-r", str(LOCK)],
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"{python}: {proc.stderr[-2000:]}"
        work = tmp_path / f"src-{venv.name}"  # the package's files, as an install has them
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
            ".venv", ".git", ".dvc", "data", "results", "models", "reports", "__pycache__",
            ".tmifpe-work"))
        shutil.copytree(ROOT / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns(
            "cache", "tmp"))
        proc = subprocess.run([str(exe), "-c", CHECK, str(work)], cwd=work, text=True,
                              capture_output=True, env={**os.environ, "PYTHONPATH": str(work)},
                              timeout=600)
        assert proc.returncode == 0, f"{python}: {proc.stderr[-3000:]}"
