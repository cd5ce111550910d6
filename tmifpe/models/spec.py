"""``--model`` specs of ``tmifpe evaluate``: a ``torch.export`` archive (``.pt2``), a TorchScript
file, ``package.module:factory`` (+ weights), or a RobustBench model ID. Each resolves to a
float32 eval-mode ``nn.Module`` taking pixels in [0,1]; a bad spec raises
:class:`ModelSpecError` with a one-line message.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from tmifpe._compat.autoattack_alias import import_robustbench

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS = ("Linf", "L2", "corruptions")


class ModelSpecError(ValueError):
    """The --model/--weights arguments do not name a loadable model."""


@dataclass(frozen=True)
class ModelSpec:
    kind: Literal["export", "torchscript", "factory", "robustbench"]
    value: str  # the path, the ``module:factory`` string or the RobustBench ID

    @property
    def name(self) -> str:
        """Short name for result files (file stem, factory name or the ID)."""
        if self.kind in ("export", "torchscript"):
            return Path(self.value).stem
        return self.value.rsplit(":", 1)[-1] if self.kind == "factory" else self.value


def parse_model_spec(spec: str, weights: Path | None = None) -> ModelSpec:
    """Classify ``spec``: an existing ``.pt2`` file -> torch.export archive; another existing file
    -> TorchScript; ``pkg.mod:fn`` -> factory; else a RobustBench ID (checked against its model
    zoo when loaded)."""
    if not spec:
        raise ModelSpecError("--model is empty; expected a torch.export .pt2 file, a TorchScript "
                             "file, package.module:factory or a RobustBench model ID")
    path = Path(spec)
    if path.is_file() and path.suffix == ".pt2":
        if weights is not None:
            raise ModelSpecError(f"--weights {weights} given with torch.export archive {spec}; "
                                 "the archive holds its weights (drop --weights)")
        return ModelSpec("export", spec)
    if path.is_file():
        if weights is not None:
            raise ModelSpecError(f"--weights {weights} given with TorchScript file {spec}; a "
                                 "TorchScript archive holds its weights (drop --weights)")
        return ModelSpec("torchscript", spec)
    if _FACTORY.match(spec):
        return ModelSpec("factory", spec)
    if weights is not None:
        raise ModelSpecError(f"--weights is only for package.module:factory models, got --model "
                             f"{spec!r}")
    if path.suffix in {".pt", ".pth", ".pt2", ".ts", ".jit"} or "/" in spec:
        raise ModelSpecError(f"model file {spec} not found")
    return ModelSpec("robustbench", spec)


def load_spec_model(
    spec: ModelSpec, *, weights: Path | None = None, dataset: str = "cifar10",
    threat_model: str = "Linf", model_dir: Path = Path("models/robustbench"),
) -> nn.Module:
    """The model of ``spec`` in eval mode, float32, on CPU (a torch.export graph is in the mode
    it was exported in: export the model in eval mode)."""
    if spec.kind == "export":
        model = _load_export(Path(spec.value))
    elif spec.kind == "torchscript":
        model = _load_torchscript(Path(spec.value))
    elif spec.kind == "factory":
        model = _load_factory(spec.value, weights)
    else:
        model = _load_robustbench(spec.value, dataset, threat_model, model_dir)
    return model.float().eval()


def _load_export(path: Path) -> nn.Module:
    """``torch.export.load(path).module()``: the archive's graph with its weights; its first
    input must have a dynamic batch dimension (the attacks run batches of any size)."""
    quiet = logging.getLogger("torch.export")  # it logs a traceback before raising
    level = quiet.level
    quiet.setLevel(logging.ERROR + 1)
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive")
        program = torch.export.load(str(path))
    except Exception as exc:  # bad zip, wrong version, not an ExportedProgram: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(f"{path} is not a torch.export archive ({first[:120]}); save one "
                             "with torch.export.save(torch.export.export(model.eval(), (x,), "
                             "dynamic_shapes=...), path)") from None
    finally:
        quiet.setLevel(level)
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"
              and n.name in program.graph_signature.user_inputs]
    val = inputs[0].meta.get("val") if inputs else None
    if val is not None and val.dim() > 0 and isinstance(val.shape[0], int):
        raise ModelSpecError(f"{path} was exported for batches of exactly {val.shape[0]}; export "
                             "with dynamic_shapes=({0: torch.export.Dim('batch')},)")
    model = ExportedModel(program.module())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ExportedModel(nn.Module):
    """A ``torch.export`` graph as a module whose ``train()``/``eval()`` are no-ops: the graph was
    traced in one mode and ``GraphModule`` refuses both calls; dtype casts (``.to``,
    ``.double()``) reach its weights as for any module."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(f"{path} is not a TorchScript archive ({first[:120]}); for a "
                             "state dict use --model package.module:factory --weights "
                             f"{path}") from None
    for p in model.parameters():  # only input gradients are needed; lets precision copies cast
        p.requires_grad_(False)
    return model


def _load_factory(spec: str, weights: Path | None) -> nn.Module:
    module_name, fn_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import {module_name!r} of --model {spec} ({exc}); is it "
                             "on PYTHONPATH?") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise ModelSpecError(f"{module_name} has no callable {fn_name!r} (--model {spec})")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec}() returned {type(model).__name__}, expected a "
                             "torch.nn.Module")
    if weights is not None:
        if not weights.is_file():
            raise ModelSpecError(f"--weights file {weights} not found")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors of every kind: report, never execute
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelSpecError(f"--weights {weights} is not a loadable state dict "
                                 f"({msg[:120]})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelSpecError(f"--weights {weights} holds a {type(state).__name__}, expected "
                                 "a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            msg = " ".join(str(exc).split())
            raise ModelSpecError(f"--weights {weights} does not fit {spec}(): "
                                 f"{msg[:200]}") from None
    return model


def check_robustbench_id(model_id: str, dataset: str, threat_model: str) -> None:
    """Raise ModelSpecError unless RobustBench's model zoo lists ``model_id`` for the dataset
    and threat model (no download)."""
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ModelSpecError(f"RobustBench model {model_id!r} needs --dataset one of "
                             f"{', '.join(ROBUSTBENCH_DATASETS)}, got {dataset!r}")
    if threat_model not in THREAT_MODELS:
        raise ModelSpecError(f"unknown --threat-model {threat_model!r}; expected one of "
                             f"{', '.join(THREAT_MODELS)}")
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    known = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    if model_id not in known:
        raise ModelSpecError(f"--model {model_id!r} is not a file, not package.module:factory and "
                             f"not a RobustBench {dataset}/{threat_model} model ID")


def _load_robustbench(model_id: str, dataset: str, threat_model: str, model_dir: Path) -> nn.Module:
    check_robustbench_id(model_id, dataset, threat_model)
    from robustbench.utils import load_model

    try:
        return load_model(model_name=model_id, model_dir=str(model_dir), dataset=dataset,
                          threat_model=threat_model)
    except Exception as exc:  # download/gdrive/timm failures: one line, naming the model
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelSpecError(f"RobustBench model {model_id} ({dataset}/{threat_model}) could not "
                             f"be loaded from {model_dir} ({msg[:160]})") from None
