"""params.yaml validation: every problem at once, each naming key, bad value and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tmifpe.config import ParamsError, load_params, parse_suite

ROOT = Path(__file__).resolve().parents[1]


def _default() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["active"])


def test_shipped_params_are_valid_for_both_suites() -> None:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_params(ROOT / "params.yaml").name == "default"
    assert parse_suite(doc["suites"]["paper"]).name == "paper"
    paper = parse_suite(doc["suites"]["paper"])
    assert paper.dataset_of("c10_standard")[1].eps == pytest.approx(8 / 255)


def test_all_problems_reported_at_once() -> None:
    raw = _default()
    raw["losses"] = ["ce", "focal", "ce"]
    raw["budgets"] = [10, 10, 0]
    raw["datasets"]["digits"]["eps"] = 1.5
    raw["precisions"]["fp8"] = {"n_targets": 1}
    raw["models"] = ["digits_std", "resnet_9000"]
    raw["suite_typo"] = 1
    with pytest.raises(ParamsError) as info:
        parse_suite(raw)
    lines = str(info.value).splitlines()
    text = "\n".join(lines)
    assert len(lines) >= 7, text
    assert "active.losses.1: got 'focal'" in text and "'mifpe' or 'tmifpe'" in text
    assert "active.datasets.digits.eps: got 1.5" in text
    assert "fp8" in text and "'fp16', 'bf16', 'fp32' or 'fp64'" in text
    assert "duplicate value 10" in text and "duplicate value 'ce'" in text
    assert "budgets: 0 must be a positive integer" in text
    assert "'resnet_9000' is not in model_zoo" in text
    assert "suite_typo" in text


def test_grid_keys_reject_dash_and_empty_grid() -> None:
    raw = _default()
    raw["models"] = []
    raw["model_zoo"]["wrn-28"] = raw["model_zoo"]["digits_std"]
    with pytest.raises(ParamsError) as info:
        parse_suite(raw)
    text = str(info.value)
    assert "active.models" in text and "at least 1" in text
    assert "wrn-28" in text


def test_precision_cap_below_every_budget_is_an_error() -> None:
    raw = _default()
    raw["precisions"]["fp16"]["max_budget"] = 5
    with pytest.raises(ParamsError, match=r"precisions.fp16.max_budget: 5 is below every budget"):
        parse_suite(raw)


def test_precisions_for_budget_respects_cap() -> None:
    suite = load_params(ROOT / "params.yaml")
    cap = suite.precisions["fp16"].max_budget
    assert cap is not None
    assert [p.value for p in suite.precisions_for_budget(cap)] == ["fp16", "bf16", "fp32", "fp64"]
    assert [p.value for p in suite.precisions_for_budget(cap + 1)] == ["bf16", "fp32", "fp64"]


def test_ablation_params_validated() -> None:
    raw = _default()
    raw["ablations"] = {"budgets": [20, 20, -1], "precisions": ["fp8"]}
    with pytest.raises(ParamsError) as info:
        parse_suite(raw)
    text = str(info.value)
    assert "active.ablations.budgets" in text and "distinct positive integers" in text
    assert "active.ablations.precisions.0: got 'fp8'" in text
    assert parse_suite(_default()).ablations.budgets == [20]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("active: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
