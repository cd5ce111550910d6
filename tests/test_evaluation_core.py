"""The evaluation core (issue 18): one configuration gives identical per-example rows through
`tmifpe evaluate`, `tmifpe.evaluate`/`tmifpe.evaluate_fast` and the pipeline cells; every runner
applies the runtime contract and leaves global torch state and the caller's model unchanged; a
model whose logits turn NaN is never reported as broken, through every door and attack kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest
import torch
from PIL import Image
from support.suites import complete
from torch import Tensor, nn
from typer.testing import CliRunner

import tmifpe
from tmifpe.attacks.fast import PRESET_PHASES, FastConfig
from tmifpe.cli import app, parse_eps
from tmifpe.data.sources import save_tensors
from tmifpe.data.spec import load_eval_set
from tmifpe.evaluation.schema import CELL_SCHEMA, FAST_SCHEMA
from tmifpe.losses import LossName
from tmifpe.pipeline import cell as cell_module
from tmifpe.pipeline import fast_cell as fast_cell_module
from tmifpe.pipeline.cell import CellSpec, run_attack_cell
from tmifpe.pipeline.config import parse_suite
from tmifpe.pipeline.fast_cell import run_fast_cell
from tmifpe.runtime import fp32_precision_state
from tmifpe.storage import read_parquet_metadata

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
LABEL_COLUMNS = ["dataset", "model"]  # names given by each door, not results


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- models


class NaNAbove(nn.Module):
    """Logits z = Wx + b, b favouring class ``favoured`` by 5 (no l∞ attack of radius <= 1 can
    flip it: |(W_i − W_j)x| <= 64·0.02); every logit NaN where some pixel exceeds ``threshold``."""

    def __init__(self, favoured: int = 1, threshold: float = 0.6) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-0.01, 0.01, 640).view(10, 64))
            self.linear.bias.zero_()
            self.linear.bias[favoured] = 5.0
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x.flatten(1))
        hot = x.flatten(1).amax(dim=1) > self.threshold
        return torch.where(hot[:, None], torch.full_like(z, float("nan")), z)


def nan_points() -> tuple[Tensor, Tensor]:
    """14 points with pixels in [0, 0.5] (finite clean logits, label 1 = the favoured class:
    clean-correct, unbreakable) and 6 with a pixel at 0.9 (NaN clean logits, label 0 = argmax of
    a NaN row: not clean-correct). Pixels are multiples of 1/255 (8-bit PNG round trip)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (20, 1, 8, 8), generator=gen).float() / 255
    x[14:, 0, 0, 0] = 230 / 255
    y = torch.tensor([1] * 14 + [0] * 6)
    return x, y


def _check_nan_frame(frame: pl.DataFrame) -> None:
    """No point is broken by NaN: robust = clean-correct = label 1 (the model cannot be fooled
    otherwise; label-0 points have NaN clean logits: not clean-correct), NaN verdict logits are
    counted."""
    expected = (frame["label"] == 1).to_list()
    assert sorted(frame["label"].to_list()) == [0] * 6 + [1] * 14
    assert frame["clean_correct"].to_list() == expected
    assert frame["robust_fp32"].to_list() == expected
    assert frame["robust_fp64"].to_list() == expected
    assert frame["nonfinite_fp32"].sum() > 0  # the attack left some points in the NaN region
    assert frame.filter(pl.col("label") == 0)["nonfinite_fp32"].all()  # never moved


@pytest.fixture(scope="module")
def nan_model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nan") / "nan.ts"
    torch.jit.script(NaNAbove()).save(str(path))
    return path


@pytest.fixture(scope="module")
def nan_folder(tmp_path_factory) -> Path:
    """nan_points() as PNGs: class folder ``a`` (label 0) and ``b`` (label 1)."""
    root = tmp_path_factory.mktemp("nanimgs") / "pts"
    x, y = nan_points()
    for i, (img, label) in enumerate(zip(x[:, 0], y.tolist(), strict=True)):
        folder = root / "ab"[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).round().to(torch.uint8).numpy(), mode="L").save(
            folder / f"{i:03d}.png")
    return root


def _cell_suite(precisions: dict, fast: dict | None = None, n: int = 20, eps: float = 0.2):
    return parse_suite(complete({
        "name": "core", "threads": 1,
        "datasets": {"digits": {"source": "digits", "n_examples": n, "eps": eps}},
        "model_zoo": {"m": {"source": "trained", "dataset": "digits", "seed": 0}},
        "models": ["m"], "losses": ["tmifpe"], "budgets": [4], "precisions": precisions,
        "attack": {"batch_size": 8, "seed": 0},
        **({"fast": fast} if fast else {}),
    }))


def _run_cell(tmp_path: Path, monkeypatch, model: nn.Module, x: Tensor, y: Tensor,
              precisions: dict) -> tuple[pl.DataFrame, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    if not (tmp_path / "tmifpe").exists():
        (tmp_path / "tmifpe").symlink_to(ROOT / "tmifpe")  # the cell key hashes its sources
    monkeypatch.setattr(cell_module, "load_model", lambda key, params, ds: model)
    data = tmp_path / "eval.pt"
    save_tensors({"x_test": x, "y_test": y}, data)
    spec = CellSpec("m", LossName.TMIFPE, 4)
    out, timing = spec.outputs(tmp_path / "results")
    frame = run_attack_cell(_cell_suite(precisions, n=x.shape[0]), spec, data_path=data,
                            model_files=[], out=out, timing_out=timing,
                            work_root=tmp_path / "work")
    return frame, out


def _run_fast_cell(tmp_path: Path, monkeypatch, model: nn.Module, x: Tensor, y: Tensor,
                   fast: dict) -> tuple[pl.DataFrame, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fast_cell_module, "load_model", lambda key, params, ds: model)
    data = tmp_path / "eval.pt"
    save_tensors({"x_test": x, "y_test": y}, data)
    out = tmp_path / "results" / "fast" / "m.parquet"
    suite = _cell_suite({"fp32": {"n_targets": 0}}, fast=fast, n=x.shape[0])
    frame = run_fast_cell(suite, "m", data_path=data, out=out,
                          timing_out=out.with_suffix(".timing.json"))
    return frame, out


# ---------------------------------------------------------------- one result, every door


def test_pgd_rows_identical_through_cli_api_and_cell(digits_cnn, tmp_path, monkeypatch):
    model_file = tmp_path / "cnn.ts"
    torch.jit.script(digits_cnn).save(str(model_file))
    data = load_eval_set("digits", 12, tmp_path)  # the CLI's digits points
    out = tmp_path / "cli"
    res = invoke("evaluate", "--model", model_file, "--dataset", "digits", "--n-examples", 12,
                 "--budget", 4, "--precision", "bf16", "--targets", 2, "--eps", "1/5",
                 "--batch-size", 8, "--device", "cpu", "--threads", 1, "--out", out)
    assert res.exit_code == 0, res.output
    cli = pl.read_parquet(out / "examples.parquet")
    model = torch.jit.load(str(model_file))
    api = {t: tmifpe.evaluate(model, data.x, data.y, loss="tmifpe", eps=0.2, budget=4,
                              precision="bf16", targets=t, batch_size=8).frame()
           for t in (0, 2)}
    cell, _ = _run_cell(tmp_path / "c", monkeypatch, model, data.x, data.y,
                        {"bf16": {"n_targets": 2}})
    columns = [c for c in CELL_SCHEMA if c not in LABEL_COLUMNS]
    for targeted in (False, True):
        rows = cell.filter(pl.col("targeted") == targeted).select(columns)
        assert rows.height == 12
        assert rows.equals(api[2 if targeted else 0].select(columns))
    assert cli.select(columns).equals(api[2].select(columns))
    assert dict(cli.schema) == dict(cell.schema) == CELL_SCHEMA


def test_fast_rows_identical_through_cli_api_and_cell(digits_cnn, tmp_path, monkeypatch):
    model_file = tmp_path / "cnn.ts"
    torch.jit.script(digits_cnn).save(str(model_file))
    data = load_eval_set("digits", 12, tmp_path)
    out = tmp_path / "cli"
    res = invoke("evaluate", "--model", model_file, "--dataset", "digits", "--n-examples", 12,
                 "--attack", "fast", "--eps", "0.2", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    cli = pl.read_parquet(out / "examples.parquet")
    model = torch.jit.load(str(model_file))
    api = tmifpe.evaluate_fast(model, data.x, data.y, eps=0.2)
    preset = FastConfig(eps=0.2)  # the cell's suite names the preset's settings explicitly
    fast = {"phases": [{"kind": p.kind.value, "steps": p.steps, "loss": p.loss,
                        "n_targets": p.n_targets, "restarts": p.restarts, "targets": p.targets,
                        "focus": p.focus}
                       for p in PRESET_PHASES],
            "guard_queries": preset.guard_queries, "guard_p_init": preset.guard_p_init,
            "tstar_rule": preset.tstar_rule, "batch_size": preset.batch_size, "seed": preset.seed}
    cell, _ = _run_fast_cell(tmp_path / "c", monkeypatch, model, data.x, data.y, fast)
    columns = [c for c in FAST_SCHEMA if c not in [*LABEL_COLUMNS, "split"]]
    assert cli.select(columns).equals(api.frame.select(columns))
    assert cell.select(columns).equals(api.frame.select(columns))
    assert dict(cli.schema) == dict(cell.schema) == FAST_SCHEMA
    assert not api.frame["robust_fp32"].all()  # the preset broke points: a real comparison


# ---------------------------------------------------------------- runtime contract


class Recorder(nn.Module):
    """Records the TF32 switches and thread count it runs under (forward of the copies)."""

    seen: ClassVar[list[tuple[dict[str, str], int]]] = []

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.0)  # a module whose mode the caller set

    def forward(self, x: Tensor) -> Tensor:
        Recorder.seen.append((fp32_precision_state(), torch.get_num_threads()))
        return self.drop(self.inner(x))


@pytest.mark.parametrize("door", ["evaluate", "evaluate_fast"])
def test_runner_applies_the_contract_and_restores_everything(door, digits_cnn, digits):
    model = Recorder(digits_cnn).train()
    before_params = [p.detach().clone() for p in model.parameters()]
    switches = {"matmul": torch.backends.cuda.matmul, "cudnn.conv": torch.backends.cudnn.conv}
    saved = {k: b.fp32_precision for k, b in switches.items()}
    saved_threads = torch.get_num_threads()
    try:
        for backend in switches.values():
            backend.fp32_precision = "tf32"
        torch.set_num_threads(2)
        Recorder.seen.clear()
        x, y = digits.x_test[:6], digits.y_test[:6]
        if door == "evaluate":
            tmifpe.evaluate(model, x, y, eps=0.2, budget=2, threads=1)
        else:
            tmifpe.evaluate_fast(model, x, y, eps=0.2, threads=1,
                                 config=FastConfig(eps=0.2, phases=PRESET_PHASES[:1],
                                                   guard_queries=5))
        assert Recorder.seen
        assert {s["matmul"] for s, _ in Recorder.seen} == {"ieee"}
        assert {s["cudnn.conv"] for s, _ in Recorder.seen} == {"ieee"}
        assert {t for _, t in Recorder.seen} == {1}
        # restored: the caller's settings, the caller's model
        assert {k: b.fp32_precision for k, b in switches.items()} == {k: "tf32" for k in switches}
        assert torch.get_num_threads() == 2
        assert model.training and all(m.training for m in model.modules())
        assert all(torch.equal(a, b) for a, b in zip(before_params, model.parameters(),
                                                      strict=True))
        assert all(p.requires_grad for p in model.parameters())
    finally:
        for k, backend in switches.items():
            backend.fp32_precision = saved[k]
        torch.set_num_threads(saved_threads)


def test_environment_recorded_in_every_output(digits_cnn, digits, tmp_path, monkeypatch):
    res = tmifpe.evaluate(digits_cnn, digits.x_test[:4], digits.y_test[:4], eps=0.2, budget=1)
    assert res.environment["device"] == "cpu"
    assert res.environment["fp32_precision"]["matmul"] == "ieee"
    _, out = _run_cell(tmp_path, monkeypatch, digits_cnn, digits.x_test[:4], digits.y_test[:4],
                       {"fp32": {"n_targets": 0}})
    meta = read_parquet_metadata(out)["environment"]
    assert meta["hardware_class"] == res.environment["hardware_class"]
    assert meta["deterministic"] is True


# ---------------------------------------------------------------- NaN verdicts, every door


@pytest.mark.parametrize(("precision", "targets"), [("fp32", 0), ("fp32", 3), ("bf16", 0)])
def test_nan_logits_are_not_broken_api(precision, targets):
    x, y = nan_points()
    res = tmifpe.evaluate(NaNAbove(), x, y, loss="ce", eps=0.2, budget=3, precision=precision,
                          targets=targets)
    _check_nan_frame(res.frame())
    assert res.robust_acc == res.clean_acc == pytest.approx(14 / 20)


def test_nan_logits_are_not_broken_fast_api():
    x, y = nan_points()
    cfg = FastConfig(eps=0.2, phases=PRESET_PHASES, guard_queries=20)
    run = tmifpe.evaluate_fast(NaNAbove(), x, y, eps=0.2, config=cfg)
    _check_nan_frame(run.frame)
    assert not run.frame["success"].any() and (run.frame["broken_by"] == "").all()
    assert not run.frame["randomized"].any()  # NaN in both clean passes is no randomness


@pytest.mark.parametrize("attack", ["pgd", "fast"])
def test_nan_logits_are_not_broken_cli(attack, nan_model_file, nan_folder, tmp_path):
    out = tmp_path / "out"
    res = invoke("evaluate", "--model", nan_model_file, "--dataset", nan_folder, "--eps", "0.2",
                 "--budget", 3, "--attack", attack, "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    frame = pl.read_parquet(out / "examples.parquet")
    summary = json.loads((out / "summary.json").read_text())
    _check_nan_frame(frame)
    assert summary["robust_acc"] == summary["clean_acc"] == pytest.approx(14 / 20)
    assert summary["n_nonfinite_fp32"] == frame["nonfinite_fp32"].sum() > 0
    assert summary["n_nonfinite_fp64"] == frame["nonfinite_fp64"].sum()
    assert summary["environment"]["fp32_precision"]["matmul"] == "ieee"
    assert read_parquet_metadata(out / "examples.parquet")["environment"] == \
        summary["environment"]


def test_nan_logits_are_not_broken_attack_cell(tmp_path, monkeypatch):
    x, y = nan_points()
    frame, _ = _run_cell(tmp_path, monkeypatch, NaNAbove(), x, y,
                         {"bf16": {"n_targets": 2}, "fp32": {"n_targets": 2}})
    assert frame.height == 4 * 20
    for part in frame.partition_by(["precision", "targeted"]):
        _check_nan_frame(part.sort("example"))


def test_nan_logits_are_not_broken_fast_cell(tmp_path, monkeypatch):
    x, y = nan_points()
    frame, _ = _run_fast_cell(tmp_path, monkeypatch, NaNAbove(), x, y, {})
    _check_nan_frame(frame)


# ---------------------------------------------------------------- CLI conventions


@pytest.mark.parametrize(("text", "value"), [("8/255", 8 / 255), ("0.2", 0.2), (" 1/5 ", 0.2)])
def test_eps_accepts_fractions(text, value):
    assert parse_eps(text) == value


@pytest.mark.parametrize(("args", "message"), [
    (["--eps", "8/zero"], "--eps '8/zero' is not a number"),
    (["--eps", "1/0"], "--eps '1/0' is not a number"),
    (["--threat-model", "L2"], "L2"),
])
def test_cli_rejects_bad_eps_and_threat_model(args, message, nan_model_file, tmp_path):
    res = invoke("evaluate", "--model", nan_model_file, "--dataset", "digits", *args,
                 "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert message in res.stderr
    assert not (tmp_path / "o").exists()


def test_cli_device_defaults_to_auto():
    import inspect

    from tmifpe.cli import evaluate

    assert inspect.signature(evaluate).parameters["device"].default == "auto"


def test_evaluate_runtime_failure_is_exit_1_and_debug_shows_traceback(tmp_path, monkeypatch,
                                                                       digits_cnn):
    """Bad input stays exit 2; a failure while running is one line with exit 1 (no traceback
    unless --debug), and CUDA out of memory names the option to lower."""
    import tmifpe.api as api

    model_file = tmp_path / "m.ts"
    torch.jit.script(digits_cnn).save(str(model_file))
    args = ["evaluate", "--model", model_file, "--dataset", "digits", "--n-examples", 4,
            "--budget", 1, "--device", "cpu", "--out", tmp_path / "o"]
    assert invoke(*args, "--eps", "2/1").exit_code == 2

    def oom(*_a, **_k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(api, "evaluate", oom)
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    assert "lower --batch-size" in res.output and "Traceback" not in res.output

    def bug(*_a, **_k):
        raise KeyError("boom")

    monkeypatch.setattr(api, "evaluate", bug)
    res = invoke(*args)
    assert res.exit_code == 1 and "KeyError" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["--debug", *[str(a) for a in args]])
    assert res.exit_code == 1 and "Traceback" in res.output
    assert not (tmp_path / "o" / "summary.json").exists()
