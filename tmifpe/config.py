"""``params.yaml`` -> frozen, validated configuration, checked before any work starts.

The file holds both suites under ``suites:`` and selects one with a YAML alias on the line
``active: *default`` (or ``*paper``). DVC reads the resolved ``active`` section, so the stages of
``dvc.yaml`` never change when the suite does. Every problem is reported at once, one line each,
naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tmifpe.attacks.schedule import Schedule
from tmifpe.fast_config import FastParams
from tmifpe.losses import LossName
from tmifpe.losses.tmifpe.tstar import PHASE23_RULES
from tmifpe.precision import Precision

GridKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]  # `-` would break DVC matrix names


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetParams(_Frozen):
    source: Literal["digits", "mnist", "cifar10", "cifar100"]
    n_examples: int = Field(gt=0, le=10000)
    eps: float = Field(gt=0.0, le=1.0)
    test_size: float = Field(default=0.25, gt=0.0, lt=1.0)  # digits only
    split_seed: int = 0  # digits only
    # file name -> MD5 to require instead of the published one (a re-packed or staged copy)
    md5: dict[str, str] | None = None


class ModelParams(_Frozen):
    source: Literal["trained", "robustbench", "pyautoattack_resnet18"]
    dataset: GridKey
    id: str | None = None  # RobustBench model ID
    arch: Literal["small_cnn"] = "small_cnn"
    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    batch_size: int = Field(default=64, ge=1)
    adv_eps: float = Field(default=0.0, ge=0.0, le=1.0)
    adv_steps: int = Field(default=7, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _id_for_robustbench(self) -> ModelParams:
        if self.source == "robustbench" and not self.id:
            raise ValueError("a robustbench model needs `id` (its RobustBench model name)")
        return self


class PrecisionParams(_Frozen):
    # Budgets above this are not run at this dtype (None: all). A cap rather than a list, so that
    # adding a budget to the grid leaves the params of the existing cells unchanged.
    max_budget: int | None = Field(default=None, ge=1)
    n_targets: int = Field(default=9, ge=0, le=99)  # 0: no targeted attack at this dtype
    n_examples: int | None = Field(default=None, gt=0)  # first n of the dataset's points


class AttackParams(_Frozen):
    schedule: Schedule = Schedule.COSINE
    momentum: float = Field(default=0.75, ge=0.0, le=1.0)
    restarts: int = Field(default=1, ge=1)
    batch_size: int = Field(default=500, ge=1)
    tstar_rule: str = "coef"
    seed: int = 0

    @field_validator("tstar_rule")
    @classmethod
    def _rule(cls, v: str) -> str:
        if v not in PHASE23_RULES:
            raise ValueError(f"expected one of {', '.join(PHASE23_RULES)}")
        return v


class AutoAttackParams(_Frozen):
    seed: int = 0
    batch_size: int = Field(default=500, ge=1)


class AblationParams(_Frozen):
    """The ablations stage (phase detection, t* rules, PGD vs APGD): its budgets and precisions."""

    budgets: list[int] = Field(default=[20, 50], min_length=1)
    precisions: list[Precision] = Field(default=[Precision.FP32], min_length=1)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError(f"expected distinct positive integers, got {v}")
        return v


class SuiteParams(_Frozen):
    name: GridKey
    device: str = "cpu"
    threads: int = Field(default=2, ge=1)
    data_dir: str = "data/raw"
    model_dir: str = "models/robustbench"
    datasets: dict[GridKey, DatasetParams] = Field(min_length=1)
    model_zoo: dict[GridKey, ModelParams] = Field(min_length=1)
    models: list[GridKey] = Field(min_length=1)
    losses: list[LossName] = Field(min_length=1)
    budgets: list[int] = Field(min_length=1)
    precisions: dict[Precision, PrecisionParams] = Field(min_length=1)
    attack: AttackParams = AttackParams()
    autoattack: AutoAttackParams = AutoAttackParams()
    ablations: AblationParams = AblationParams()
    fast: FastParams = FastParams()  # the fast preset (tmifpe/fast_config.py)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "auto") and not v.startswith("cuda:"):
            raise ValueError("expected cpu, cuda, cuda:N or auto")
        return v

    # --- derived views used by the stages -------------------------------------------------
    def dataset_of(self, model: str) -> tuple[str, DatasetParams]:
        key = self.model_zoo[model].dataset
        return key, self.datasets[key]

    def precisions_for_budget(self, budget: int) -> list[Precision]:
        order = list(Precision)
        return sorted((p for p, pp in self.precisions.items()
                       if pp.max_budget is None or budget <= pp.max_budget),
                      key=order.index)


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
        loc = ".".join(["active", *parts])
        msg = e["msg"].removeprefix("Value error, ")
        bad = e.get("input")
        shown = "" if isinstance(bad, dict) else f" got {bad!r}:"
        lines.append(f"params.yaml: {loc}:{shown} {msg}")
    return lines


def parse_suite(raw: Any) -> SuiteParams:
    """Validate the resolved ``active`` section; raises ParamsError listing all problems."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: `active` must be a mapping (e.g. `active: *default`)")
    problems = [f"params.yaml: active.{p}" for p in _cross_checks(raw)]
    try:
        suite = SuiteParams.model_validate(raw)
    except ValidationError as err:
        problems = [*_format_errors(err), *problems]
    if problems:
        raise ParamsError("\n".join(problems))
    return suite


def load_params(path: Path = Path("params.yaml")) -> SuiteParams:
    """Read ``params.yaml`` and return the validated active suite."""
    if not path.exists():
        raise ParamsError(f"params file {path} not found (run from the project root)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or "active" not in doc:
        raise ParamsError(f"{path}: missing top-level key `active` (e.g. `active: *default`)")
    return parse_suite(doc["active"])
