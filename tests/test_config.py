"""params.yaml validation: every problem at once, each naming key, bad value and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import get_args

import pytest
import yaml

from tmifpe.losses.tmifpe.tstar import PHASE23_RULES
from tmifpe.pipeline.config import ParamsError, load_params, parse_suite
from tmifpe.pipeline.param_types import TStarRule
from tmifpe.pipeline.suite_grid import PRECISION_ORDER, derive_grid
from tmifpe.precision import Precision

ROOT = Path(__file__).resolve().parents[1]


def _default() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["suite"])


def test_shipped_params_are_valid_for_both_suites() -> None:
    assert load_params(ROOT / "params.yaml").name == "default"
    paper = parse_suite(yaml.safe_load((ROOT / "conf/suite/paper.yaml").read_text()))
    assert paper.name == "paper"
    assert paper.dataset_of("c10_standard")[1].eps == pytest.approx(8 / 255)


def test_device_is_a_kind_never_auto() -> None:
    """`auto` would be one DVC param value and one resume key for CPU and GPU results."""
    assert load_params(ROOT / "params.yaml").device == "cpu"
    assert yaml.safe_load((ROOT / "conf/suite/paper.yaml").read_text())["device"] == "cuda"
    for device in ("cpu", "cuda", "cuda:1"):
        assert parse_suite({**_default(), "device": device}).device == device
    for device, why in (("auto", "'auto' differs per machine"), ("gpu", "got 'gpu'"),
                        ("cuda:x", "got 'cuda:x'")):
        with pytest.raises(ParamsError) as err:
            parse_suite({**_default(), "device": device})
        line, = str(err.value).splitlines()
        assert line.startswith("params.yaml: suite.device:") and why in line, line
        assert line.endswith("expected cpu or cuda[:N]"), line


def test_tstar_rule_type_is_the_solvers_rules() -> None:
    assert get_args(TStarRule) == PHASE23_RULES


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
    assert "suite.losses.1: got 'focal'" in text and "'mifpe' or 'tmifpe'" in text
    assert "suite.datasets.digits.eps: got 1.5" in text
    assert "fp8" in text and "'fp16', 'bf16', 'fp32', 'fp64', 'amp-fp16' or 'amp-bf16'" in text
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
    assert "suite.models" in text and "at least 1" in text
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
    assert [p.value for p in suite.precisions_for_budget(cap)] == [
        "fp16", "bf16", "fp32", "fp64", "amp-fp16", "amp-bf16"]
    # every low/high precision is capped at fp16's budget in the default suite: fp32 alone above
    assert [p.value for p in suite.precisions_for_budget(cap + 1)] == ["fp32"]


def test_ablation_params_validated() -> None:
    raw = _default()
    raw["ablations"] = {"budgets": [20, 20, -1], "precisions": ["fp8"]}
    with pytest.raises(ParamsError) as info:
        parse_suite(raw)
    text = str(info.value)
    assert "suite.ablations.budgets" in text and "distinct positive integers" in text
    assert "suite.ablations.precisions.0: got 'fp8'" in text
    assert parse_suite(_default()).ablations.budgets == [20]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("suite: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_settings_that_change_results_have_no_hidden_default() -> None:
    raw = _default()
    del raw["attack"]["momentum"], raw["threads"], raw["precisions"]["fp32"]["n_examples"]
    del raw["model_zoo"]["digits_std"]["batch_size"], raw["datasets"]["digits"]["split_seed"]
    with pytest.raises(ParamsError) as info:
        parse_suite(raw)
    text = str(info.value)
    for key in ("suite.attack.momentum", "suite.threads", "suite.precisions.fp32.n_examples"):
        assert f"{key}: Field required" in text, text
    assert "suite.model_zoo.digits_std: a trained model needs batch_size" in text
    assert "suite.datasets.digits: a digits dataset needs `test_size` and `split_seed`" in text


def test_stale_grid_is_an_error_naming_the_entry(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["suite"]["precisions"]["fp64"]["max_budget"] = 50  # hand edit without recomposing
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("params.yaml: grid.precisions.b50: got "), lines
    assert "dvc exp run" in lines[0]
    doc["grid"] = derive_grid(doc["suite"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert Precision.FP64 in load_params(path).precisions_for_budget(50)


def test_precision_order_is_the_enum_order() -> None:
    assert tuple(p.value for p in Precision) == PRECISION_ORDER
