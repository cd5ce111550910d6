"""The `tmifpe` command: help texts, `evaluate` on a TorchScript file and on a
package.module:factory model, on `digits` and on an ImageFolder of PNGs, its outputs against
the per-example file, `--vs-autoattack`, one-line errors; an install of the package into a new
venv (no top-level `autoattack`, the alias works)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tmifpe.cli import app, summarise
from tmifpe.evaluation.schema import AA_SCHEMA, CELL_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("evaluate", "report", "run", "status")
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, digits_cnn):
    """The session's trained digits CNN as TorchScript, as a state dict, and a factory module."""
    root = tmp_path_factory.mktemp("models")
    torch.jit.script(digits_cnn).save(str(root / "cnn.ts"))
    torch.save(digits_cnn.state_dict(), root / "cnn_state.pt")
    (root / "user_models.py").write_text(textwrap.dedent("""
        from tmifpe.models.small_cnn import SmallCNN

        def digits_cnn():
            return SmallCNN(width=16)
    """))
    return root


@pytest.fixture
def factory_on_path(model_files, monkeypatch):
    monkeypatch.syspath_prepend(str(model_files))
    sys.modules.pop("user_models", None)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The first 30 digits test points (the default suite's split) as 8-bit greyscale PNGs in
    ImageFolder layout, <dir>/<label>/<index>.png; returns the folder and the decoded points."""
    from tmifpe.data.digits import digits_split

    split = digits_split(0.2, 0)
    root = tmp_path_factory.mktemp("imgs") / "digits_png"
    pixels = (split.x_test[:30, 0] * 255).round().to(torch.uint8).numpy()
    for i, (img, label) in enumerate(zip(pixels, split.y_test[:30].tolist(), strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / str(label) / f"{i:03d}.png")
    return root


def _outputs(out: Path) -> tuple[dict, pl.DataFrame]:
    return json.loads((out / "summary.json").read_text()), pl.read_parquet(out / "examples.parquet")


def _check_summary_against_examples(summary: dict, frame: pl.DataFrame) -> None:
    assert dict(frame.schema) == CELL_SCHEMA
    assert summary["n_examples"] == frame.height
    assert summary["clean_acc"] == pytest.approx(frame["clean_correct"].cast(pl.Float64).mean())
    assert summary["robust_acc"] == pytest.approx(frame["robust_fp32"].cast(pl.Float64).mean())
    assert summary["robust_acc_fp64"] == pytest.approx(
        frame["robust_fp64"].cast(pl.Float64).mean())
    assert summary["n_robust"] == frame["robust_fp32"].sum()
    passes = (frame["n_forward"] + frame["n_backward"]).cast(pl.Float64).mean()
    assert summary["cost"]["passes_per_point"] == pytest.approx(passes)
    assert summary["cost"]["wall_time_s"] > 0
    # robust implies clean-correct; a broken point is inside the ball (valid)
    assert not (frame["robust_fp32"] & ~frame["clean_correct"]).any()
    broken = frame["clean_correct"] & ~frame["robust_fp32"]
    assert frame.filter(broken)["valid"].all()


# ---------------------------------------------------------------- help


def test_help_lists_every_subcommand():
    res = invoke("--help")
    assert res.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in res.stdout
    for name in SUBCOMMANDS:
        sub = invoke(name, "--help")
        assert sub.exit_code == 0, sub.output
        assert "Usage:" in sub.stdout
    assert "--vs-autoattack" in invoke("evaluate", "--help").stdout


# ---------------------------------------------------------------- evaluate


@pytest.mark.parametrize("kind", ["torchscript", "factory"])
@pytest.mark.parametrize("dataset", ["digits", "folder"])
@pytest.mark.usefixtures("factory_on_path")
def test_evaluate_writes_summary_consistent_with_examples(kind, dataset, model_files,
                                                          image_folder, tmp_path):
    model = (["--model", model_files / "cnn.ts"] if kind == "torchscript" else
             ["--model", "user_models:digits_cnn", "--weights", model_files / "cnn_state.pt"])
    data = ["--dataset", "digits"] if dataset == "digits" else ["--dataset", image_folder,
                                                                 "--eps", "0.2"]
    out = tmp_path / "out"
    res = invoke("evaluate", *model, *data, "--n-examples", "30", "--budget", "5", "--loss",
                 "tmifpe", "--out", out)
    assert res.exit_code == 0, res.output
    summary, frame = _outputs(out)
    _check_summary_against_examples(summary, frame)
    assert summary["model_kind"] == kind and summary["eps"] == 0.2
    assert summary["dataset"] == ("digits" if dataset == "digits" else "digits_png")
    assert summary["robust_acc"] < summary["clean_acc"]  # the attack broke points
    assert "robust acc" in res.stdout  # the summary table


@pytest.mark.usefixtures("factory_on_path")
def test_same_points_same_results_whatever_the_source(model_files, image_folder, digits_cnn,
                                                      tmp_path):
    """TorchScript and factory+weights of one network give identical per-example results, and
    the PNG folder holds the digits points up to 8-bit rounding: its clean accuracy is the
    model's on the decoded PNGs."""
    frames = []
    for model in (["--model", model_files / "cnn.ts"],
                  ["--model", "user_models:digits_cnn", "--weights", model_files / "cnn_state.pt"]):
        out = tmp_path / str(len(frames))
        res = invoke("evaluate", *model, "--dataset", image_folder, "--eps", "0.2", "--budget",
                     "3", "--out", out)
        assert res.exit_code == 0, res.output
        frames.append(_outputs(out)[1].drop("model"))
    assert frames[0].equals(frames[1])
    from tmifpe.data.folder import load_image_folder

    x, y, classes = load_image_folder(image_folder)
    assert classes == sorted(classes) and x.shape == (30, 1, 8, 8)
    with torch.no_grad():
        correct = (digits_cnn(x).argmax(1) == y).numpy()
    assert np.array_equal(frames[0]["clean_correct"].to_numpy(), correct)


def test_examples_are_byte_identical_across_runs(model_files, tmp_path):
    paths = []
    for name in ("a", "b"):
        res = invoke("evaluate", "--model", model_files / "cnn.ts", "--dataset", "digits",
                     "--n-examples", "20", "--budget", "4", "--precision", "bf16", "--targets",
                     "2", "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        paths.append(tmp_path / name / "examples.parquet")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    frame = pl.read_parquet(paths[0])
    assert frame["targeted"].all() and (frame["precision"] == "bf16").all()


def test_vs_autoattack_on_a_handful_of_points(model_files, tmp_path):
    out = tmp_path / "aa"
    res = invoke("evaluate", "--model", model_files / "cnn.ts", "--dataset", "digits",
                 "--n-examples", "8", "--budget", "10", "--vs-autoattack", "--out", out)
    assert res.exit_code == 0, res.output
    summary, frame = _outputs(out)
    aa = pl.read_parquet(out / "autoattack.parquet")
    assert dict(aa.schema) == AA_SCHEMA and aa.height == 8
    assert summary["autoattack_robust_acc"] == pytest.approx(
        aa["robust_fp32"].cast(pl.Float64).mean())
    cost = summary["autoattack_cost"]
    assert cost["passes_per_point"] == pytest.approx(
        (2 * aa["n_grad"] + aa["n_queries"]).cast(pl.Float64).mean())
    assert cost["passes_per_point"] > summary["cost"]["passes_per_point"] > 0
    assert cost["wall_time_s"] > 0 and summary["cost"]["wall_time_s"] > 0
    assert summary["robust_acc_gap_vs_autoattack"] == pytest.approx(
        summary["robust_acc"] - summary["autoattack_robust_acc"])
    assert "AutoAttack" in res.stdout
    # the summary is a function of the two per-example files (wall times aside)
    again = summarise(frame, wall_time_s=summary["cost"]["wall_time_s"], aa_frame=aa,
                      aa_wall_time_s=cost["wall_time_s"])
    assert all(summary[k] == v for k, v in again.items())


def test_fast_preset_with_autoattack(model_files, tmp_path):
    """`--attack fast`: per-example rows in the fast stage's schema, and a summary whose
    accuracies, gap and pass ratio are those of the two per-example files."""
    out = tmp_path / "fast"
    res = invoke("evaluate", "--model", model_files / "cnn.ts", "--dataset", "digits",
                 "--n-examples", "8", "--attack", "fast", "--vs-autoattack", "--out", out)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    frame = pl.read_parquet(out / "examples.parquet")
    aa = pl.read_parquet(out / "autoattack.parquet")
    assert frame.height == aa.height == 8 and summary["attack"] == "fast"
    assert summary["robust_acc"] == pytest.approx(frame["robust_fp32"].cast(pl.Float64).mean())
    assert summary["gap_vs_aa_pts"] == pytest.approx(
        100 * (summary["robust_acc"] - aa["robust_fp32"].cast(pl.Float64).mean()))
    aa_passes = (2 * aa["n_grad"] + aa["n_queries"]).cast(pl.Float64).mean()
    assert summary["pass_ratio"] == pytest.approx(frame["passes"].cast(pl.Float64).mean()
                                                  / aa_passes)
    assert (frame["success"] == ~frame["robust_fp32"] & frame["clean_correct"]).all()
    assert "fast preset" in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "missing/model.pt", "--dataset", "digits"], "model file missing/model.pt"),
    (["--model", "no_such_pkg.mod:make", "--dataset", "digits"], "cannot import 'no_such_pkg.mod'"),
    (["--model", "tmifpe.models.small_cnn:nothing", "--dataset", "digits"],
     "has no callable 'nothing'"),
    (["--model", "{ts}", "--dataset", "svhn"], "--dataset 'svhn': expected one of"),
    (["--model", "{ts}", "--dataset", "{folder}"], "--eps is required for an image folder"),
    (["--model", "{ts}", "--dataset", "digits", "--eps", "2"], "--eps 2.0 out of range"),
    (["--model", "{ts}", "--dataset", "cifar10", "--data-dir", "{empty}"],
     "cifar-10-batches-py/test_batch is missing"),
    (["--model", "{state}", "--dataset", "digits"], "is not a TorchScript archive"),
    (["--model", "{ts}", "--dataset", "digits", "--weights", "{state}"], "drop --weights"),
    (["--model", "tmifpe.models.small_cnn:SmallCNN", "--dataset", "digits", "--weights",
      "{ts}"], "is not a loadable state dict"),
    (["--model", "tmifpe.models.autoattack_resnet:load_pyautoattack_resnet18", "--dataset",
      "digits"], "fails on --dataset digits inputs of shape (1, 8, 8)"),
    (["--model", "NoSuchModel2099", "--dataset", "cifar10"],
     "not a RobustBench cifar10/Linf model ID"),
    (["--model", "{ts}", "--dataset", "digits", "--vs-autoattack", "--n-examples", "999"],
     "exceeds the 360 digits test points"),
])
def test_bad_specs_are_one_line_errors(args, message, model_files, image_folder, tmp_path,
                                       monkeypatch):
    monkeypatch.setenv("NO_PROXY", "*")
    subst = {"{ts}": str(model_files / "cnn.ts"), "{state}": str(model_files / "cnn_state.pt"),
             "{folder}": str(image_folder), "{empty}": str(tmp_path / "none")}
    args = [subst.get(a, a) for a in args]
    if "--data-dir" in args:  # the offline failure only: never download in a test
        monkeypatch.setattr("socket.getaddrinfo", _no_network)
    out = tmp_path / "out"
    res = invoke("evaluate", *args, "--budget", "2", "--out", out)
    assert res.exit_code == 2, res.output
    assert message in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert not out.exists()


def _no_network(*_a, **_k):
    raise OSError("network disabled in this test")


def test_report_without_aggregate_results_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    res = invoke("report")
    assert res.exit_code == 2
    assert "run `dvc repro aggregate` first" in res.stderr and res.stderr.count("\n") == 1



def test_report_renders_html_tables_and_pdf_figures(tmp_path, monkeypatch):
    """`tmifpe report` on aggregate results: the stage's files plus one PDF per figure, and the
    same bytes when run again."""
    from support.synthetic_results import demo_results

    from tmifpe.aggregate import aggregate, write_aggregates

    files = demo_results(tmp_path / "raw", n_examples=12)
    write_aggregates(aggregate(files.cell_files, files.aa_files, files.timing_files),
                     tmp_path / "results" / "aggregate")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    res = invoke("report")
    assert res.exit_code == 0, res.output
    written = sorted(res.stdout.split())
    assert written == sorted(["reports/index.html", "reports/tables.tex",
                              "reports/tables_standalone.tex", "reports/figures/iterations.pdf",
                              "reports/figures/precision.pdf", "reports/figures/cost.pdf"])
    first = {p: Path(p).read_bytes() for p in written}
    assert all(first[p].startswith(b"%PDF") for p in written if p.endswith(".pdf"))
    assert invoke("report").exit_code == 0
    assert {p: Path(p).read_bytes() for p in written} == first

# ---------------------------------------------------------------- installed into a new venv


@pytest.mark.slow
def test_install_into_new_venv_has_cli_and_no_toplevel_autoattack(tmp_path):
    """`pip install --no-deps .` of this tree into a new venv whose dependencies are this
    environment's site-packages, seen through a plain path (.pth) line, so none of this
    environment's own .pth hooks (e.g. an editable install of another checkout) apply.

    Proves: the built package installs the `tmifpe` script and every subcommand's help works
    from an unrelated folder; the installed files hold no top-level `autoattack`; in that venv
    `import autoattack` fails until tmifpe's alias is installed, then robustbench's
    `from autoattack import AutoAttack` works. Does not prove the dependency resolution of a
    clean machine (the Makefile's lock-file install does that in CI)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "deps_of_test_env.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the source
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".dvc", "__pycache__", "results", "reports", "models", "data",
        ".tmifpe-work", "build", "*.egg-info"))
    pip = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", str(src)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300, check=False)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    record = next(Path(site).glob("tmifpe-*.dist-info")) / "RECORD"
    tops = {line.split("/")[0].split(",")[0] for line in record.read_text().splitlines()}
    assert "autoattack" not in tops and "tmifpe" in tops
    assert not Path(site, "autoattack").exists()
    script = env_dir / "bin" / "tmifpe"
    for args in (["--help"], *([s, "--help"] for s in SUBCOMMANDS)):
        res = subprocess.run([script, *args], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120, check=False)
        assert res.returncode == 0 and "Usage:" in res.stdout, res.stdout + res.stderr
    probe = textwrap.dedent("""
        import importlib.util, tmifpe
        assert tmifpe.__file__.startswith(%r), tmifpe.__file__
        assert importlib.util.find_spec("autoattack") is None, "a top-level autoattack exists"
        from tmifpe._compat.autoattack_alias import import_robustbench
        import_robustbench()
        from autoattack import AutoAttack
        import autoattack.autopgd_base, autoattack.state, pyautoattack
        from robustbench.eval import benchmark
        assert AutoAttack is pyautoattack.AutoAttack
        assert autoattack.autopgd_base is pyautoattack.autopgd_base
        print("ok")
    """) % site
    res = subprocess.run([py, "-c", probe], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


re_robustbench = re.compile(r"^\s*(from|import)\s+robustbench\b", re.M)


def test_every_robustbench_import_goes_through_the_alias():
    """No top-level `autoattack` is installed, so a file that imports robustbench (whose
    __init__ imports `autoattack`) must first call tmifpe's import_robustbench()."""
    offenders = []
    for folder in ("tmifpe", "stages", "tests", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            imports = re_robustbench.search(text)
            rel = path.relative_to(ROOT).as_posix()
            if imports and "import_robustbench()" not in text:
                offenders.append(rel)
    assert offenders == []



def test_robustbench_id_loads_a_staged_checkpoint_offline(tmp_path, monkeypatch):
    """A RobustBench ID resolves through robustbench.utils.load_model (imported via the alias)
    from a checkpoint staged where RobustBench keeps it; nothing is downloaded."""
    from tmifpe._compat.autoattack_alias import import_robustbench
    from tmifpe.models.spec import load_spec_model, parse_model_spec

    monkeypatch.setattr("socket.getaddrinfo", _no_network)
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    reference = model_dicts[BenchmarkDataset("cifar10")][ThreatModel.Linf]["Standard"]["model"]()
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": reference.state_dict()}, path)
    spec = parse_model_spec("Standard")
    assert spec.kind == "robustbench"
    model = load_spec_model(spec, dataset="cifar10", model_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)
    assert not model.training
