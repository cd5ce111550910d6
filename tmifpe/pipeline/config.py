"""``params.yaml`` -> frozen, validated configuration, checked before any work starts.

params.yaml is composed by DVC's Hydra integration from ``conf/`` (``dvc exp run``): the chosen
suite (``conf/suite/<name>.yaml``) under ``suite:`` and the ``grid`` derived from it
(tmifpe/pipeline/suite_grid.py), which the stages of dvc.yaml iterate over and depend on
item by item.
``dvc repro`` reads the committed params.yaml as is. Every setting that changes results is
required here (no silent defaults DVC could not see). Every problem is reported at once, one
line each, naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from tmifpe.attacks.schedule import Schedule
from tmifpe.losses import LossName
from tmifpe.params import DatasetParams, Frozen, GridKey, ModelParams
from tmifpe.pipeline.fast_config import FastParams
from tmifpe.pipeline.param_types import TStarRule
from tmifpe.pipeline.suite_grid import derive_grid, precision_plan
from tmifpe.precision import Precision


class PrecisionParams(Frozen):
    # Budgets above this are not run at this dtype (None: all). A cap rather than a list, so that
    # adding a budget to the grid leaves the params of the existing cells unchanged.
    max_budget: int | None = Field(ge=1)
    n_targets: int = Field(ge=0, le=99)  # 0: no targeted attack at this dtype
    n_examples: int | None = Field(gt=0)  # first n of the dataset's points (None: all)


class AttackParams(Frozen):
    schedule: Schedule
    momentum: float = Field(ge=0.0, le=1.0)
    restarts: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    tstar_rule: TStarRule
    seed: int


class AutoAttackParams(Frozen):
    seed: int
    batch_size: int = Field(ge=1)


class AblationParams(Frozen):
    """The ablations stage (phase detection, t* rules, PGD vs APGD): its budgets and precisions."""

    budgets: list[int] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError(f"expected distinct positive integers, got {v}")
        return v


class SuiteParams(Frozen):
    name: GridKey
    device: str
    threads: int = Field(ge=1)
    hash_seed: int = Field(ge=0, le=4294967295)  # PYTHONHASHSEED of the stage processes
    data_dir: str  # raw downloads, checked by MD5
    datasets: dict[GridKey, DatasetParams] = Field(min_length=1)
    model_zoo: dict[GridKey, ModelParams] = Field(min_length=1)
    models: list[GridKey] = Field(min_length=1)
    losses: list[LossName] = Field(min_length=1)
    budgets: list[int] = Field(min_length=1)
    precisions: dict[Precision, PrecisionParams] = Field(min_length=1)
    attack: AttackParams
    autoattack: AutoAttackParams
    ablations: AblationParams
    fast: FastParams  # the fast preset (tmifpe/pipeline/fast_config.py)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        # `auto` would be tracked (DVC params, resume keys) as the same string on a CPU and a GPU
        if v == "auto":
            raise ValueError("'auto' differs per machine, so CPU and GPU results would share DVC's "
                             "run-cache and checkpoint keys; expected cpu or cuda[:N]")
        if v not in ("cpu", "cuda") and re.fullmatch(r"cuda:\d+", v) is None:
            raise ValueError("expected cpu or cuda[:N]")
        return v

    # --- derived views used by the stages -------------------------------------------------
    def dataset_of(self, model: str) -> tuple[str, DatasetParams]:
        key = self.model_zoo[model].dataset
        return key, self.datasets[key]

    def model_and_dataset(self, model: str) -> tuple[ModelParams, DatasetParams]:
        """What :func:`tmifpe.models.zoo.load_model` takes for grid key ``model``."""
        return self.model_zoo[model], self.dataset_of(model)[1]

    def precisions_for_budget(self, budget: int) -> list[Precision]:
        """Precisions run at ``budget`` (caps applied), in canonical order (= grid.precisions)."""
        raw = {p.value: pp.model_dump(mode="json") for p, pp in self.precisions.items()}
        return [Precision(p) for p in precision_plan(raw, budget)]


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    """Checks across keys, on the raw mapping so they run even when field checks fail."""

    def as_list(v: Any) -> list[Any]:
        return v if isinstance(v, list) else []

    def as_dict(v: Any) -> dict[Any, Any]:
        return v if isinstance(v, dict) else {}

    budgets = as_list(raw.get("budgets"))
    zoo, datasets = as_dict(raw.get("model_zoo")), as_dict(raw.get("datasets"))
    problems = [*_duplicates("models", as_list(raw.get("models")))]
    problems += _duplicates("losses", as_list(raw.get("losses")))
    problems += _duplicates("budgets", budgets)
    problems += [f"budgets: {b!r} must be a positive integer" for b in budgets
                 if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    for key in as_list(raw.get("models")):
        if key not in zoo:
            problems.append(f"models: {key!r} is not in model_zoo ({', '.join(map(str, zoo))})")
        elif as_dict(zoo[key]).get("dataset") not in datasets:
            ds = as_dict(zoo[key]).get("dataset")
            problems.append(f"model_zoo.{key}.dataset: {ds!r} is not in datasets")
    ints = [b for b in budgets if isinstance(b, int)]
    for prec, pp in as_dict(raw.get("precisions")).items():
        cap = as_dict(pp).get("max_budget")
        if isinstance(cap, int) and ints and cap < min(ints):
            problems.append(f"precisions.{prec}.max_budget: {cap} is below every budget "
                            f"{budgets}: that precision would run nothing")
    return problems


def _duplicates(key: str, values: list[Any]) -> list[str]:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    shown = [getattr(v, "value", v) for v in dup]
    return [f"{key}: duplicate value {v!r}" for v in shown]


class ParamsError(ValueError):
    """params.yaml is invalid; ``str(err)`` lists every problem, one per line."""


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if p != "[key]"]  # pydantic marks bad dict keys
        loc = ".".join(["suite", *parts])
        msg = e["msg"].removeprefix("Value error, ")
        bad = e.get("input")
        shown = "" if isinstance(bad, dict) else f" got {bad!r}:"
        lines.append(f"params.yaml: {loc}:{shown} {msg}")
    return lines


def parse_suite(raw: Any) -> SuiteParams:
    """Validate a suite mapping; raises ParamsError listing all problems."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: suite: got {type(raw).__name__}: expected a mapping "
                          "(compose params.yaml with `dvc exp run -S suite=<name>`)")
    problems = [f"params.yaml: suite.{p}" for p in _cross_checks(raw)]
    try:
        suite = SuiteParams.model_validate(raw)
    except ValidationError as err:
        problems = [*_format_errors(err), *problems]
    if problems:
        raise ParamsError("\n".join(problems))
    return suite


def _grid_problems(got: Any, expected: dict[str, Any]) -> list[str]:
    """One line per stale entry of the derived ``grid`` section."""
    if not isinstance(got, dict):
        return [f"params.yaml: grid: got {got!r}: expected the grid derived from `suite` "
                "(params.yaml is composed from conf/ by `dvc exp run`)"]
    problems = []
    for part in sorted(set(got) | set(expected)):
        have, want = got.get(part), expected.get(part)
        if have == want:
            continue
        keys = sorted(set(have or {}) | set(want or {}), key=str) if isinstance(have, dict) \
            and isinstance(want, dict) else [None]
        for key in keys:
            h = have if key is None else have.get(key)
            w = want if key is None else want.get(key)
            if h != w:
                where = part if key is None else f"{part}.{key}"
                problems.append(f"params.yaml: grid.{where}: got {h!r}, expected {w!r} (derived "
                                "from `suite`; compose params.yaml with `dvc exp run`, "
                                "do not edit it by hand)")
    return problems


def load_params(path: Path = Path("params.yaml")) -> SuiteParams:
    """Read ``params.yaml``: the validated suite, after checking its derived ``grid``."""
    if not path.exists():
        raise ParamsError(f"params file {path} not found (run from the project root)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or "suite" not in doc:
        raise ParamsError(f"{path}: missing top-level key `suite` (compose params.yaml from "
                          "conf/ with `dvc exp run`)")
    suite = parse_suite(doc["suite"])
    problems = _grid_problems(doc.get("grid"), derive_grid(doc["suite"]))
    if problems:
        raise ParamsError("\n".join(problems))
    return suite
