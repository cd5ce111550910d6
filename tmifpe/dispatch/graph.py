"""The task graph of a run: one task per DVC stage of the grid, with its upstream stages.

Built from the project's own grid (the validated suite), not from DVC's output. ``KINDS`` is the
one table to extend when ``dvc.yaml`` gains a matrix stage: its matrix axes (in ``dvc.yaml``
order, which fixes the stage name ``kind@a-b-c``) and the kinds it needs first. An upstream
stage is needed when it agrees with the task on every axis they share; one that shares no axis
is needed whatever its item; a model's item also carries its dataset, so ``model@m`` needs only
``data@<its dataset>``.
``aggregate`` and ``report`` are not tasks: they run at the end in the user's workspace.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tmifpe.pipeline.config import SuiteParams, load_params

Item = tuple[tuple[str, str], ...]  # (axis, value) pairs of a task


@dataclass(frozen=True)
class Kind:
    axes: tuple[str, ...]  # matrix keys of the stage in dvc.yaml, in order
    upstream: tuple[str, ...] = ()  # kinds whose matching stages must be done first
    gpu: bool = True  # asks for a GPU worker when the run has GPUs


KINDS: dict[str, Kind] = {
    "data": Kind(("dataset",), gpu=False),
    "model": Kind(("model",), ("data",)),
    "attack": Kind(("model", "loss"), ("model",)),  # every budget in one stage
    "autoattack": Kind(("model",), ("model",)),
    "diagnostics": Kind(("model",), ("model",)),
    "ablations": Kind(("model",), ("model",)),
    "fast": Kind(("model",), ("model",)),
}
FINAL_STAGES = ("aggregate", "report")  # run by `dvc repro` in the user's workspace

AXES: dict[str, Callable[[SuiteParams], list[str]]] = {
    "dataset": lambda s: list(s.datasets),
    "model": lambda s: list(s.models),
    "loss": lambda s: [loss.value for loss in s.losses],
}


@dataclass(frozen=True)
class Task:
    stage: str  # DVC stage name, e.g. attack@digits_std-ce
    kind: str
    item: tuple[tuple[str, str], ...]  # (axis, value) pairs
    upstream: tuple[str, ...]  # stages that must be done first (direct)
    chain: tuple[str, ...]  # every stage the workspace needs, upstream first, this one last

    @property
    def gpu(self) -> bool:
        return KINDS[self.kind].gpu


def read_suite(params: Path = Path("params.yaml")) -> SuiteParams:
    """The suite whose grid is dispatched: the one place that asks the config loader."""
    return load_params(params)


def build_tasks(suite: SuiteParams, kinds: dict[str, Kind] = KINDS) -> list[Task]:
    """Every task of the grid in dependency order (each after all of its upstream tasks)."""
    tasks: dict[str, Task] = {}
    for kind in _kind_order(kinds):
        spec = kinds[kind]
        for values in itertools.product(*(AXES[a](suite) for a in spec.axes)):
            item = tuple(zip(spec.axes, values, strict=True))
            upstream = tuple(t.stage for t in tasks.values()
                             if t.kind in spec.upstream
                             and _agrees(_with_dataset(suite, t.item), _with_dataset(suite, item)))
            chain: list[str] = []
            for up in upstream:
                chain += [s for s in tasks[up].chain if s not in chain]
            stage = f"{kind}@{'-'.join(values)}"
            tasks[stage] = Task(stage, kind, item, upstream, (*chain, stage))
    return list(tasks.values())


def _with_dataset(suite: SuiteParams, item: Item) -> Item:
    """``item`` plus the dataset its model is evaluated on: a model's stages need only the data
    stage of that dataset (dvc.yaml: ``data/eval/<dataset>.pt``), not every dataset's."""
    model = dict(item).get("model")
    if model is None or "dataset" in dict(item):
        return item
    return (*item, ("dataset", suite.dataset_of(model)[0]))


def _agrees(a: Item, b: Item) -> bool:
    da, db = dict(a), dict(b)
    return all(da[k] == db[k] for k in da.keys() & db.keys())


def _kind_order(kinds: dict[str, Kind]) -> list[str]:
    """Kinds in dependency order; a cycle or an unknown upstream kind is an error."""
    order: list[str] = []
    pending = dict(kinds)
    while pending:
        ready = [k for k, v in pending.items() if all(u in order for u in v.upstream)]
        if not ready:
            raise ValueError(f"task kinds {sorted(pending)}: unknown upstream kind or a cycle")
        order += ready
        for k in ready:
            del pending[k]
    return order
