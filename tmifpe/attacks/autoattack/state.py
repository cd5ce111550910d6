"""Resumable progress of the AutoAttack cascade: one dict of tensors saved after every
(attack, batch) unit, and the description of the run a saved state must match.

Written with :func:`tmifpe.storage.save_torch` (atomic), read with ``weights_only=True``;
hashes from :mod:`tmifpe.storage`. ``x_adv`` is stored only for the rows that differ from the
clean point (broken, or holding a point with non-finite logits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tmifpe.storage import save_torch, sha256_path, sha256_tensors

CODE_DIR = Path(__file__).resolve().parent  # the cascade's code: part of every state's meta


def run_meta(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, seed: int, batch_size: int,
             version: str) -> dict[str, Any]:
    """What a state file must match: settings, the points, the model weights and this code."""
    return {"eps": float(eps), "seed": int(seed), "batch_size": int(batch_size),
            "version": version, "code_sha256": sha256_path(CODE_DIR),
            "n": int(x.shape[0]), "x_shape": list(x.shape), "x_sha256": sha256_tensors([x]),
            "y_sha256": sha256_tensors([y]),
            "model_sha256": sha256_tensors(model.state_dict().values())}


def new_state(x: Tensor, clean_correct: Tensor, meta: dict[str, Any], attacks: tuple[str, ...]
              ) -> dict[str, Any]:
    """Nothing run yet: cursor (stage, batch) = (0, 0), every clean-correct point robust."""
    n = x.shape[0]
    return {"meta": meta, "cursor": [0, 0], "clean_correct": clean_correct,
            "robust": clean_correct.repeat(len(attacks), 1),  # (S, N), valid up to the cursor
            "broken": torch.full((n,), -1, dtype=torch.int64), "x_adv": x.clone(),
            "n_grad": torch.zeros(n, dtype=torch.int64),
            "n_queries": torch.zeros(n, dtype=torch.int64),
            "snapped": torch.zeros(n, dtype=torch.bool),
            "nonfinite": torch.zeros(n, dtype=torch.bool),
            "wall": dict.fromkeys(attacks, 0.0)}


def save_state(path: Path | None, st: dict[str, Any]) -> None:
    """Atomic save (no-op without a path)."""
    if path is None:
        return
    keep = _stored_rows(st)
    payload = {k: v for k, v in st.items() if k != "x_adv"}
    payload["adv_rows"] = st["x_adv"][keep]
    save_torch(payload, path)


def load_state(path: Path, meta: dict[str, Any], x: Tensor) -> dict[str, Any]:
    """The state at ``path``; ValueError naming the first setting that differs from ``meta``."""
    st = torch.load(path, weights_only=True)
    for key, want in meta.items():
        have = st.get("meta", {}).get(key)
        if have != want:
            raise ValueError(f"AutoAttack state {path} belongs to another run ({key}: stored "
                             f"{have!r}, requested {want!r}); delete it or use another path")
    st["x_adv"] = x.clone()
    st["x_adv"][_stored_rows(st)] = st.pop("adv_rows")
    return st


def _stored_rows(st: dict[str, Any]) -> Tensor:
    return (st["broken"] >= 0) | st["nonfinite"]
