"""The DVC pipeline end to end in a temporary git + DVC repository with a tiny grid.

Asserts what users rely on: a cold `dvc repro` runs every stage, a second one runs none, editing
one loss module re-runs exactly that loss's cells plus aggregate/report, a new budget runs only
the new cells, a removed loss leaves no stale rows in the aggregate, bad params fail cleanly.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from support.repo import commit_all, copy_project, init_repo
from support.repo import dvc as _dvc
from support.repo import env as _env
from support.repo import ran as _ran
from support.repo import run as _run
from support.suites import write_params

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]

TINY = {
    "name": "tiny",
    "device": "cpu",
    "threads": 1,
    "hash_seed": 0,
    "data_dir": "data/raw",
    "datasets": {"digits": {"source": "digits", "n_examples": 40, "eps": 0.2,
                            "test_size": 0.2, "split_seed": 0}},
    "model_zoo": {"digits_std": {"source": "trained", "dataset": "digits", "epochs": 3,
                                 "lr": 0.003, "seed": 0, "arch": "small_cnn",
                                 "batch_size": 64, "adv_eps": 0.0, "adv_steps": 7}},
    "models": ["digits_std"],
    "losses": ["ce", "tmifpe"],
    "budgets": [5],
    "precisions": {"bf16": {"max_budget": 5, "n_targets": 2, "n_examples": None},
                   "fp32": {"max_budget": None, "n_targets": 2, "n_examples": None}},
    "attack": {"schedule": "cosine", "momentum": 0.75, "restarts": 1, "batch_size": 25,
               "tstar_rule": "coef", "seed": 0},
    "autoattack": {"seed": 0, "batch_size": 40},
    "ablations": {"budgets": [3], "precisions": ["fp32"]},
    "fast": {"phases": [{"kind": "untargeted", "steps": 3, "loss": "tmifpe", "n_targets": 0,
                         "restarts": 1}],
             "guard_queries": 10, "guard_p_init": 0.8, "tstar_rule": "coef", "split_seed": 0,
             "tuning_fraction": 0.5, "batch_size": 500, "seed": 0},
}


def _write_params(repo: Path, suite: dict) -> None:
    write_params(repo / "params.yaml", suite)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("pipeline"))
    # the default suite of this copy is TINY, so that `dvc exp run` composes it
    (repo / "conf/suite/default.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    _write_params(repo, TINY)
    init_repo(repo, hydra=True)
    commit_all(repo, "sources")
    return repo


def test_cold_repro_runs_every_stage_then_nothing(repo: Path) -> None:
    first = _dvc(repo, "repro")
    stages = set(_dvc(repo, "stage", "list", "--name-only").stdout.split())
    assert _ran(first) == stages
    assert {"attack@digits_std-ce", "attack@digits_std-tmifpe", "aggregate", "report"} <= stages
    second = _dvc(repo, "repro")
    assert _ran(second) == set()
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}
    # git sees only the lock and the uncached outputs (the report holds wall-clock times)
    porcelain = _run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout
    assert {line[3:] for line in porcelain.splitlines()} == {
        "dvc.lock", "results/metrics.json", "reports/index.html", "reports/tables.tex",
        "reports/tables_standalone.tex", "reports/figures/iterations.pdf",
        "reports/figures/precision.pdf", "reports/figures/cost.pdf"}, porcelain
    frame = pl.read_parquet(repo / "results/attack/digits_std/ce/b5.parquet")
    assert set(frame["precision"]) == {"bf16", "fp32"}
    assert set(frame["targeted"]) == {False, True}
    assert frame.height == 2 * 2 * 40


def test_editing_one_loss_reruns_only_its_cells(repo: Path) -> None:
    _dvc(repo, "repro")
    path = repo / "tmifpe/losses/ce/loss.py"
    original = path.read_text()
    path.write_text(original + "\n# touched by test\n")
    try:
        proc = _dvc(repo, "repro")
    finally:
        path.write_text(original)
    # the diagnostics measure every loss gradient, the ablations run CE: both depend on ce.py
    assert _ran(proc) == {"attack@digits_std-ce", "diagnostics@digits_std",
                          "ablations@digits_std", "aggregate", "report"}
    _dvc(repo, "repro")  # back to the original file


def test_adding_a_budget_attacks_only_the_new_budget(repo: Path) -> None:
    """An attack stage holds every budget of its model × loss: adding a budget re-runs the
    stages, which rebuild the old budget from its kept units (byte-identical, no attack)."""
    _dvc(repo, "repro")
    # run the attack stages here (not restored from DVC's run-cache, which restores outputs,
    # not units): their units are then kept for the current inputs
    _dvc(repo, "repro", "-f", "-s", "attack@digits_std-ce", "attack@digits_std-tmifpe")
    old = (repo / "results/attack/digits_std/ce/b5.parquet").read_bytes()
    suite = json.loads(json.dumps(TINY))
    suite["budgets"] = [5, 8]
    _write_params(repo, suite)
    try:
        proc = _dvc(repo, "repro")
    finally:
        _write_params(repo, TINY)
    assert _ran(proc) == {"attack@digits_std-ce", "attack@digits_std-tmifpe",
                          "aggregate", "report"}
    for loss in ("ce", "tmifpe"):
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                 if f"attack digits_std-{loss}-" in ln
                 and " points " in ln]
        old_units = [ln for ln in lines if f"digits_std-{loss}-5 " in ln]
        new_units = [ln for ln in lines if f"digits_std-{loss}-8 " in ln]
        assert old_units and all("(resumed)" in ln for ln in old_units), lines
        assert new_units and not any("(resumed)" in ln for ln in new_units), lines
    assert (repo / "results/attack/digits_std/ce/b5.parquet").read_bytes() == old
    # the new cells only ran fp32 (bf16 is capped at budget 5)
    frame = pl.read_parquet(repo / "results/attack/digits_std/ce/b8.parquet")
    assert set(frame["precision"]) == {"fp32"}


def test_removing_a_loss_leaves_no_stale_results(repo: Path) -> None:
    _dvc(repo, "repro")  # the full tiny grid first (a no-op after the tests above)
    assert (repo / "results/attack/digits_std/tmifpe/b5.parquet").exists()
    suite = json.loads(json.dumps(TINY))
    suite["losses"] = ["ce"]
    _write_params(repo, suite)
    try:
        _dvc(repo, "repro")
        robust = pl.read_parquet(repo / "results/aggregate/robust_accuracy.parquet")
        metrics = json.loads((repo / "results/metrics.json").read_text())
    finally:
        _write_params(repo, TINY)
    assert set(robust["loss"]) == {"ce"}
    # no loss entry left for T-MIFPE (the fast preset, named after its loss, is not a loss entry)
    per_model = [{k: v for k, v in entry.items() if k != "fast"}
                 for name, suite_metrics in metrics.items()
                 if isinstance(suite_metrics, dict) and name != "fast_validation"
                 for entry in suite_metrics.values() if isinstance(entry, dict)]
    assert per_model and "tmifpe" not in json.dumps(per_model)
    # the stale file is still on disk: the aggregate ignored it because the grid does not list it
    assert (repo / "results/attack/digits_std/tmifpe/b5.parquet").exists()


def test_bad_params_fail_before_work_with_every_problem(repo: Path) -> None:
    suite = json.loads(json.dumps(TINY))
    suite["losses"] = ["ce", "focal"]
    suite["budgets"] = [5, 5]
    suite["datasets"]["digits"]["eps"] = 0
    suite["precisions"]["fp8"] = {"n_targets": 1}
    _write_params(repo, suite)
    try:
        proc = _run(repo, sys.executable, "-m", "stages.attack", "--model", "digits_std",
                    "--loss", "ce", check=False)
    finally:
        _write_params(repo, TINY)
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    for needle in ("'focal'", "fp8", "duplicate value 5", "datasets.digits.eps"):
        assert needle in err, err


def test_sigkill_then_rerun_resumes_and_is_byte_identical(repo: Path) -> None:
    _dvc(repo, "repro")
    out = repo / "results/attack/digits_std/tmifpe/b5.parquet"
    reference = out.read_bytes()
    out.unlink()
    cmd = [sys.executable, "-m", "stages.attack", "--model", "digits_std", "--loss", "tmifpe"]
    work = repo / ".tmifpe-work/checkpoints"
    shutil.rmtree(work)  # the units the repro kept: this run starts from nothing
    proc = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    units: list[Path] = []
    try:
        while proc.poll() is None and len(units) < 2:
            units = list(work.glob("digits_std-tmifpe-5-*/*.pt"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert units and not out.exists()
    resumed = _run(repo, *cmd)
    assert resumed.stderr.count("(resumed)") >= len(units)
    assert out.read_bytes() == reference
    # the units are kept for later runs of the stage (one key: the cell's inputs did not change)
    assert len(list(work.glob("digits_std-tmifpe-5-*"))) == 1


def test_exp_run_set_param_runs_only_the_new_cells(repo: Path) -> None:
    """`dvc exp run -S` (Hydra composition of params.yaml) adds budget 2: only its cells and the
    summaries run, and `dvc params diff` shows the suite change once."""
    _dvc(repo, "repro")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "tiny grid")
    before = (repo / "params.yaml").read_text()
    try:
        proc = _dvc(repo, "exp", "run", "-S", "suite.budgets=[5,2]")
        diff = json.loads(_dvc(repo, "params", "diff", "--json").stdout)["params.yaml"]
        frame = pl.read_parquet(repo / "results/attack/digits_std/ce/b2.parquet")
    finally:
        (repo / "params.yaml").write_text(before)
        _run(repo, "git", "checkout", "--", "dvc.lock")
    assert _ran(proc) == {"attack@digits_std-ce", "attack@digits_std-tmifpe",
                          "aggregate", "report"}
    assert [k for k in diff if k.startswith("suite.")] == ["suite.budgets"]
    assert {k.split(".")[1] for k in diff if k.startswith("grid.")} == {"precisions"}
    assert set(frame["precision"]) == {"bf16", "fp32"}  # bf16 is capped at 5 >= 2
