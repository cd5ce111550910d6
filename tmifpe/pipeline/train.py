"""Training of the small models the pipeline builds itself: standard and PGD adversarial (AT).

Trains on the given device (a GPU when the suite resolves to one). The random streams (batch order,
PGD-AT start noise) are drawn on the CPU from a seeded generator whatever the device, so the
sampled batches do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tmifpe.attacks.projection import linf_box, project


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    adv_eps: float = 0.0  # 0 -> standard training; > 0 -> PGD-AT (Madry et al. 2018)
    adv_steps: int = 7
    adv_step_scale: float = 2.5  # step = scale * eps / steps

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.adv_eps <= 1.0:
            raise ValueError(f"adv_eps must be in [0, 1], got {self.adv_eps}")


def pgd_training_examples(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step: float,
    gen: torch.Generator,
) -> Tensor:
    """Madry PGD-AT inner maximisation: uniform start in the ball, signed CE-gradient steps."""
    lo, hi = linf_box(x, eps)
    noise = (torch.rand(x.shape, generator=gen) * 2 * eps - eps).to(x.device)
    x_adv = project(x + noise, lo, hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project(x_adv.detach() + step * grad.sign(), lo, hi)
    return x_adv.detach()


def train_model(
    model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Adam on CE, standard or PGD-AT per ``cfg``, on ``device``; returns the mean training loss
    per epoch. The model is left on the CPU in eval mode."""
    torch.manual_seed(cfg.seed)
    model.to(device)
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = []
    for _ in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start : start + cfg.batch_size].to(device)
            xb, yb = x[b], y[b]
            if cfg.adv_eps > 0:
                model.eval()
                step = cfg.adv_step_scale * cfg.adv_eps / cfg.adv_steps
                xb = pgd_training_examples(model, xb, yb, cfg.adv_eps, cfg.adv_steps, step, gen)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        history.append(total / x.shape[0])
    model.to("cpu").eval()
    return history


@dataclass(frozen=True)
class TradesConfig:
    """TRADES [Zhang et al. 2019]: CE(f(x), y) + beta·KL(f(x) ‖ f(x')), x' maximising the KL
    term by ``adv_steps`` signed steps of ``adv_step_scale·adv_eps/adv_steps`` from x + 0.001·N."""

    epochs: int
    adv_eps: float
    beta: float = 6.0
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    adv_steps: int = 7
    adv_step_scale: float = 2.5

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 < self.adv_eps <= 1.0:
            raise ValueError(f"TRADES needs adv_eps in (0, 1], got {self.adv_eps}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def trades_examples(model: nn.Module, x: Tensor, eps: float, steps: int, step: float,
                    gen: torch.Generator) -> Tensor:
    """TRADES inner maximisation of KL(f(x) ‖ f(x')) over the l∞ ball (model in eval mode)."""
    lo, hi = linf_box(x, eps)
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    x_adv = project(x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device), lo, hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = project(x_adv.detach() + step * grad.sign(), lo, hi)
    return x_adv.detach()


def train_trades(model: nn.Module, x: Tensor, y: Tensor, cfg: TradesConfig,
                 device: torch.device | str = "cpu") -> list[float]:
    """Adam on the TRADES objective (:class:`TradesConfig`); returns the mean training loss per
    epoch; the model is left on the CPU in eval mode. Same seeding as :func:`train_model`."""
    torch.manual_seed(cfg.seed)
    model.to(device)
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step = cfg.adv_step_scale * cfg.adv_eps / cfg.adv_steps
    history = []
    for _ in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start : start + cfg.batch_size].to(device)
            xb, yb = x[b], y[b]
            model.eval()
            xa = trades_examples(model, xb, cfg.adv_eps, cfg.adv_steps, step, gen)
            model.train()
            logits = model(xb)
            kl = F.kl_div(F.log_softmax(model(xa), dim=1), F.softmax(logits, dim=1),
                          reduction="batchmean")
            loss = F.cross_entropy(logits, yb) + cfg.beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        history.append(total / x.shape[0])
    model.to("cpu").eval()
    return history
