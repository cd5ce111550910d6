"""The dependency graph DVC sees: each stage depends on its own items only.

A temporary git + DVC copy of the project with the default suite plus a second dataset and model
(``digits_b``). Outputs are placeholder files recorded with ``dvc commit -f`` (nothing is
computed: the dependency graph, not the stages, is under test), then each edit is checked with
``dvc status --json``. ``dvc status`` lists the stages whose own deps or params changed; stages
that depend only on *outputs* of those (e.g. aggregate/report on results/attack) re-run when
those outputs change during ``dvc repro`` and are not listed here.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from support.repo import ROOT, commit_all, copy_project, dvc, init_repo, run

from tmifpe.losses import LossName
from tmifpe.pipeline.code_deps import PER_ITEM_LOSS, code_files, dvc_code_deps
from tmifpe.pipeline.config import load_params, parse_suite
from tmifpe.pipeline.suite_grid import derive_grid

slow = pytest.mark.slow


def test_no_loss_package_imports_another() -> None:
    packages = {p.name for p in (ROOT / "tmifpe/losses").iterdir() if p.is_dir()
                and (p / "__init__.py").exists()}
    assert packages == {loss.value for loss in LossName}
    for pkg in packages:
        for file in (ROOT / "tmifpe/losses" / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    parts = name.split(".")
                    if parts[:2] == ["tmifpe", "losses"] and len(parts) > 2:
                        assert parts[2] in (pkg, "scaling"), f"{file} imports {name}"


def _run(repo: Path, *args: str) -> str:
    return run(repo, *args).stdout


def _dvc(repo: Path, *args: str) -> str:
    return dvc(repo, *args).stdout


def changed(repo: Path) -> set[str]:
    return set(json.loads(_dvc(repo, "status", "--json")))


def _touch_outputs(repo: Path, doc: dict) -> None:
    suite, grid = doc["suite"], doc["grid"]
    files = [f"data/eval/{d}.pt" for d in suite["datasets"]]
    for m in suite["models"]:
        files += [f"models/{m}/manifest.json"]
        files += [f"results/{s}/{m}{e}" for s in ("autoattack", "ablations", "fast")
                  for e in (".parquet", ".timing.json")]
        files += [f"results/diagnostics/{m}{e}" for e in (".parquet", ".tstar.parquet", ".json")]
    files += [f"results/attack/{c['model']}/{c['loss']}/b{b}{e}"
              for c in grid["cells"].values() for b in suite["budgets"]
              for e in (".parquet", ".timing.json")]
    files += ["results/aggregate/robust_accuracy.csv", "results/metrics.json",
              "reports/index.html", "reports/tables.tex", "reports/tables_standalone.tex",
              "reports/figures/placeholder.pdf"]
    for f in files:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text(f"placeholder {f}\n")


def _two_dataset_suite() -> dict:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    suite = doc["suite"]
    suite["datasets"]["digits_b"] = {**suite["datasets"]["digits"], "split_seed": 1}
    suite["model_zoo"]["digits_b"] = {**suite["model_zoo"]["digits_std"], "dataset": "digits_b"}
    suite["models"].append("digits_b")
    return suite


def write_suite(repo: Path, suite: dict) -> dict:
    doc = {"suite": suite, "grid": derive_grid(suite)}
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_repo(copy_project(tmp_path_factory.mktemp("deps")), hydra=True)
    suite = _two_dataset_suite()
    # the default suite of this copy is the two-dataset suite; `small` is a second suite
    (repo / "conf/suite/default.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    small = {**suite, "name": "small", "models": ["digits_std"], "budgets": [10, 20]}
    (repo / "conf/suite/small.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    doc = write_suite(repo, suite)
    load_params(repo / "params.yaml")  # valid
    _touch_outputs(repo, doc)
    _dvc(repo, "commit", "-f", "-q")
    commit_all(repo, "baseline")
    assert changed(repo) == set()
    return repo


@contextmanager
def edited(repo: Path, rel: str, text: str | None = None) -> Iterator[Path]:
    path = repo / rel
    original = path.read_text()
    if text is not None:
        path.write_text(text)
    try:
        yield path
    finally:
        path.write_text(original)


def cells(*, model: str | None = None, loss: str | None = None,
          suite: dict | None = None) -> set[str]:
    """The attack stages (one per model × loss, every budget inside)."""
    grid = derive_grid(suite or _two_dataset_suite())
    return {f"attack@{k}" for k, c in grid["cells"].items()
            if model in (None, c["model"]) and loss in (None, c["loss"])}


def per_model(model: str) -> set[str]:
    return {f"{s}@{model}" for s in ("model", "autoattack", "diagnostics", "ablations", "fast")}


@slow
def test_attack_cell_deps_are_exactly_its_files_and_params(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    grid = derive_grid(_two_dataset_suite())
    assert {k for k in lock if k.startswith("attack@")} == {f"attack@{k}" for k in grid["cells"]}
    for key, c in grid["cells"].items():
        entry = lock[f"attack@{key}"]
        deps = {d["path"] for d in entry["deps"]}
        code = [d.replace(PER_ITEM_LOSS, f"tmifpe/losses/{c['loss']}")
                for d in dvc_code_deps("stages.attack", per_item_loss=True)]
        expected = {*code, f"models/{c['model']}", f"data/eval/{c['dataset']}.pt"}
        assert deps == expected, key
        assert set(entry["params"]["params.yaml"]) == {  # no suite.name: rows do not carry it
            f"suite.model_zoo.{c['model']}", f"suite.datasets.{c['dataset']}",
            "suite.budgets", "grid.precisions", "suite.attack", "suite.device", "suite.threads",
            "suite.hash_seed"}, key
        assert entry["outs"][0]["path"] == f"results/attack/{c['model']}/{c['loss']}", key


@slow
def test_one_models_training_param(repo: Path) -> None:
    suite = _two_dataset_suite()
    suite["model_zoo"]["digits_std"]["epochs"] += 1
    with edited(repo, "params.yaml"):
        write_suite(repo, suite)
        assert changed(repo) == {*per_model("digits_std"), *cells(model="digits_std"),
                                 "aggregate"}


@slow
def test_one_datasets_n_examples(repo: Path) -> None:
    suite = _two_dataset_suite()
    suite["datasets"]["digits_b"]["n_examples"] = 100
    with edited(repo, "params.yaml"):
        write_suite(repo, suite)
        assert changed(repo) == {"data@digits_b", *per_model("digits_b"),
                                 *cells(model="digits_b"), "aggregate", "report"}


@slow
def test_editing_the_dlr_package(repo: Path) -> None:
    files = sorted((repo / "tmifpe/losses/dlr").glob("*.py"))
    rel = files[0].relative_to(repo).as_posix()
    with edited(repo, rel, files[0].read_text() + "\n# edited\n"):
        # the fast preset's last phase is DLR-targeted (tmifpe/attacks/fast.py PRESET_PHASES)
        models = ("digits_std", "digits_at", "digits_b")
        assert changed(repo) == {*cells(loss="dlr"), *(f"diagnostics@{m}" for m in models),
                                 *(f"fast@{m}" for m in models)}


@slow
def test_editing_the_tstar_solver(repo: Path) -> None:
    rel = "tmifpe/losses/tmifpe/tstar.py"
    with edited(repo, rel, (repo / rel).read_text() + "\n# edited\n"):
        # the ablations compare t* rules, the fast preset is T-MIFPE: both run the solver too;
        # so may stages that import the solver (the report: the diagnostics' tables)
        models = ("digits_std", "digits_at", "digits_b")
        importers = {s for s in ("aggregate", "report") if rel in code_files(f"stages.{s}")}
        assert changed(repo) == {*cells(loss="tmifpe"), *(f"diagnostics@{m}" for m in models),
                                 *(f"ablations@{m}" for m in models),
                                 *(f"fast@{m}" for m in models), *importers}


@slow
def test_fp64_cap_reruns_the_attack_stages_only(repo: Path) -> None:
    """A precision cap is a setting of every attack stage (each runs every budget): they all
    re-run, nothing else (the diagnostics and ablations ignore caps)."""
    suite = _two_dataset_suite()
    assert suite["precisions"]["fp64"]["max_budget"] == 20
    suite["precisions"]["fp64"]["max_budget"] = 10  # budget 20 loses fp64; 10 and 50 unchanged
    with edited(repo, "params.yaml"):
        write_suite(repo, suite)
        assert changed(repo) == cells()


def _queued_params(repo: Path, name: str, *overrides: str) -> dict:
    """Queue ``dvc exp run -S ...`` (DVC composes params.yaml with Hydra, nothing runs) and
    return the params.yaml of the queued experiment's commit."""
    args = [a for o in overrides for a in ("-S", o)]
    _dvc(repo, "exp", "run", "--queue", "-n", name, *args)
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("name") == name and isinstance(node.get("rev"), str):
                found.append(node["rev"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(_dvc(repo, "exp", "show", "--json")))
    assert found, f"queued experiment {name} not in `dvc exp show`"
    return yaml.safe_load(_run(repo, "git", "show", f"{found[0]}:params.yaml"))


@slow
def test_exp_run_set_param_composes_and_changes_only_the_attack_stages(repo: Path) -> None:
    doc = _queued_params(repo, "cap10", "suite.precisions.fp64.max_budget=10")
    assert doc["suite"]["precisions"]["fp64"]["max_budget"] == 10
    assert list(doc["grid"]["precisions"]["b20"]) == ["fp16", "bf16", "fp32", "amp-fp16",
                                                     "amp-bf16"]
    with edited(repo, "params.yaml", yaml.safe_dump(doc, sort_keys=False)):
        diff = json.loads(_dvc(repo, "params", "diff", "--json"))["params.yaml"]
        assert [k for k in diff if k.startswith("suite.")] == ["suite.precisions.fp64.max_budget"]
        assert all(k.startswith("grid.precisions.b20.fp64") for k in diff if k.startswith("grid"))
        assert changed(repo) == cells()


@slow
def test_exp_run_sweep_queues_one_experiment_per_value(repo: Path) -> None:
    before = _dvc(repo, "queue", "status").count("Queued")
    _dvc(repo, "exp", "run", "--queue", "-S", "suite.budgets=[10],[10,20]")
    assert _dvc(repo, "queue", "status").count("Queued") == before + 2


@slow
def test_switching_suites_with_set_param(repo: Path) -> None:
    doc = _queued_params(repo, "small", "suite=small")
    assert doc["suite"]["name"] == "small"
    assert sorted(doc["grid"]["cells"]) == sorted(
        k.removeprefix("attack@") for k in cells(model="digits_std"))
    with edited(repo, "params.yaml", yaml.safe_dump(doc, sort_keys=False)):
        assert load_params(repo / "params.yaml").name == "small"
        status = changed(repo)
    # the stages of the small suite with the same settings are up to date (no stage reads the
    # suite's name); the attack stages of digits_std re-run since the budgets differ (10, 20
    # of 10, 20, 50: rebuilt from their kept units), and the stages reading the grid lists
    assert status == {*cells(model="digits_std"), "aggregate", "report"}
    # the paper suite cannot run offline; its composition is checked, not run
    paper = _queued_params(repo, "paper", "suite=paper")
    assert parse_suite(paper["suite"]).name == "paper" and len(paper["grid"]["cells"]) == 35


@slow
def test_checkout_without_symlinks_still_invalidates(repo: Path, tmp_path: Path) -> None:
    assert "120000" not in _run(repo, "git", "ls-files", "-s")  # no symlink in the tree
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", "-c", "core.symlinks=false", str(repo), str(clone))
    _dvc(clone, "cache", "dir", str(repo / ".dvc/cache"))
    _dvc(clone, "checkout", "-q")
    assert changed(clone) == set()
    rel = "tmifpe/losses/dlr/__init__.py"
    (clone / rel).write_text((clone / rel).read_text() + "\n# edited\n")
    models = ("digits_std", "digits_at", "digits_b")
    assert changed(clone) == {*cells(loss="dlr"), *(f"diagnostics@{m}" for m in models),
                              *(f"fast@{m}" for m in models)}
