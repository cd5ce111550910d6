"""The params types the library's data and model loaders take: what a dataset and a model are.

Bottom floor: pydantic only, no pipeline code, so ``tmifpe.data`` and ``tmifpe.models`` can take
these without importing the pipeline (``tmifpe.pipeline.config`` builds the suite from them).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GridKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]  # `-` would break DVC matrix names
TRAINING_KEYS = ("arch", "epochs", "lr", "batch_size", "adv_eps", "adv_steps", "seed")


class Frozen(BaseModel):
    """Immutable params section; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetParams(Frozen):
    source: Literal["digits", "mnist", "cifar10", "cifar100"]
    n_examples: int = Field(gt=0, le=10000)
    eps: float = Field(gt=0.0, le=1.0)
    test_size: float | None = Field(default=None, gt=0.0, lt=1.0)  # digits only (required)
    split_seed: int | None = None  # digits only (required)
    # file name -> MD5 to require instead of the published one (a re-packed or staged copy)
    md5: dict[str, str] | None = None

    @model_validator(mode="after")
    def _digits_split(self) -> DatasetParams:
        if self.source == "digits" and (self.test_size is None or self.split_seed is None):
            raise ValueError("a digits dataset needs `test_size` and `split_seed` (its split)")
        return self


class ModelParams(Frozen):
    source: Literal["trained", "robustbench", "pyautoattack_resnet18"]
    dataset: GridKey
    id: str | None = None  # RobustBench model ID
    # training recipe: required for `trained` models, unused (null) otherwise
    arch: Literal["small_cnn"] | None = None
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)
    batch_size: int | None = Field(default=None, ge=1)
    adv_eps: float | None = Field(default=None, ge=0.0, le=1.0)
    adv_steps: int | None = Field(default=None, ge=1)
    seed: int | None = None

    @model_validator(mode="after")
    def _complete(self) -> ModelParams:
        if self.source == "robustbench" and not self.id:
            raise ValueError("a robustbench model needs `id` (its RobustBench model name)")
        if self.source == "trained":
            missing = [k for k in TRAINING_KEYS if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a trained model needs {', '.join(missing)} "
                                 f"(expected all of {', '.join(TRAINING_KEYS)})")
        return self
