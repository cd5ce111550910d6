"""Several DVC workspaces sharing one cache, so the attack cells run concurrently (docs/scaling.md).

Nothing here decides what DVC would decide: each cell runs as ``dvc repro -s <cell>`` in a worker
copy of the workspace whose ``cache.dir`` is the main workspace's cache, so its outputs and its
run-cache entry land in the shared cache. A later ``dvc repro`` in the main workspace restores the
cells from the run-cache ("Stage ... is cached - skipping run") and runs only what follows them.
Each workspace has its own ``.dvc/tmp`` (repo lock, rwlock, state), so workers never contend for a
lock; the queue below only hands every selected cell to exactly one worker.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

DEFAULT_GLOBS = ("attack@*", "autoattack@*", "diagnostics@*", "ablations@*")
WORKDIR = Path(".tmifpe-work/workers")
RAN = re.compile(r"Running stage '([^']+)'")
CACHED = re.compile(r"Stage '([^']+)' is cached - skipping run")
MANIFEST = ".tmifpe-worker-files"  # files copied from the main workspace (stale ones get removed)
STATE = ".tmifpe-worker.json"  # the cell a worker is running: {"cell", "pid", "started"}
# resumable work of tmifpe/pipeline/cell.py and tmifpe/pipeline/autoattack_cell.py (their WORK_ROOT)
CHECKPOINTS = ".tmifpe-work/checkpoints"
AA_STATE = ".tmifpe-work/autoattack"


class WorkerError(RuntimeError):
    pass


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This interpreter's bin first on PATH (stages run ``python -m stages.<name>``)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONHASHSEED", "0")  # as `make repro`
    env.update(extra or {})
    return env


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(),
                          text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise WorkerError(f"`dvc {' '.join(args)}` failed in {repo}:\n{proc.stdout}{proc.stderr}")
    return proc


def dvc_echo(repo: Path, *args: str) -> tuple[int, str]:
    """Run dvc in ``repo`` showing its output as it comes; return (exit code, output)."""
    print(f"$ dvc {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


def stage_names(repo: Path) -> list[str]:
    return dvc(repo, "stage", "list", "--name-only").stdout.split()


def select(names: Iterable[str], globs: Sequence[str] = DEFAULT_GLOBS) -> list[str]:
    """Stage names matching any glob (fnmatch, as ``dvc repro --glob``), sorted."""
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs))


def cost_order(cells: Iterable[str]) -> list[str]:
    """Longest first: the trailing ``-<N>`` (the budget) as cost guess, unknown costs first."""
    def key(name: str) -> tuple[float, str]:
        tail = name.rsplit("-", 1)[-1]
        return (-int(tail) if tail.isdigit() else float("-inf"), name)
    return sorted(cells, key=key)


def shard(cells: Iterable[str], index: int, count: int) -> list[str]:
    """Shard ``index`` (1-based) of ``count``: round-robin over the cost order (balanced mix)."""
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: need 1 <= i <= n")
    return sorted(cost_order(cells)[index - 1::count])


def upstream(repo: Path, cells: Sequence[str]) -> list[str]:
    """Stages the cells depend on, transitively (from ``dvc dag --mermaid``), cells excluded."""
    out = dvc(repo, "dag", "--mermaid").stdout
    label = dict(re.findall(r'(node\d+)\["([^"]+)"\]', out))
    deps: dict[str, set[str]] = {}
    for a, b in re.findall(r"(node\d+)-->(node\d+)", out):  # b depends on a
        deps.setdefault(label[b], set()).add(label[a])
    seen: set[str] = set()
    todo = list(cells)
    while todo:
        for dep in deps.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return sorted(seen - set(cells))


def classify(repo: Path, cells: Sequence[str]) -> dict[str, str]:
    """done (up to date here) / cached (``dvc repro`` would restore it) / missing.

    Asked of DVC in-process with the checks `dvc status` and `dvc repro` make: stage, deps and
    outs against dvc.lock; then the deps hashed and `StageCache.restore(dry=True)` (a run-cache
    entry whose outputs are in the cache). `dvc repro --dry` cannot tell the latter: it does not
    hash the deps, so it never finds a run-cache entry. Read-only and without the repo lock
    (`Stage.changed` asserts it is held), so a DVC command running here is not disturbed.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # not its "is cached - skipping" lines
    state: dict[str, str] = {}
    with Repo(os.fspath(repo)) as r:
        stages = {s.addressing: s for s in r.index.stages}
        for cell in cells:
            stage = stages[cell]
            try:
                if not (stage.changed_stage() or any(d.status() for d in stage.deps)
                        or any(o.status() for o in stage.outs)):
                    state[cell] = "done"
                    continue
                stage.save_deps()  # hashes in memory (nothing is written)
                r.stage_cache.restore(stage, dry=True)
                state[cell] = "cached"
            except DvcException:  # RunCacheNotFoundError, missing deps
                state[cell] = "missing"
    return state


# ---- worker workspaces ---------------------------------------------------------------------

def cache_dir(repo: Path) -> Path:
    path = Path(dvc(repo, "cache", "dir").stdout.strip())
    return path if path.is_absolute() else (repo / ".dvc" / path).resolve()


def drop_stale_lock_entries(repo: Path, cells: Sequence[str]) -> list[str]:
    """Remove from dvc.lock the entries of ``cells`` whose outputs are not in the cache.

    Why: when a stage's dvc.lock entry matches its current deps and params (e.g. a dvc.lock
    committed to git, from a run whose outputs this clone never had), `dvc repro` tries to
    restore *that* entry, finds its outputs missing and recomputes the stage, without looking
    at the run-cache entry a worker made (and `classify` cannot see that entry either). Without
    the stale entry DVC takes the run-cache path. Only entries with an output hash missing from
    the cache are dropped; returns their names."""
    lock = repo / "dvc.lock"
    if not lock.exists():
        return []
    doc = yaml.safe_load(lock.read_text()) or {}
    stages = doc.get("stages") or {}
    cache = cache_dir(repo) / "files" / "md5"

    def in_cache(out: dict) -> bool:  # an output recorded without a hash cannot be judged
        md5 = str(out.get("md5") or "")
        return not md5 or (cache / md5[:2] / md5[2:]).exists()

    stale = [c for c in cells if c in stages
             and not all(in_cache(o) for o in stages[c].get("outs") or [])]
    if stale:
        for c in stale:
            del stages[c]
        tmp = lock.with_name(".dvc.lock.tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, lock)
    return stale


def cache_options(repo: Path) -> dict[str, str]:
    """cache.type / cache.shared of the main workspace (the worker must link the same way)."""
    out = dvc(repo, "config", "--list", check=False).stdout
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k[6:]: v for k, v in pairs if k in ("cache.type", "cache.shared")}


def visible_files(repo: Path) -> list[str]:
    """Files as they are in the main workspace (uncommitted edits included), DVC outputs not."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    files = {f for f in out.split("\0") if f} | {"dvc.lock"}
    return sorted(f for f in files if os.path.lexists(repo / f))


def _copy(src: Path, dst: Path) -> None:
    link = os.readlink(src) if src.is_symlink() else None
    if link is not None and dst.is_symlink() and os.readlink(dst) == link:
        return
    if link is None and dst.is_file() and not dst.is_symlink():
        a, b = src.stat(), dst.stat()
        if (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns):
            return
    if os.path.lexists(dst):
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link is not None:
        os.symlink(link, dst)
    else:
        shutil.copy2(src, dst)


def sync_workspace(repo: Path, ws: Path, files: Sequence[str]) -> None:
    """Make ``ws`` hold exactly the main workspace's files; its outputs/checkpoints are kept."""
    manifest = ws / MANIFEST
    old = set(manifest.read_text().split("\0")) if manifest.exists() else set()
    for rel in old - set(files) - {""}:
        if os.path.lexists(ws / rel) and not (ws / rel).is_dir():
            (ws / rel).unlink()
    for rel in files:
        _copy(repo / rel, ws / rel)
    manifest.write_text("\0".join(files))


def configure_workspace(repo: Path, ws: Path, cache: Path, options: dict[str, str]) -> None:
    """Local config: no git (the copy has none), the shared cache and its link options. The
    checkpoint dirs link to the main workspace's: a cell resumes whoever runs it next."""
    lines = ["[core]", "    no_scm = true", "[cache]", f"    dir = {cache}"]
    lines += [f"    {k} = {v}" for k, v in options.items()]
    (ws / ".dvc").mkdir(exist_ok=True)
    (ws / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")
    for rel in (CHECKPOINTS, AA_STATE):
        (repo / rel).mkdir(parents=True, exist_ok=True)
        if not (ws / rel).is_symlink():
            shutil.rmtree(ws / rel, ignore_errors=True)
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            (ws / rel).symlink_to(repo / rel)


def threads_tracked(repo: Path) -> bool:
    """Whether a stage lists ``threads`` as a DVC param (then overriding it changes the cells)."""
    doc = yaml.safe_load((repo / "dvc.yaml").read_text()) or {}
    keys: list[str] = []
    for stage in (doc.get("stages") or {}).values():
        for item in stage.get("params") or []:
            keys += [item] if isinstance(item, str) else [k for v in item.values() for k in v]
    return any(k in ("active", "active.threads") for k in keys)


def suite_threads(repo: Path) -> int:
    active = (yaml.safe_load((repo / "params.yaml").read_text()) or {}).get("active")
    return int(active.get("threads", 1)) if isinstance(active, dict) else 1


def set_threads(ws: Path, threads: int) -> None:
    """``threads`` of the worker's active suite (not a DVC param: run-cache keys are unchanged)."""
    path = ws / "params.yaml"
    doc = yaml.safe_load(path.read_text())
    active = doc.get("active") if isinstance(doc, dict) else None
    if isinstance(active, dict) and active.get("threads") != threads:
        active["threads"] = threads  # `active` is the suite itself (YAML alias): both change
        path.write_text(yaml.safe_dump(doc, sort_keys=False))


# ---- what is running where (for `status`) -----------------------------------------------------

def alive(pid: int | str | None) -> bool:
    try:
        if int(pid or 0) > 0:
            os.kill(int(pid or 0), 0)
            return True
    except PermissionError:
        return True
    except (OSError, ValueError):
        pass
    return False


def workspaces(repo: Path, workdir: Path = WORKDIR) -> list[tuple[str, Path]]:
    """The main workspace and the worker copies under ``workdir``."""
    root = repo / workdir
    copies = sorted(p for p in root.glob("w*") if (p / ".dvc").is_dir()) if root.is_dir() else []
    return [("main", repo), *((p.name, p) for p in copies)]


def out_stages(repo: Path) -> dict[str, str]:
    """Output path (relative to the workspace) -> stage name, from DVC's index of the repo."""
    from dvc.repo import Repo

    with Repo(os.fspath(repo)) as r:
        return {os.path.normpath(o.def_path): s.addressing
                for s in r.index.stages for o in s.outs}


def running(spaces: Sequence[tuple[str, Path]], outs: dict[str, str]) -> dict[str, str]:
    """Stages a live DVC process is running: the outputs it write-locks (``.dvc/tmp/rwlock``),
    plus the cell a worker of ours launched (its state file, for the start time)."""
    found: dict[str, str] = {}
    for name, ws in spaces:
        try:
            lock = json.loads((ws / ".dvc" / "tmp" / "rwlock").read_text())
        except (OSError, ValueError):
            lock = {}
        for path, info in (lock.get("write") or {}).items():
            stage = outs.get(os.path.normpath(os.path.relpath(path, ws)))
            if stage and alive(info.get("pid")):
                found[stage] = f"{name}, dvc pid {info['pid']}"
        try:
            state = json.loads((ws / STATE).read_text())
        except (OSError, ValueError):
            continue
        if alive(state.get("pid")):
            minutes = (time.time() - state["started"]) / 60
            found[state["cell"]] = f"{name}, dvc pid {state['pid']}, {minutes:.1f} min"
    return found


def checkpoints(ws: Path) -> dict[str, int | None]:
    """Cells with resumable work saved in ``ws``: units done (None: an AutoAttack state file)."""
    found: dict[str, int | None] = {}
    for d in (ws / CHECKPOINTS).glob("*"):
        m = re.fullmatch(r"(.+)-[0-9a-f]{16}", d.name)
        if m and d.is_dir():
            found[f"attack@{m[1]}"] = len(list(d.glob("*.pt")))
    for f in (ws / AA_STATE).glob("*.pt"):
        m = re.fullmatch(r"(.+)-[0-9a-f]{16}\.pt", f.name)
        if m:
            found[f"autoattack@{m[1]}"] = None
    return found
