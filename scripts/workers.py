#!/usr/bin/env python3
"""Run the attack cells on several workers that share one DVC cache; show what is done.

  python scripts/workers.py run [--workers 2] [--glob 'attack@*'] [--shard i/n] [--pull] [--push]
                                [--devices cuda:0,cuda:1] [--threads N] [--no-finish] [--keep]
  python scripts/workers.py status [--glob ...] [--json]
  python scripts/workers.py plan [--glob ...] [--shard i/n]     # cell names, one per line

`run`: (1) `dvc repro <upstream>` (data, models) in this workspace; (2) each worker, a copy of
this workspace under .tmifpe-work/workers/w<i> with `cache.dir` = this workspace's cache, takes
the cells still to compute one by one (`dvc repro -s <cell>`); (3) `dvc repro` here restores
every cell from the run-cache and runs only aggregate/report (with --glob/--shard:
`dvc repro <cells>`, restoring just them); --push then `dvc push --run-cache`. See docs/scaling.md.
Run from the repository root with the project's virtualenv (its bin first on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmifpe import workers as W


@dataclass
class Worker:
    name: str
    path: Path
    env: dict[str, str]
    log: Path
    results: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def dvc(self, *args: str, cell: str | None = None) -> tuple[int, str]:
        """Run dvc in this workspace, output appended to the worker's log; (code, output)."""
        with self.log.open("ab") as log:
            log.write(f"$ dvc {' '.join(args)}\n".encode())
            log.flush()
            start = log.tell()
            self.proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=self.path,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            if cell:
                state = {"cell": cell, "pid": self.proc.pid, "started": time.time()}
                (self.path / W.STATE).write_text(json.dumps(state))
            code = self.proc.wait()
        (self.path / W.STATE).unlink(missing_ok=True)
        with self.log.open("rb") as log:
            log.seek(start)
            return code, log.read().decode(errors="replace")


def work(w: Worker, up: Sequence[str], jobs: queue.Queue[str], stop: threading.Event,
         say: Callable[[str], None], pull: bool) -> None:
    """Restore the upstream outputs from the shared cache, then take cells until none is left."""
    if up:
        code, out = w.dvc("repro", *up)
        if code != 0:
            w.results["(upstream)"] = "failed"
            say(f"[{w.name}] restoring {' '.join(up)} failed, see {w.log}")
            return
        if W.RAN.findall(out):
            say(f"[{w.name}] warning: ran {', '.join(W.RAN.findall(out))} (was not in the cache)")
    while not stop.is_set():
        try:
            cell = jobs.get_nowait()
        except queue.Empty:
            return
        t0 = time.monotonic()
        code, out = w.dvc("repro", "-s", *(["--pull"] if pull else []), cell, cell=cell)
        if code != 0:
            how = "interrupted" if stop.is_set() else "failed"
        else:
            how = ("computed" if cell in W.RAN.findall(out) else
                   "restored" if cell in W.CACHED.findall(out) else "up to date")
        w.results[cell] = how
        say(f"[{w.name}] {cell}: {how} ({time.monotonic() - t0:.1f} s)")


def _devices(spec: str | None) -> list[str]:
    """'cuda:0,cuda:1' or '0,1' -> CUDA_VISIBLE_DEVICES values; 'cpu' -> '' (no GPU)."""
    if not spec:
        return []
    return ["" if d == "cpu" else d.removeprefix("cuda:") for d in spec.split(",") if d]


def _pool(repo: Path, args: argparse.Namespace, up: list[str], todo: list[str]) -> list[Worker]:
    devices = _devices(args.devices)
    n = min(args.workers or len(devices) or 2, len(todo))
    asked = W.suite_threads(repo)
    threads = args.threads or min(asked, max(1, (os.cpu_count() or 1) // n))
    if threads != asked and W.threads_tracked(repo):
        print(f"note: `threads` is a DVC param here: workers keep threads={asked}")
        threads = asked
    files, cache, opts = W.visible_files(repo), W.cache_dir(repo), W.cache_options(repo)
    root = repo / args.workdir
    pool = []
    for i in range(n):
        ws = root / f"w{i}"
        W.sync_workspace(repo, ws, files)
        W.configure_workspace(repo, ws, cache, opts)
        if threads != asked:
            W.set_threads(ws, threads)  # not a DVC param: the run-cache keys do not change
        extra = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if devices:
            extra["CUDA_VISIBLE_DEVICES"] = devices[i % len(devices)]
        pool.append(Worker(f"w{i}", ws, W.dvc_env(extra), root / f"w{i}.log"))
        note = ", ".join(f"{k}={v}" for k, v in extra.items())
        print(f"[w{i}] {ws.relative_to(repo)}: threads {threads}, {note}", flush=True)
    print(f"shared cache: {cache}", flush=True)
    jobs: queue.Queue[str] = queue.Queue()
    for cell in W.cost_order(todo):
        jobs.put(cell)
    stop, lock = threading.Event(), threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    threads_ = [threading.Thread(target=work, args=(w, up, jobs, stop, say, args.pull),
                                 daemon=True) for w in pool]
    for t in threads_:
        t.start()
    try:
        for t in threads_:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        say("interrupted: stopping the workers (finished units are kept, a rerun resumes)")
        for w in pool:
            if w.proc and w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGINT)
        for t in threads_:
            t.join(60)
        for w in pool:
            if w.proc and w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGKILL)
        raise
    return pool


def cmd_run(repo: Path, args: argparse.Namespace) -> int:
    if args.push and args.no_finish:
        raise SystemExit("--push needs the final step (the cells must be in this workspace)")
    globs = args.glob or list(W.DEFAULT_GLOBS)
    cells = W.select(W.stage_names(repo), globs)
    if args.shard:
        cells = W.shard(cells, *args.shard)
    if not cells:
        raise SystemExit(f"no stage matches {globs}")
    up = W.upstream(repo, cells)
    if up:
        code, _ = W.dvc_echo(repo, "repro", *(["--pull"] if args.pull else []), *up)
        if code != 0:
            return code
    # before classifying: a stale entry hides the run-cache from DVC (see the function)
    stale = W.drop_stale_lock_entries(repo, cells)
    if stale:
        print(f"dvc.lock: dropped stale entries (outputs not in the cache): {' '.join(stale)}")
    state = W.classify(repo, cells)
    todo = [c for c in cells if state[c] == "missing"]
    counts = {s: sum(v == s for v in state.values()) for s in ("done", "cached", "missing")}
    print(f"{len(cells)} cells: {counts['missing']} to compute, {counts['cached']} already in "
          f"the run-cache, {counts['done']} up to date here", flush=True)
    t0 = time.monotonic()
    pool = _pool(repo, args, up, todo) if todo else []
    results = {k: v for w in pool for k, v in w.results.items()}
    bad = sorted(k for k, v in results.items() if v not in ("computed", "restored", "up to date"))
    left = sorted(set(todo) - set(results))
    print(f"workers: {sum(v == 'computed' for v in results.values())} cells computed in "
          f"{time.monotonic() - t0:.1f} s" + (f"; failed: {' '.join(bad)}" if bad else ""))
    if bad or left:
        print(f"logs: {repo / args.workdir}/w*.log; not run: {' '.join(left) or '-'}")
        return 1
    if not args.no_finish:
        full = not args.shard and not args.glob
        code, out = W.dvc_echo(repo, "repro", *([] if full else cells))
        again = sorted(set(W.RAN.findall(out)) & set(cells))
        if again:
            print(f"warning: recomputed here (no run-cache entry matched): {' '.join(again)}")
        if code != 0:
            return code
        if args.push:
            code, _ = W.dvc_echo(repo, "push", "--run-cache", *([] if full else up + cells))
            if code != 0:
                return code
    if not args.keep:
        for w in pool:
            shutil.rmtree(w.path, ignore_errors=True)
    return 0


def cmd_status(repo: Path, args: argparse.Namespace) -> int:
    cells = W.select(W.stage_names(repo), args.glob or W.DEFAULT_GLOBS)
    spaces = W.workspaces(repo, args.workdir)
    try:
        outs = W.out_stages(repo)
    except Exception as err:  # DVC internals moved: report without the main workspace's locks
        print(f"note: no output map from DVC ({err})", file=sys.stderr)
        outs = {}
    run = W.running(spaces, outs)
    partial: dict[str, str] = {}
    for name, ws in spaces:
        for cell, units in W.checkpoints(ws).items():
            partial.setdefault(cell, name + ("" if units is None else f", {units} units saved"))
    try:
        dry: dict[str, str] | None = W.classify(repo, cells)
    except Exception as err:  # e.g. dvc.lock being rewritten by a running `dvc repro`
        print(f"note: DVC could not classify the cells here ({err})", file=sys.stderr)
        dry = None
    rows = {}
    for c in cells:
        if c in run:
            rows[c] = ("running", run[c] + (f", {partial[c]}" if c in partial else ""))
        elif dry is not None and dry[c] != "missing":
            rows[c] = (dry[c], "")
        elif c in partial:
            rows[c] = ("partial", partial[c] + " (a rerun resumes)")
        else:
            rows[c] = ("missing" if dry is not None else "unknown", "")
    counts = {s: sum(r[0] == s for r in rows.values())
              for s in ("done", "cached", "running", "partial", "missing", "unknown")}
    if args.json:
        print(json.dumps({"cells": {c: {"state": s, "where": w} for c, (s, w) in rows.items()},
                          "counts": counts}, indent=1))
        return 0
    width = max(map(len, cells), default=4)
    for c, (s, where) in rows.items():
        print(f"{c:<{width}}  {s:<8} {where}".rstrip())
    print(" · ".join(f"{k} {v}" for k, v in counts.items() if v) + f" (of {len(cells)})")
    if dry is None:
        print("done/cached unknown (see the note above): try again")
    return 0


def cmd_plan(repo: Path, args: argparse.Namespace) -> int:
    cells = W.select(W.stage_names(repo), args.glob or W.DEFAULT_GLOBS)
    if args.shard:
        cells = W.shard(cells, *args.shard)
    print("\n".join(cells))
    return 0


def _shard_arg(text: str) -> tuple[int, int]:
    """``i/n`` with 1 <= i <= n, as argparse type: a bad value is a one-line usage error."""
    i, sep, n = text.partition("/")
    if sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n):
        return int(i), int(n)
    raise argparse.ArgumentTypeError(f"got {text!r}, expected i/n with 1 <= i <= n (e.g. 2/3)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-C", "--repo", type=Path, default=Path("."), help="DVC repo root")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "status", "plan"):
        p = sub.add_parser(name)
        p.add_argument("--glob", action="append",
                       help="stage-name glob, repeatable "
                            "(default: attack@*, autoattack@*, diagnostics@*, ablations@*)")
        p.add_argument("--workdir", type=Path, default=W.WORKDIR, help="worker copies")
        if name == "status":
            p.add_argument("--json", action="store_true")
        else:
            p.add_argument("--shard", type=_shard_arg,
                           help="i/n: this machine's share of the selected cells")
        if name == "run":
            p.add_argument("--workers", type=int, help="default: one per device, else 2")
            p.add_argument("--devices", help="e.g. cuda:0,cuda:1 (CUDA_VISIBLE_DEVICES each)")
            p.add_argument("--threads", type=int, help="per worker (default: min(params, "
                           "cores / workers))")
            p.add_argument("--pull", action="store_true",
                           help="dvc repro --pull: take upstream/cells from the remote run-cache")
            p.add_argument("--push", action="store_true", help="then dvc push --run-cache")
            p.add_argument("--no-finish", action="store_true",
                           help="leave the cells in the run-cache, no dvc repro here afterwards")
            p.add_argument("--keep", action="store_true", help="keep the worker copies")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / ".dvc").is_dir():
        raise SystemExit(f"{repo} is not a DVC repository root")
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: stop the workers, keep checkpoints
    try:
        return {"run": cmd_run, "status": cmd_status, "plan": cmd_plan}[args.cmd](repo, args)
    except W.WorkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
