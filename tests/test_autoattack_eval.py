"""The AutoAttack runner below both doors (tmifpe.evaluate_autoattack and the DVC cell): NaN
logits are never a break, the runtime contract is set and restored, the caller's model is left
alone, and both doors give the same per-example frame."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch
from support.suites import complete
from torch import Tensor, nn

import tmifpe.pipeline.autoattack_cell as cell
from tmifpe.data.sources import save_tensors
from tmifpe.evaluation.autoattack import evaluate_autoattack
from tmifpe.evaluation.cost import autoattack_passes
from tmifpe.evaluation.schema import AA_SCHEMA
from tmifpe.pipeline.config import parse_suite
from tmifpe.runtime import fp32_precision_state
from tmifpe.storage import read_parquet_metadata

pytestmark = pytest.mark.usefixtures("single_thread")
EPS = 0.1
NAN_ABOVE = 0.6  # a pixel brighter than this makes every logit NaN


class NaNAbove(nn.Module):
    """Linear 10-class model on 1×8×8 pixels whose logits are all NaN once any pixel exceeds
    ``NAN_ABOVE``; records the TF32 state of every forward call. Finite logits: class 1 vs 2
    decided by pixel 1 (z_1 − z_2 = 40·(x_1 − 0.25)), every other class far below."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[1, 1], self.lin.weight[2, 1] = 20.0, -20.0
            self.lin.bias.copy_(torch.tensor([-10.0, -5.0, 5.0] + [-5.0] * 7))
        self.seen: list[dict[str, str]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(fp32_precision_state())
        z = self.lin(x.flatten(1))
        bright = x.flatten(1).amax(dim=1, keepdim=True) > NAN_ABOVE
        return torch.where(bright, torch.full_like(z, math.nan), z)


def _points() -> tuple[Tensor, Tensor, NaNAbove]:
    """16 points: 8 dim ones (max 0.45: the eps-ball stays below NAN_ABOVE) with pixel 1 within
    eps of the class-1/2 boundary (breakable), and 8 with pixel 1 at 0 (class 2, unbreakable by
    finite logits) and one pixel at 0.55 (the ball reaches 0.65: attacks land on NaN logits,
    whose argmax 0 is not the label); labels = the model's clean predictions (finite)."""
    gen = torch.Generator().manual_seed(1)
    x = 0.45 * torch.rand(16, 1, 8, 8, generator=gen)
    x[:8, 0, 0, 1] = 0.2 + 0.1 * torch.rand(8, generator=gen)
    x[8:, 0, 0, 1] = 0.0
    x[8:, 0, 0, 0] = 0.55
    model = NaNAbove().eval()
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    model.seen.clear()
    return x, y, model


def _check_nan_verdicts(frame: pl.DataFrame) -> None:
    assert frame.schema == pl.Schema(AA_SCHEMA)
    assert frame["clean_correct"].all()
    nan = frame.filter(pl.col("nonfinite_fp32"))
    # the attacks did land on NaN logits, and such points are robust, broken by nothing
    assert nan.height > 0
    assert nan["robust_fp32"].all() and (nan["broken_by"] == "").all()
    assert nan["valid"].all() and nan["robust_after_square"].all()
    assert nan["nonfinite_fp64"].all()
    # the dim half can never produce NaN logits
    assert not frame[:8]["nonfinite_fp32"].any()
    # not vacuous: the cascade does break finite points of this model
    assert (~frame["robust_fp32"]).any()
    broken = frame.filter(~pl.col("robust_fp32"))
    assert (broken["broken_by"] != "").all() and not broken["nonfinite_fp32"].any()


def test_nan_logits_are_never_broken_via_api():
    x, y, model = _points()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev = evaluate_autoattack(model, x, y, eps=EPS, seed=0, batch_size=8, device="cpu",
                             threads=1, dataset="synthetic", model_name="nan_above")
    frame = ev.frame()
    _check_nan_verdicts(frame)
    assert ev.n_nonfinite == int(frame["nonfinite_fp32"].sum()) > 0
    assert ev.robust_acc == frame["robust_fp32"].mean() and ev.clean_acc == 1.0
    assert ev.passes_per_point == frame.select(autoattack_passes().mean()).item() > 0
    assert ev.wall_time_s > 0 and set(ev.stage_wall_time_s) == {
        "apgd-ce", "apgd-t", "fab-t", "square"}
    assert ev.environment["device"] == "cpu" and ev.environment["threads"] == 1
    assert (frame["dataset"] == "synthetic").all() and (frame["model"] == "nan_above").all()
    # the caller's model is untouched: still eval mode, same weights
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_logits_are_never_broken_via_cell(tmp_path: Path, monkeypatch):
    x, y, model = _points()
    suite = parse_suite(complete({
        "name": "t", "threads": 1,
        "datasets": {"digits": {"source": "digits", "n_examples": 16, "eps": EPS}},
        "model_zoo": {"nan_above": {"source": "trained", "dataset": "digits"}},
        "models": ["nan_above"], "losses": ["ce"], "budgets": [2],
        "precisions": {"fp32": {"n_targets": 0}},
        "autoattack": {"seed": 0, "batch_size": 8}}))
    data = tmp_path / "digits.pt"
    save_tensors({"x_test": x, "y_test": y}, data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cell, "load_model", lambda key, params, ds: model)
    out = tmp_path / "results" / "nan_above.parquet"
    frame = cell.run_autoattack_cell(suite, "nan_above", data_path=data, out=out,
                                     timing_out=out.with_suffix(".timing.json"),
                                     work_root=tmp_path / "work")
    _check_nan_verdicts(frame)
    assert pl.read_parquet(out).equals(frame)
    env = read_parquet_metadata(out)["environment"]
    assert env["device"] == "cpu" and env["fp32_precision"]["matmul"] == "ieee"
    assert not list((tmp_path / "work").glob("*.pt"))  # finished state removed
    # the same run through the API door gives the same per-example rows
    api = evaluate_autoattack(model, x, y, eps=EPS, seed=0, batch_size=8, device="cpu",
                              threads=1, dataset="digits", model_name="nan_above").frame()
    assert api.equals(frame)


def test_runtime_contract_set_during_and_restored_after():
    x, y, model = _points()
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    saved = [b.fp32_precision for b in backends]
    threads = torch.get_num_threads()
    try:
        for b in backends:
            b.fp32_precision = "tf32"
        evaluate_autoattack(model, x[:4], y[:4], eps=EPS, batch_size=4, device="cpu",
                            threads=2)
        assert model.seen, "the model was never called"
        assert all(s == {"matmul": "ieee", "cudnn.conv": "ieee", "cudnn.rnn": "ieee"}
                   for s in model.seen)
        assert [b.fp32_precision for b in backends] == ["tf32"] * 3
        assert torch.get_num_threads() == threads
    finally:
        for b, v in zip(backends, saved, strict=True):
            b.fp32_precision = v


def test_train_mode_model_is_rejected_and_left_in_train_mode():
    x, y, model = _points()
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        evaluate_autoattack(model, x, y, eps=EPS, device="cpu")
    assert model.training
