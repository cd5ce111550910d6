"""The success rule of PGD and APGD: an example is frozen only when the attack-dtype logits are
finite and misclassify *and* a fresh fp32 pass of its float32 iterate misclassifies it; an
iterate misclassified in the attack dtype only is a counted "dtype-only hit" and the attack goes
on (every restart and target too). Plus ``PrecisionModel``'s check of the logits' dtype.

Every test here fails on the engine before issue 10, which froze an example at the first iterate
its own dtype called misclassified (``argmax`` of a NaN row included) and had no such counter.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tmifpe.attacks.apgd import APGDConfig, run_apgd, uniform_start
from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.attacks.projection import linf_box, random_start
from tmifpe.losses import get_loss
from tmifpe.precision import Precision, PrecisionModel

pytestmark = pytest.mark.usefixtures("single_thread")
CE = get_loss("ce")
N = 16


def _one_pixel(bias1: float) -> nn.Module:
    """Logits (x, bias1) of a one-pixel image x: class 0 wins iff x ≥ bias1 (ties go to the
    first index, as ``argmax`` breaks them)."""
    lin = nn.Linear(1, 2, dtype=torch.float64)  # PrecisionModel rounds bias1 per dtype
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [0.0]]))
        lin.bias.copy_(torch.tensor([0.0, bias1], dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), lin)


# Per attack dtype: (bias1, x0, eps, label). bias1 rounds to a value that ties with x in the
# attack dtype but not in fp32, so the start vertex on one side of x0 is a dtype-only hit and
# the other vertex (and the point one signed step away) a real success.
#  fp16, label 1: bias1 = 0.5 + 2^-13 rounds to 0.5; x = 0.5 − 3·2^-15 rounds to 0.5: tie,
#        argmax 0 ≠ 1 in fp16; fp32 0.49991 < 0.50012: correct.
#  fp64, label 0: bias1 = 1 + 2^-30 (fp32: rounds to 1); x = 1: fp64 1 < bias1 misclassifies,
#        fp32 tie, argmax 0 = label: correct.
CASES = {
    Precision.FP16: (0.5 + 2**-13, 0.5 + 2**-14, 2**-13 + 2**-15, 1),
    Precision.FP64: (1.0 + 2**-30, 1.0, 2**-10, 0),
}


def _dtype_only_start(precision: Precision, x: Tensor) -> Tensor:
    """(N,) bool: the float32 start is misclassified in the attack dtype, not in fp32."""
    bias1, *_ = CASES[precision]
    x = x.flatten()
    if precision is Precision.FP16:
        return (x.half() >= torch.tensor(bias1).half()) & (x.double() < bias1)
    return (x.double() < bias1) & (x.float() >= torch.tensor(bias1).float())


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
@pytest.mark.parametrize("precision", [Precision.FP16, Precision.FP64], ids=lambda p: p.value)
def test_dtype_only_hit_is_counted_and_the_attack_goes_on(precision, engine):
    bias1, x0v, eps, label = CASES[precision]
    model = PrecisionModel(_one_pixel(bias1), precision)
    x = torch.full((N, 1, 1, 1), x0v)
    y = torch.full((N,), label)
    if engine == "pgd":
        res = run_pgd(model, x, y, CE, PGDConfig(eps=eps, steps=5))
    else:
        res = run_apgd(model, x, y, CE, APGDConfig(eps=eps, steps=5))
    # where the run started: the recorded inputs are not needed, the same generator is
    lo, hi = linf_box(x, eps)
    gen = torch.Generator().manual_seed(0)
    if engine == "pgd":
        start = random_start(x, eps, lo, hi, gen)
    else:
        start = uniform_start(x, eps, lo, hi, gen)
    only = _dtype_only_start(precision, start)
    assert only.any() and (~only).any(), "the test needs both start vertices"
    with torch.no_grad():
        pred32 = model.reference(res.x_adv).argmax(dim=1)
    assert res.success.all() and (pred32 != y).all()  # every example ends truly broken
    # a dtype-only start is not frozen: one more step makes it a confirmed success
    assert (res.first_success_iter[only] == 1).all() and (res.dtype_only_hits[only] == 1).all()
    # two iterates, each an attack-dtype and an fp32 forward (issue 19: the fp32 passes count)
    assert (res.n_forward[only] == 4).all() and (res.n_backward[only] == 1).all()
    assert (res.n_forward[~only] == 2).all() and (res.missed_hits == 0).all()
    assert (res.first_success_iter[~only] == 0).all() and (res.dtype_only_hits[~only] == 0).all()


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_dtype_only_hits_never_stop_restarts_or_targets(engine, targeted):
    """Every iterate is an fp16-only hit (the whole ball lies in the tie zone): nothing is a
    success, and every restart (and target) runs its full length on the example."""
    bias1, _, _, label = CASES[Precision.FP16]
    eps, steps, restarts = 2**-15, 4, 2
    model = PrecisionModel(_one_pixel(bias1), Precision.FP16)
    x = torch.full((N, 1, 1, 1), 0.5)
    y = torch.full((N,), label)
    targets = None
    if targeted:
        with torch.no_grad():
            targets = attack_targets(model.reference(x), 9)  # K = 2: one target, class 0
    if engine == "pgd":
        res = run_pgd(model, x, y, CE, PGDConfig(eps=eps, steps=steps, restarts=restarts,
                                                 targeted=targeted), targets=targets)
    else:
        res = run_apgd(model, x, y, CE, APGDConfig(eps=eps, steps=steps, restarts=restarts,
                                                   targeted=targeted), targets=targets)
    runs = restarts * (steps + 1)
    assert not res.success.any() and (res.first_success_iter == -1).all()
    assert (res.dtype_only_hits == runs).all() and (res.missed_hits == 0).all()
    assert (res.n_forward == 2 * runs).all() and (res.n_backward == restarts * steps).all()


class _NaNModel(nn.Module):
    """Linear logits times a NaN buffer: every logit is NaN, in every dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("nan", torch.tensor(float("nan")))

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.flatten(1)) * self.nan


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
@pytest.mark.parametrize("precision", [Precision.FP16, Precision.FP32], ids=lambda p: p.value)
def test_nan_logits_are_never_a_success(precision, engine):
    """``argmax`` of a NaN row is 0 here, not the label 1: the old rule called it a success."""
    torch.manual_seed(0)
    model = PrecisionModel(_NaNModel(), precision)
    x = torch.rand(N, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.ones(N, dtype=torch.int64)
    steps, eps = 3, 0.1
    if engine == "pgd":
        res = run_pgd(model, x, y, CE, PGDConfig(eps=eps, steps=steps))
    else:
        res = run_apgd(model, x, y, CE, APGDConfig(eps=eps, steps=steps))
    assert not res.success.any()
    assert (res.dtype_only_hits == 0).all()
    fwd = (steps + 1) * (2 if precision is Precision.FP16 else 1)  # + fp32 confirmations
    assert (res.nonfinite_steps == steps).all() and (res.n_forward == fwd).all()
    assert (res.missed_hits == 0).all()  # the fp32 logits are NaN too: never a hit
    lo, hi = linf_box(x, eps)
    gen = torch.Generator().manual_seed(0)
    # issue 19: a non-finite step is a random sign step, not a skipped one (before, the
    # iterate never left the start: every recomputation repeated the same NaN)
    assert ((res.x_adv >= lo) & (res.x_adv <= hi)).all()
    if engine == "pgd":
        assert not torch.equal(res.x_adv, random_start(x, eps, lo, hi, gen))


class _Leaky(nn.Module):
    """Holds a plain float32 tensor (not a buffer): ``.to(float16)`` leaves it float32, and
    fp16 × fp32 promotes the logits to fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = torch.ones(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.flatten(1)) * self.scale


def test_precision_model_rejects_logits_of_another_dtype():
    x = torch.rand(2, 1, 2, 2)
    model = PrecisionModel(_Leaky(), Precision.FP16)
    with pytest.raises(ValueError, match=r"model _Leaky returned torch\.float32 logits at fp16")\
            as err:
        model(x)
    assert "\n" not in str(err.value)
    assert PrecisionModel(_Leaky(), Precision.FP32)(x).dtype == torch.float32  # fine there


def test_reference_is_fp32_and_shared():
    net = _one_pixel(0.5)
    ref = PrecisionModel(net, Precision.FP32)
    assert ref.reference is ref
    assert PrecisionModel(net, Precision.FP32, reference=ref).reference is not ref  # its own
    assert PrecisionModel(net, Precision.BF16, reference=ref).reference is ref
    own = PrecisionModel(net, Precision.FP16).reference
    assert own.precision is Precision.FP32 and own.reference is own
    with pytest.raises(ValueError, match="reference must be an fp32"):
        PrecisionModel(net, Precision.FP16, reference=PrecisionModel(net, Precision.FP64))


def test_same_seed_same_result_with_dtype_only_hits():
    """The confirmation draws no random numbers: two fp16 runs with restarts, dtype-only hits
    and confirmed successes give identical results, field by field."""
    bias1, x0v, eps, label = CASES[Precision.FP16]
    model = PrecisionModel(_one_pixel(bias1), Precision.FP16)
    x = torch.full((N, 1, 1, 1), x0v)
    y = torch.full((N,), label)
    cfg = PGDConfig(eps=eps, steps=3, restarts=2)
    a, b = run_pgd(model, x, y, CE, cfg), run_pgd(model, x, y, CE, cfg)
    assert int(a.dtype_only_hits.sum()) > 0
    for field in a.__dataclass_fields__:
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
def test_missed_hits_are_counted_and_kept_only_on_request(engine):
    """Issue 19: the mirror of a dtype-only hit. With label 0 the fp16 tie vertex of CASES is
    correct in fp16 (argmax 0) but misclassified in fp32 (0.49991 < 0.50012): a missed hit.
    01eb413 had no ``missed_hits`` field and never ran fp32 on such an iterate."""
    bias1, x0v, eps, _ = CASES[Precision.FP16]
    model = PrecisionModel(_one_pixel(bias1), Precision.FP16)
    x = torch.full((N, 1, 1, 1), x0v)
    y = torch.zeros(N, dtype=torch.int64)
    lo, hi = linf_box(x, eps)
    start_fn = random_start if engine == "pgd" else uniform_start
    start = start_fn(x, eps, lo, hi, torch.Generator().manual_seed(0))
    missed = _dtype_only_start(Precision.FP16, start)  # fp16 says 0, fp32 says 1
    assert missed.any()
    results = {}
    for keep in (False, True):
        if engine == "pgd":
            cfg = PGDConfig(eps=eps, steps=3, keep_missed_hits=keep)
            results[keep] = run_pgd(model, x, y, CE, cfg)
        else:
            cfg = APGDConfig(eps=eps, steps=3, keep_missed_hits=keep)
            results[keep] = run_apgd(model, x, y, CE, cfg)
    off, on = results[False], results[True]
    assert (off.missed_hits[missed] >= 1).all()
    assert not (off.success[missed] & (off.first_success_iter[missed] == 0)).any()
    assert on.success[missed].all() and (on.first_success_iter[missed] == 0).all()
    with torch.no_grad():  # a kept missed hit is a real fp32 adversarial example
        assert (model.reference(on.x_adv[missed]).argmax(dim=1) != 0).all()
    assert (on.dtype_only_hits == 0).all()
