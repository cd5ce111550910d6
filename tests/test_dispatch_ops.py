"""Operability of ``tmifpe run``/``prefetch``/``status`` (issue 20), fast part: flag checks and
exit codes, the SLURM job script against a user's jobqueue.yaml, worker lifetimes below the
walltime, a run that never waits forever, one run per work directory, the NFS-safe run log, and
params composed exactly as ``dvc exp run -S``. Real processes (dask scheduler, dvc, git) where
the behaviour is theirs; the slow end-to-end runs are in tests/test_dispatch_lifetime.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmifpe.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _invoke(args: list[str], cwd: Path) -> object:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(old)


def _one_line_error(result: object, code: int, *words: str) -> str:
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.exit_code == code, (result.exit_code, result.output)  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "ERROR:" not in err and "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize(("args", "words"), [
    (["--workers", "0"], ["--workers 0", "at least 1"]),
    (["--gpus", "-1"], ["--gpus -1"]),
    (["--slurm", "--jobs", "0"], ["--jobs 0", "at least 1"]),
    (["--slurm", "--scheduler", "tcp://127.0.0.1:1"], ["--slurm and --scheduler"]),
    (["--slurm", "--workers", "3"], ["--workers/--gpus", "--slurm"]),
    (["--partition", "gpu"], ["--partition", "only apply with --slurm"]),
    (["--slurm", "--jobs", "2", "--min-jobs", "3"], ["--min-jobs 3", "above --jobs 2"]),
    (["--scheduler", "tcp://127.0.0.1:1", "--lifetime", "1 minute"], ["--lifetime"]),
    (["--gpu"], ["--gpu is for --scheduler"]),
    (["--retries", "-1"], ["--retries -1"]),
    (["--no-worker-timeout", "0"], ["--no-worker-timeout 0"]),
    (["--lifetime", "10min"], ["--lifetime '10min'", "duration"]),
    (["-S", "suite.budgets"], ["-S 'suite.budgets'", "key=value"]),
])
def test_bad_flag_combinations_are_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                       words: list[str]) -> None:
    """Checked before anything runs (here not even a repository is needed)."""
    _one_line_error(_invoke(["run", *args], tmp_path), 2, *words)
    assert not (tmp_path / ".tmifpe-work").exists()


def test_status_failures_exit_1_on_one_line_even_with_empty_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tmifpe.dispatch.cli as dcli

    # real dvc outside a DVC repository: its "ERROR: ..." is not echoed as "error: ERROR: ..."
    err = _one_line_error(_invoke(["status"], tmp_path), 1, "dvc stage list")
    assert "not inside of a DVC repository" in err or "failed" in err
    # a dvc that dies without a word (killed): no IndexError
    monkeypatch.setattr(dcli, "dvc", lambda *a, **k: subprocess.CompletedProcess(a, -9, "", ""))
    _one_line_error(_invoke(["status"], tmp_path), 1, "no message")


def test_debug_prints_the_traceback_of_a_runtime_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tmifpe.dispatch.cli as dcli

    def broken(*_a: object, **_k: object) -> None:
        raise KeyError("stage")

    monkeypatch.setenv("TMIFPE_DEBUG", "0")  # restored after the test (--debug sets it)
    monkeypatch.setattr(dcli, "dvc", broken)
    _one_line_error(_invoke(["status"], tmp_path), 1, "KeyError", "--debug")
    result = _invoke(["--debug", "status"], tmp_path)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "broken" in result.stderr


def test_cuda_out_of_memory_names_the_batch_size_to_lower(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    import typer

    from tmifpe.errors import UserError, handled

    monkeypatch.delenv("TMIFPE_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as exit_info, handled(batch_option="--batch-size"):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lower --batch-size" in err and "2.00 GiB" in err
    with pytest.raises(typer.Exit) as exit_info, handled():
        raise UserError("--eps -1: expected a number > 0")
    assert exit_info.value.exit_code == 2
    with pytest.raises(typer.Exit) as exit_info, handled():
        raise RuntimeError("a real bug")  # not a user error any more: exit 1
    assert exit_info.value.exit_code == 1


# --- SLURM: lifetimes, jobqueue.yaml ----------------------------------------------------------

def test_worker_lifetime_plus_stagger_ends_before_the_walltime() -> None:
    from tmifpe.dispatch.clusters import lifetimes, walltime_seconds
    from tmifpe.errors import UserError

    assert walltime_seconds("04:00:00") == 14400
    assert walltime_seconds("1-00:00:00") == 86400
    assert walltime_seconds("30:00") == 1800
    for w in (900, 1800, 3600, 14400, 86400 * 2):
        life, stagger = lifetimes(w)
        assert 0 < stagger < life and life + stagger <= w - 300
    with pytest.raises(UserError, match="too short"):
        lifetimes(600)
    with pytest.raises(UserError, match="not"):
        walltime_seconds("4h")


JOBQUEUE = """
jobqueue:
  slurm:
    queue: site_gpu
    account: lab42
    walltime: "02:00:00"
    memory: 64GB
    job-extra-directives: ["--qos=long", "--constraint=a100"]
    job-script-prologue: ["module load cuda/12.4"]
    worker-extra-args: ["--death-timeout", "120"]
    local-directory: /scratch/$USER
    interface: lo
"""

SCRIPT = """
import json, sys
from tmifpe.dispatch.clusters import SlurmOptions, slurm_cluster, start_slurm
opts = SlurmOptions(**json.loads(sys.argv[1]))
cluster = slurm_cluster(opts, threads=8, dashboard=":0")
try:
    start_slurm(cluster, opts)
    print(cluster.job_script())
finally:
    cluster.close()
"""


def _job_script(tmp_path: Path, **opts: object) -> list[str]:
    conf = tmp_path / "dask"
    conf.mkdir(exist_ok=True)
    (conf / "jobqueue.yaml").write_text(textwrap.dedent(JOBQUEUE))
    env = {**os.environ, "DASK_CONFIG": str(conf), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(opts)], env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_slurm_job_script_keeps_the_sites_jobqueue_yaml(tmp_path: Path) -> None:
    """Options not given on the command line come from the user's jobqueue.yaml (DASK_CONFIG):
    queue, account, walltime, memory, QOS/constraints, module loads, interface, local directory;
    ours are added to its lists; the worker lifetime is below the configured walltime."""
    lines = _job_script(tmp_path, max_jobs=8, gpus_per_job=2)
    for directive in ("#SBATCH -p site_gpu", "#SBATCH -A lab42", "#SBATCH -t 02:00:00",
                      "#SBATCH --qos=long", "#SBATCH --constraint=a100", "#SBATCH --gres=gpu:2",
                      "#SBATCH --cpus-per-task=16"):
        assert directive in lines, lines
    assert "module load cuda/12.4" in lines and "export OMP_NUM_THREADS=8" in lines
    command = lines[-1]
    for arg in ("--nworkers 2", "--nthreads 1", "--resources GPU=1", "--interface lo",
                "--death-timeout 120", "--local-directory /scratch/$USER", "--lifetime",
                "--lifetime-stagger"):
        assert arg in command, command
    parts = command.split()
    life = int(parts[parts.index("--lifetime") + 1].removesuffix("s"))
    stagger = int(parts[parts.index("--lifetime-stagger") + 1].removesuffix("s"))
    assert life + stagger <= 7200 - 300


def test_slurm_command_line_wins_over_jobqueue_yaml(tmp_path: Path) -> None:
    lines = _job_script(tmp_path, max_jobs=4, partition="short", walltime="00:30:00",
                        interface="eth0", gpus_per_job=0)
    assert "#SBATCH -p short" in lines and "#SBATCH -t 00:30:00" in lines
    assert "#SBATCH -A lab42" in lines and "#SBATCH --qos=long" in lines  # still from the yaml
    assert not any("--gres" in ln for ln in lines)
    command = lines[-1]
    assert "--interface eth0" in command and "--resources" not in command
    parts = command.split()
    assert int(parts[parts.index("--lifetime") + 1].removesuffix("s")) < 1800 - 300


def test_slurm_cluster_adapts_between_min_and_max_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapt`` (not a fixed ``scale``): dask-jobqueue replaces jobs that end at walltime."""
    from tmifpe.dispatch.clusters import SlurmOptions, start_slurm

    calls: list[dict[str, int]] = []

    class Recorder:
        def adapt(self, **kw: int) -> None:
            calls.append(kw)

        def scale(self, **kw: int) -> None:  # pragma: no cover - must not be used
            raise AssertionError("fixed scale")

    start_slurm(Recorder(), SlurmOptions(max_jobs=16, min_jobs=2))
    assert calls == [{"minimum_jobs": 2, "maximum_jobs": 16}]


# --- a run never waits forever; one run per work dir ------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_worker_for_n_minutes_is_a_clear_failure(tmp_path: Path) -> None:
    from test_dispatch import DISPATCH, _env, _make_repo

    repo = _make_repo(tmp_path / "repo")
    port = _free_port()
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", ":0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([*DISPATCH, "run", "--scheduler", f"tcp://127.0.0.1:{port}",
                               "--no-worker-timeout", "0.1", "--no-finish"],
                              cwd=repo, env=_env(), text=True, capture_output=True, timeout=240)
        took = time.monotonic() - t0
    finally:
        sched.terminate()
        sched.wait(timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "no Dask worker for 0.1 min" in proc.stderr and "Traceback" not in proc.stderr
    assert took < 120
    assert not (repo / ".tmifpe-work" / "run.lock").exists()  # released


def test_a_second_run_on_the_same_work_dir_is_refused(tmp_path: Path) -> None:
    from tmifpe.dispatch.runlock import acquire, release

    lock = acquire(tmp_path / "work")  # a live run (this process)
    try:
        result = _invoke(["run", "--work-dir", str(tmp_path / "work")], tmp_path)
        _one_line_error(result, 2, "another tmifpe run uses", f"pid {os.getpid()}", "--work-dir")
    finally:
        release(lock)
    # a lock left by a run that died on this host is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "work" / "run.lock").mkdir()
    (tmp_path / "work" / "run.lock" / "owner.json").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "time": time.time()}))
    lock = acquire(tmp_path / "work")
    assert json.loads((lock / "owner.json").read_text())["pid"] == os.getpid()
    release(lock)


def test_success_removes_every_workspace_of_the_run_and_only_those(tmp_path: Path) -> None:
    from tmifpe.dispatch.task import RunSpec, remove_workspaces

    spec = RunSpec(repo=".", commit="a" * 40, work_dir=str(tmp_path), threads=1)
    base = tmp_path / "workspaces"
    keep = base / f"cpu0-{'b' * 12}"  # another commit's (another run's) workspace
    gone = [base / f"SLURMCluster-3-0-{'a' * 12}", base / f"cpu1-{'a' * 12}",
            base / f".cpu1-{'a' * 12}.node7-123-abcd.tmp"]
    for p in [keep, *gone]:
        (p / ".dvc").mkdir(parents=True)
    assert sorted(remove_workspaces(spec)) == sorted(gone)
    assert [p.name for p in base.iterdir()] == [keep.name]


def test_run_log_records_are_written_under_a_lock(tmp_path: Path) -> None:
    """NFS: no reliance on O_APPEND; a writer waits for the lock another holds."""
    import fcntl

    log = tmp_path / "runs.jsonl"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    env = {**os.environ, "TMIFPE_RUN_LOG": str(log), "DVC_STAGE": "attack@x",
           "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", "from tmifpe.pipeline.runlog import "
                               "record_run; record_run('start')"], env=env)
    try:
        time.sleep(1.5)
        assert writer.poll() is None and log.read_text() == ""  # blocked on the lock
    finally:
        os.close(fd)  # releases the lock
    assert writer.wait(timeout=30) == 0
    from tmifpe.pipeline.runlog import read_runs

    assert [r["stage"] for r in read_runs(log)] == ["attack@x"]


# --- params composed as `dvc exp run -S` --------------------------------------------------------

def test_run_composes_params_exactly_as_dvc_exp_run_set_param(tmp_path: Path) -> None:
    """Against DVC's own composition (dvc.utils.hydra.compose_and_dump, what `dvc exp run -S`
    calls), run in a fresh process as DVC would be."""
    from tmifpe.dispatch.params import compose, overrides_of

    overrides = overrides_of(["suite.budgets=[10,20]", "suite.threads=3"], "paper")
    assert overrides[0] == "suite=paper"
    ours = compose(ROOT, overrides)
    out = tmp_path / "params.yaml"
    code = ("import sys, json; from dvc.utils.hydra import compose_and_dump; "
            "compose_and_dump(sys.argv[1], sys.argv[2], None, 'config', sys.argv[3], "
            "json.loads(sys.argv[4]))")
    subprocess.run([sys.executable, "-c", code, str(out), str(ROOT / "conf"), str(ROOT),
                    json.dumps(overrides)], check=True, cwd=tmp_path, timeout=300)
    assert ours == out.read_text()
    assert "threads: 3" in ours and "budgets:\n  - 10\n  - 20" in ours


def test_a_bad_override_is_a_user_error(tmp_path: Path) -> None:
    from tmifpe.dispatch.params import compose
    from tmifpe.errors import UserError

    with pytest.raises(UserError, match="suite=nope"):
        compose(ROOT, ["suite=nope"])
