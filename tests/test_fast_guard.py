"""The guard acts: on a testbed of models with known gradient masking
(tmifpe.models.masking) the flags fire, the preset escalates on the flagged points and its
verdict stays <= standard AutoAttack's on the same points. On 01eb413 the preset had no
escalation: the same comparison failed (the test also shows it does with escalation off)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tmifpe.attacks.fast import ESCALATED, FastConfig, run_fast
from tmifpe.data.digits import digits_split
from tmifpe.evaluation.autoattack import evaluate_autoattack
from tmifpe.models.masking import NoisyInput, QuantizedInput, SaturatedOutput, ThresholdInput

EPS = 0.2
N = 40


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, Tensor, Tensor]:
    """A logistic-regression digits classifier (full-batch Adam, seconds) and 40 test points."""
    s = digits_split(0.2, 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(s.x_train), s.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), s.x_test[:N], s.y_test[:N]


def robust_count(res, y: Tensor) -> int:
    return int((res.clean_correct & ~res.verdict.broken(y)).sum())


@pytest.mark.parametrize(("wrap", "old_fails"), [(QuantizedInput, True), (ThresholdInput, False)],
                         ids=["quantized", "threshold"])
def test_masked_gradients_escalate_and_verdict_stays_at_most_aa(
        digits: tuple[nn.Module, Tensor, Tensor], wrap: type[nn.Module], old_fails: bool) -> None:
    """``old_fails``: without escalation (01eb413's preset) the verdict was above AA's (on the
    threshold model 100 guard queries happen to suffice; escalation still fires there)."""
    base, x, y = digits
    model = wrap(base).eval()
    res = run_fast(model, x, y, FastConfig(eps=EPS))
    aa = evaluate_autoattack(model, x, y, eps=EPS, device="cpu")
    aa_robust = int(aa.examples["robust_fp32"].sum())
    attacked = res.n_backward > 0
    assert attacked.any() and res.flag_zero_grad[attacked].all()  # the flag fires
    assert res.escalated.any()  # ... and acts
    assert any(b == ESCALATED for b in res.broken_by)
    assert robust_count(res, y) <= aa_robust
    if old_fails:
        off = run_fast(model, x, y, FastConfig(eps=EPS, escalate_queries=0))
        assert robust_count(off, y) > aa_robust  # the 01eb413 behaviour: verdict above AA's


def test_saturated_output_verdict_at_most_aa(digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Temperature 1e4: CE's gradient underflows; the preset's margin-scaled loss does not
    need the guard, and its verdict stays <= AA's."""
    base, x, y = digits
    model = SaturatedOutput(base).eval()
    res = run_fast(model, x, y, FastConfig(eps=EPS))
    aa = evaluate_autoattack(model, x, y, eps=EPS, device="cpu")
    assert robust_count(res, y) <= int(aa.examples["robust_fp32"].sum())


def test_randomized_model_is_flagged(digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    base, x, y = digits
    res = run_fast(NoisyInput(base).eval(), x[:8], y[:8], FastConfig(eps=EPS, guard_queries=0))
    assert res.randomized
    assert not run_fast(base, x[:8], y[:8], FastConfig(eps=EPS, guard_queries=0)).randomized


def test_no_escalation_on_a_plain_model(digits: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Escalation is for flagged points only: a plain differentiable model pays nothing."""
    base, x, y = digits
    res = run_fast(base, x, y, FastConfig(eps=EPS))
    assert not res.escalated.any()
