"""tmifpe.evaluate: verified per-example results on any model, in the attack cells' schema."""

from __future__ import annotations

import polars as pl
import pytest
import torch

import tmifpe
from tmifpe.aggregate import aggregate
from tmifpe.api import EvalResult
from tmifpe.evaluation.schema import CELL_SCHEMA
from tmifpe.verify import in_threat_model


@pytest.fixture(scope="module")
def points(digits):
    return digits.x_test[:40], digits.y_test[:40]


@pytest.fixture(scope="module")
def result(digits_cnn, points) -> EvalResult:
    x, y = points
    return tmifpe.evaluate(digits_cnn, x, y, loss="tmifpe", eps=0.2, budget=10)


def test_exported_from_package():
    assert tmifpe.evaluate is tmifpe.api.evaluate and tmifpe.EvalResult is EvalResult


def test_verdicts_are_reverified_by_a_fresh_fp32_pass(digits_cnn, points, result):
    x, y = points
    with torch.no_grad():
        clean_pred = digits_cnn(x).argmax(1)
        adv_pred = digits_cnn(result.x_adv).argmax(1)
    assert torch.equal(result.clean_correct, clean_pred == y)
    inside = in_threat_model(x, result.x_adv, 0.2)
    assert torch.equal(result.valid, inside)
    expected_robust = (clean_pred == y) & ~(inside & (adv_pred != y))
    assert torch.equal(result.robust, expected_robust)
    assert 0 < result.robust_acc < result.clean_acc  # the attack broke some, not all, points
    assert result.robust_acc == pytest.approx(expected_robust.float().mean().item())


def test_frame_has_the_cells_schema_and_aggregates(result, tmp_path):
    frame = result.frame(dataset="digits", model="cnn")
    assert dict(frame.schema) == CELL_SCHEMA
    path = tmp_path / "examples.parquet"
    frame.write_parquet(path)
    tables = aggregate([path], [], [])
    row = tables["robust_accuracy"].row(0, named=True)
    assert row["robust_acc"] == pytest.approx(result.robust_acc)
    assert row["n"] == 40 and row["loss"] == "tmifpe" and row["budget"] == 10


def test_deterministic(digits_cnn, points, result):
    x, y = points
    again = tmifpe.evaluate(digits_cnn, x, y, loss="tmifpe", eps=0.2, budget=10)
    assert again.frame().equals(result.frame())
    assert torch.equal(again.x_adv, result.x_adv)


def test_targeted_uses_clean_ranks_and_records_them(digits_cnn, points):
    x, y = points
    res = tmifpe.evaluate(digits_cnn, x, y, loss="ce", eps=0.2, budget=5, targets=2,
                          precision="bf16")
    frame = res.frame()
    assert frame["targeted"].all() and (frame["n_targets"] == 2).all()
    assert (frame["precision"] == "bf16").all()
    with torch.no_grad():
        ranks = digits_cnn(x).argsort(dim=1, descending=True)[:, 1:3]
    hit = res.success_target >= 0
    assert hit.any()
    assert all(int(t) in ranks[i].tolist() for i, t in zip(hit.nonzero().squeeze(1),
                                                          res.success_target[hit], strict=True))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"loss": "xent"}, "unknown loss 'xent'"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"eps": 0.0}, "eps must be in"),
    ({"budget": 0}, "steps must be >= 1"),
    ({"targets": -1}, "targets must be"),
    ({"schedule": "exp"}, "unknown schedule 'exp'"),
])
def test_bad_arguments_name_the_value(digits_cnn, points, kwargs, match):
    x, y = points
    args = {"eps": 0.2, "budget": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        tmifpe.evaluate(digits_cnn, x[:4], y[:4], **args)


def test_bad_points_are_rejected(digits_cnn, points):
    x, y = points
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        tmifpe.evaluate(digits_cnn, x[:4] * 255, y[:4], eps=0.2)
    with pytest.raises(ValueError, match="int64"):
        tmifpe.evaluate(digits_cnn, x[:4], y[:4].int(), eps=0.2)
    with pytest.raises(ValueError, match="logits"):
        tmifpe.evaluate(digits_cnn, x[:4], torch.full((4,), 12), eps=0.2)


def test_progress_reports_every_batch(digits_cnn, points):
    x, y = points
    seen = []
    tmifpe.evaluate(digits_cnn, x, y, eps=0.2, budget=2, batch_size=16,
                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(16, 40), (32, 40), (40, 40)]


def test_result_frame_matches_tensors(result):
    frame = result.frame()
    assert frame.height == result.n
    assert frame["robust_fp32"].to_list() == result.robust.tolist()
    assert pl.Series(frame["n_forward"] + frame["n_backward"]).mean() == pytest.approx(
        result.passes_per_point)
