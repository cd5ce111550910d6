"""The CIFAR-10 ResNet-18 shipped inside the pyautoattack wheel: a real model available offline."""

from __future__ import annotations

from pathlib import Path

import torch
from pyautoattack.examples import resnet as _resnet
from torch import nn

CHECKPOINT = Path(_resnet.__file__).with_name("model_test.pt")


def load_pyautoattack_resnet18(checkpoint: Path = CHECKPOINT) -> nn.Module:
    """kuangliu-style ResNet-18 (``pyautoattack/examples/resnet.py``) with the wheel's weights
    (or a copy of them: the model stage stages the file in ``models/<key>/``).

    Eval mode, float32, inputs in [0,1] (no normalisation layer), ``(N, 3, 32, 32) -> (N, 10)``.
    """
    if not checkpoint.is_file():
        hint = "reinstall pyautoattack==0.2.0" if checkpoint == CHECKPOINT else "run `dvc repro`"
        raise FileNotFoundError(f"{checkpoint} is missing; {hint}")
    state_dict = torch.load(checkpoint, weights_only=True, map_location="cpu")
    model = _resnet.ResNet18()
    model.load_state_dict(state_dict)
    return model.float().eval()
