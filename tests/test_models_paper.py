"""Model loaders for the paper models: the pyautoattack ResNet-18 (shipped in its wheel) and
RobustBench checkpoints staged offline in robustbench's on-disk layout."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from tmifpe._compat.autoattack_alias import import_robustbench
from tmifpe.models import autoattack_resnet
from tmifpe.models.autoattack_resnet import load_pyautoattack_resnet18
from tmifpe.models.robustbench_zoo import (
    CheckpointError,
    list_robustbench_models,
    load_robustbench,
    reported_accuracy,
)

LEADERBOARD = Path(__file__).resolve().parents[1] / "tmifpe" / "leaderboard.json"


class _LoadSpy:
    """Wraps torch.load and records the keyword arguments of every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._load = torch.load

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self._load(*args, **kwargs)


def _all_eval(model: nn.Module) -> bool:
    return not any(m.training for m in model.modules())


# ---------------------------------------------------------------- pyautoattack ResNet-18


@pytest.fixture(autouse=True, scope="module")
def _robustbench_through_the_alias() -> None:
    """robustbench imports `autoattack` (no such package is installed): tmifpe's alias first."""
    import_robustbench()


def test_pyautoattack_resnet18_shape_eval_determinism(monkeypatch):
    spy = _LoadSpy()
    monkeypatch.setattr(torch, "load", spy)
    model = load_pyautoattack_resnet18()
    assert [c.get("weights_only") for c in spy.calls] == [True]
    assert _all_eval(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        again = load_pyautoattack_resnet18()(x)
    assert out.shape == (4, 10)
    assert torch.equal(out, again)


def test_pyautoattack_resnet18_carries_the_wheel_weights():
    shipped = torch.load(autoattack_resnet.CHECKPOINT, weights_only=True, map_location="cpu")
    loaded = load_pyautoattack_resnet18().state_dict()
    assert loaded.keys() == shipped.keys()
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)


# ---------------------------------------------------------------- RobustBench, staged offline


def _random_registry_model(model_id: str, dataset: str) -> nn.Module:
    """The architecture robustbench builds for ``model_id``, with random weights and BN stats."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    model = model_dicts[BenchmarkDataset(dataset)][ThreatModel.Linf][model_id]["model"]()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def staged_standard(tmp_path_factory) -> tuple[Path, nn.Module]:
    """cifar10/Linf/Standard.pt staged as {'state_dict': {'module.' + key: tensor}}."""
    model_dir = tmp_path_factory.mktemp("models")
    model = _random_registry_model("Standard", "cifar10")
    path = model_dir / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, path)
    return model_dir, model


def _two_images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_staged_checkpoint_loads_offline_and_matches(staged_standard, monkeypatch):
    """Loaded by robustbench's own load_model, once, with weights-only forced for that call."""
    model_dir, reference = staged_standard
    seen: list[str | None] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    model = load_robustbench("Standard", "cifar10", model_dir)
    assert seen == ["1"]
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the call
    assert _all_eval(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(_two_images()), reference(_two_images()))


def test_staged_checkpoint_matches_robustbench_own_loader(staged_standard):
    import_robustbench()
    from robustbench.utils import load_model

    model_dir, _ = staged_standard
    ours = load_robustbench("Standard", "cifar10", model_dir)
    theirs = load_model("Standard", model_dir=model_dir, dataset="cifar10", threat_model="Linf")
    with torch.no_grad():
        torch.testing.assert_close(ours(_two_images()), theirs(_two_images()), rtol=0, atol=0)


def test_plain_state_dict_checkpoint_loads(tmp_path):
    """The other convention robustbench accepts: a bare state_dict (here a CIFAR-100 ResNet-18)."""
    model_id = "Addepalli2022Efficient_RN18"
    reference = _random_registry_model(model_id, "cifar100")
    path = tmp_path / "cifar100" / "Linf" / f"{model_id}.pt"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = load_robustbench(model_id, "cifar100", tmp_path)
    with torch.no_grad():
        out = model(_two_images())
        torch.testing.assert_close(out, reference(_two_images()))
    assert out.shape == (2, 100)


@pytest.mark.parametrize("head", [b"<!DOCTYPE html>\n<html>", b"\n  <HTML><head>"])
def test_html_saved_as_checkpoint(tmp_path, head):
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(head + b"<title>Google Drive - Virus scan warning</title>")
    with pytest.raises(CheckpointError, match="HTML") as info:
        load_robustbench("Standard", "cifar10", tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


class _NotAllowlisted:
    pass


@pytest.mark.parametrize("env", [{}, {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}])
def test_pickled_objects_are_refused(tmp_path, monkeypatch, env):
    """Even when the environment asks torch for full unpickling by default."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "extra": _NotAllowlisted()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_robustbench("Standard", "cifar10", tmp_path)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == env.get(
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


def test_missing_checkpoint_offline_names_the_path(tmp_path):
    try:
        socket.create_connection(("drive.google.com", 443), timeout=2).close()
    except OSError:
        pass
    else:
        pytest.skip("network reachable: this test checks the offline failure")
    with pytest.raises(FileNotFoundError) as info:
        load_robustbench("Standard", "cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in message and "\n" not in message


def test_unknown_id_lists_close_matches(tmp_path):
    with pytest.raises(ValueError, match="Carmon2019Unlabeled"):
        load_robustbench("Carmon2019Unlabelled", "cifar10", tmp_path)


def test_unsupported_dataset_and_threat_model():
    with pytest.raises(ValueError, match="mnist"):
        list_robustbench_models("mnist")
    with pytest.raises(ValueError, match="L2"):
        list_robustbench_models("cifar100", threat_model="L2")


# ---------------------------------------------------------------- leaderboard


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_leaderboard_models_are_in_the_registry(dataset):
    import json

    names = json.loads(LEADERBOARD.read_text())[dataset]
    assert set(names) <= set(list_robustbench_models(dataset))


def test_reported_accuracy():
    entry = reported_accuracy("cifar10", "Carmon2019Unlabeled")
    assert entry is not None
    assert (entry["clean_acc"], entry["autoattack_acc"]) == (89.69, 59.53)
    assert entry["eps"] == pytest.approx(8 / 255) and "78fcc9e" in entry["source"]
    assert reported_accuracy("mnist", "TRADES")["autoattack_acc"] == 92.81
    assert reported_accuracy("cifar100", "Standard") is None
