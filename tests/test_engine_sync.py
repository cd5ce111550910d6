"""Issue 19, item 6: the PGD/APGD step loop is GPU-ready. Per step it reads nothing back to the
host (no ``.item()``, ``.cpu()``, ``.tolist()``, ``bool(t)``, ``int(t)``: counted by patching
``torch.Tensor`` and compared between runs of N and 2N steps) and runs at most one
synchronising op (the compaction ``keep.nonzero()``: ``aten::nonzero`` and
``aten::_local_scalar_dense`` counted by the CPU profiler); on CUDA, the synchronisations
``torch.cuda.set_sync_debug_mode`` reports are counted the same way.

On 01eb413 the loop called ``bool(keep.any())`` and ``.cpu()`` every step and ran ~10
``nonzero`` per step (``benchmarks/results/step_profile.json``): every test here fails there.
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from tmifpe.attacks.apgd import APGDConfig, run_apgd
from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.losses import get_loss
from tmifpe.precision import Precision, PrecisionModel

pytestmark = pytest.mark.usefixtures("single_thread")
HOST_READS = ("item", "cpu", "tolist", "__bool__", "__int__")
SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense")
N_STEPS = 6
# MIFPE: a scaled loss (exercises the rescaled backward) with no host read of its own.
# T-MIFPE's t* solver (tmifpe/losses/tmifpe/tstar.py) reads per call, outside the engine: on
# the CPU its label-range check and a convergence check per Newton round; on an accelerator no
# range check and a convergence check every 4th round (tests/test_tstar.py).
LOSS = get_loss("mifpe")


def _setup(device: str = "cpu", precision: Precision = Precision.FP32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    model = PrecisionModel(net, precision).to(device)
    if model._reference is not None:
        model._reference.to(device)
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = model.reference(x).argmax(dim=1)  # correct at the clean point
    return model, x, y


def _run(engine: str, steps: int, device: str = "cpu", precision: Precision = Precision.FP32):
    model, x, y = _setup(device, precision)
    eps = 1e-4  # nothing is ever broken: every step does the full work
    if engine == "pgd":
        res = run_pgd(model, x, y, LOSS, PGDConfig(eps=eps, steps=steps))
    else:
        res = run_apgd(model, x, y, LOSS, APGDConfig(eps=eps, steps=steps))
    assert not res.success.any() and (res.n_backward == steps).all()
    return res


def _count_host_reads(monkeypatch, engine: str, steps: int, precision: Precision) -> Counter:
    _setup(precision=precision)  # warm-up outside the count
    calls: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    with monkeypatch.context() as m:
        for name, fn in originals.items():
            def counted(self, *a, _fn=fn, _name=name, **kw):
                calls[_name] += 1
                return _fn(self, *a, **kw)
            m.setattr(torch.Tensor, name, counted)
        _run(engine, steps, precision=precision)
    return calls


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16], ids=lambda p: p.value)
def test_no_host_reads_per_step(monkeypatch, engine, precision):
    short = _count_host_reads(monkeypatch, engine, N_STEPS, precision)
    long = _count_host_reads(monkeypatch, engine, 2 * N_STEPS, precision)
    assert sum(short.values()) > 0  # the patch sees the per-run reads (class range, flush)
    assert long == short, f"host reads grow with the steps: {dict(short)} -> {dict(long)}"


def _sync_ops(engine: str, steps: int) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _run(engine, steps, precision=Precision.BF16)
    counts = {e.key: e.count for e in prof.key_averages()}
    return sum(counts.get(op, 0) for op in SYNC_OPS)


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
def test_at_most_one_synchronising_op_per_step(engine):
    per_step = (_sync_ops(engine, 2 * N_STEPS) - _sync_ops(engine, N_STEPS)) / N_STEPS
    assert per_step <= 1.0, f"{per_step} synchronising ops per step"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: counts the "
                    "synchronisations torch.cuda.set_sync_debug_mode reports")
@pytest.mark.parametrize("engine", ["pgd", "apgd"])
def test_cuda_syncs_per_step(engine):
    def syncs(steps: int) -> int:
        _run(engine, 1, device="cuda")  # warm-up
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _run(engine, steps, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    per_step = (syncs(2 * N_STEPS) - syncs(N_STEPS)) / N_STEPS
    assert per_step <= 1.0, f"{per_step} CUDA synchronisations per step"
