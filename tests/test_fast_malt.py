"""MALT target selection (tmifpe.attacks.fast.malt_targets) against brute force, the PMA loss,
and the second cost column."""

from __future__ import annotations

import torch
from torch import nn

from tmifpe.attacks.fast import (
    MALT_POOL,
    FastConfig,
    Kind,
    Phase,
    malt_backward_passes,
    malt_distances,
    malt_targets,
    pma_loss,
    run_fast,
)

K = 6


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, K)).double()


def test_malt_distances_equal_per_pair_brute_force() -> None:
    """Each d_j recomputed alone: one autograd call per (point, class) on the margin z_y − z_j."""
    model = mlp(0)
    x = torch.rand(7, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, K, (7,), generator=torch.Generator().manual_seed(2))
    d = malt_distances(model, x, y)
    for i in range(7):
        for j in range(K):
            if j == int(y[i]):
                assert d[i, j] == float("inf")
                continue
            xi = x[i : i + 1].clone().requires_grad_(True)
            z = model(xi)[0]
            m = z[y[i]] - z[j]
            (g,) = torch.autograd.grad(m, xi)
            assert torch.allclose(d[i, j], m.detach() / g.abs().sum(), rtol=1e-10)
    ref = torch.stack([d[i].argsort()[:3] for i in range(7)])
    assert torch.equal(malt_targets(model, x, y, 3), ref)


def test_malt_is_the_exact_linf_distance_on_a_linear_model() -> None:
    """For linear logits the linearised distance is exact: stepping d_j·(1 ± 1e-6) along
    −sign(w_y − w_j) lands just before / just past the boundary of class j."""
    torch.manual_seed(3)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, K)).double()
    x = torch.rand(5, 1, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        y = lin(x).argmax(1)
    d = malt_distances(lin, x, y)
    w = lin[1].weight.detach()
    for i in range(5):
        j = int(d[i].argmin())
        direction = -torch.sign(w[y[i]] - w[j]).view(1, 3, 4)
        for f, crossed in ((1 - 1e-6, False), (1 + 1e-6, True)):
            z = lin(x[i : i + 1] + f * d[i, j] * direction)[0]
            assert bool(z[j] > z[y[i]]) is crossed


def test_malt_can_differ_from_clean_rank() -> None:
    """The point of MALT: the nearest boundary is not always the second-largest logit."""
    model = mlp(4)
    x = torch.rand(200, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    rank = z.argsort(dim=1, descending=True)[:, 1]
    assert (malt_targets(model, x, y, 1)[:, 0] != rank).any()


def test_pma_loss() -> None:
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2])
    p = torch.softmax(z, 1)
    assert torch.allclose(pma_loss(z, y), torch.stack([p[0, 1] - p[0, 0], p[1, 0] - p[1, 2]]))
    t = torch.tensor([2, 1])
    assert torch.allclose(pma_loss(z, y, targets=t),
                          torch.stack([p[0, 2] - p[0, 0], p[1, 1] - p[1, 2]]))


def test_malt_phase_counts_its_gradients() -> None:
    """A MALT phase costs one forward and K backward passes per attacked point more than the
    same phase with clean-rank targets (on points nothing breaks: eps tiny)."""
    model = mlp(6).float()
    x = torch.rand(9, 1, 3, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = model(x).argmax(1)
    runs = {}
    for rule in ("rank", "malt"):
        cfg = FastConfig(eps=1e-5, phases=(Phase(Kind.TARGETED, 3, n_targets=2, targets=rule),),
                         guard_queries=0)
        runs[rule] = run_fast(model, x, y, cfg)
    assert not runs["malt"].success.any()
    assert (runs["malt"].n_forward - runs["rank"].n_forward == 1).all()
    assert (runs["malt"].n_backward - runs["rank"].n_backward == K).all()
    r = runs["malt"]
    assert torch.equal(r.forward_equivalents - r.passes, r.n_backward)


def test_malt_pool_caps_the_classes_and_their_cost() -> None:
    """With more classes than the pool (CIFAR-100-like), only the ``pool`` largest other clean
    logits are ranked, each with the full-K distance; the rest are +inf; pool+1 backward."""
    torch.manual_seed(8)
    k = 30
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, k)).double()
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    full = malt_distances(model, x, y, pool=k)  # every class: the uncapped path
    capped = malt_distances(model, x, y, pool=5)
    others = z.scatter(1, y[:, None], float("-inf")).topk(5, dim=1).indices
    kept = torch.zeros_like(z, dtype=torch.bool).scatter(1, others, True)
    assert torch.allclose(capped[kept], full[kept], rtol=1e-12)
    assert torch.isinf(capped[~kept]).all() and (capped[~kept] > 0).all()
    assert malt_backward_passes(k, pool=5) == 6 and malt_backward_passes(10, pool=20) == 10
    assert malt_targets(model, x, y, 3).shape == (6, 3)


def test_capped_malt_phase_counts_pool_plus_one_backward() -> None:
    torch.manual_seed(10)
    k = 30
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, k))
    x = torch.rand(5, 1, 3, 4, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        y = model(x).argmax(1)
    runs = {rule: run_fast(model, x, y, FastConfig(
        eps=1e-5, phases=(Phase(Kind.TARGETED, 2, n_targets=2, targets=rule),),
        guard_queries=0)) for rule in ("rank", "malt")}
    assert (runs["malt"].n_backward - runs["rank"].n_backward == MALT_POOL + 1).all()
