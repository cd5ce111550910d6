"""Autocast precisions (``amp-fp16``, ``amp-bf16``): fp32 weights, forward and loss under
``torch.autocast``, verdicts by the fp32 reference; the engines' ``loss_scale``.

New behaviour (issue 19 item 1): none of these precisions exist on 01eb413.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import tmifpe
from tmifpe.attacks.apgd import APGDConfig, run_apgd
from tmifpe.attacks.pgd import PGDConfig, run_pgd
from tmifpe.losses import get_loss
from tmifpe.precision import Precision, PrecisionModel, parse_precision

pytestmark = pytest.mark.usefixtures("single_thread")
AMP = (Precision.AMP_FP16, Precision.AMP_BF16)


def _tempered(net: nn.Module, alpha: float) -> nn.Module:
    """``net`` with its last linear layer multiplied by ``alpha`` (every logit gap × alpha)."""
    out = copy.deepcopy(net)
    head = [m for m in out.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(alpha)
        if head.bias is not None:
            head.bias.mul_(alpha)
    return out


def test_names_parse_and_describe_the_family() -> None:
    assert parse_precision("amp-fp16") is Precision.AMP_FP16
    assert parse_precision("amp-bf16") is Precision.AMP_BF16
    for p, dt in zip(AMP, (torch.float16, torch.bfloat16), strict=True):
        assert p.autocast and p.dtype == dt and p.weight_dtype == torch.float32
    assert not any(p.autocast for p in (Precision.FP16, Precision.BF16, Precision.FP32))
    with pytest.raises(ValueError, match="amp-fp32"):
        parse_precision("amp-fp32")


@pytest.mark.parametrize("precision", AMP, ids=lambda p: p.value)
def test_weights_stay_fp32_and_the_loss_is_promoted(digits_cnn, digits, precision) -> None:
    model = PrecisionModel(digits_cnn, precision)
    assert all(p.dtype == torch.float32 for p in model.inner.parameters())
    x, y = digits.x_test[:16], digits.y_test[:16]
    logits = model(x)
    assert logits.dtype == precision.dtype  # the final linear layer runs in autocast's dtype
    with model.autocast(x.device):
        loss = get_loss("ce")(logits, y)
    assert loss.dtype == torch.float32  # cross_entropy is promoted by autocast
    # the same numbers as running the fp32 model under torch.autocast directly
    with torch.autocast("cpu", dtype=precision.dtype):
        direct = digits_cnn.eval()(x)
    assert torch.equal(logits, direct)
    assert not model.is_reference and model.reference.precision is Precision.FP32


class _Fp32Head(nn.Module):
    """A model that returns float32 logits under autocast (e.g. a head kept in fp32)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).float()


def test_fp32_logits_under_autocast_are_still_confirmed_by_the_reference(digits_cnn, digits):
    """The verdict pass is chosen by the precision, not the logits' dtype: an amp model whose
    logits come back float32 still gets its fp32 confirmation forward (2 per iterate)."""
    net = _Fp32Head(digits_cnn)
    model = PrecisionModel(net, Precision.AMP_FP16)
    x, y = digits.x_test[:8], digits.y_test[:8]
    assert model(x).dtype == torch.float32
    res = run_pgd(model, x, y, get_loss("ce"), PGDConfig(eps=1e-4, steps=3))
    assert not res.success.any()
    assert torch.equal(res.n_forward, torch.full((8,), 2 * 4))


@pytest.mark.parametrize("engine", ["pgd", "apgd"])
def test_ce_gradient_underflows_under_amp_fp16_where_fp32_and_tmifpe_do_not(
        digits_cnn, digits, engine) -> None:
    """Logit gaps × 8: under autocast fp16, CE's logit gradient (fp32, cast to fp16 at the
    output of the last layer) underflows to exactly zero; fp32 CE and amp-fp16 T-MIFPE don't."""
    net = _tempered(digits_cnn, 8.0)
    x, y = digits.x_test[:40], digits.y_test[:40]

    def zero_steps(precision: Precision, loss: str) -> int:
        model = PrecisionModel(net, precision)
        if engine == "pgd":
            res = run_pgd(model, x, y, get_loss(loss), PGDConfig(eps=1e-3, steps=3))
        else:
            res = run_apgd(model, x, y, get_loss(loss), APGDConfig(eps=1e-3, steps=3))
        return int(res.zero_grad_steps.sum())

    assert zero_steps(Precision.AMP_FP16, "ce") > 0
    assert zero_steps(Precision.FP32, "ce") < zero_steps(Precision.AMP_FP16, "ce")
    assert zero_steps(Precision.AMP_FP16, "tmifpe") == 0


def test_loss_scale_lifts_some_underflowing_gradients(digits_cnn, digits) -> None:
    net = _tempered(digits_cnn, 8.0)
    model = PrecisionModel(net, Precision.AMP_FP16)
    x, y = digits.x_test[:40], digits.y_test[:40]
    zero = {s: int(run_pgd(model, x, y, get_loss("ce"),
                           PGDConfig(eps=1e-3, steps=3, loss_scale=s)).zero_grad_steps.sum())
            for s in (1.0, 256.0)}
    assert zero[256.0] < zero[1.0]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_loss_scale_is_a_one_line_error(bad) -> None:
    with pytest.raises(ValueError, match="loss_scale must be a finite number > 0"):
        PGDConfig(eps=0.1, steps=1, loss_scale=bad)
    with pytest.raises(ValueError, match="loss_scale must be a finite number > 0"):
        APGDConfig(eps=0.1, steps=1, loss_scale=bad)


@pytest.mark.parametrize("precision", ["amp-fp16", "amp-bf16"])
def test_api_runs_autocast_and_verifies_at_fp32(digits_cnn, digits, precision) -> None:
    x, y = digits.x_test[:24], digits.y_test[:24]
    res = tmifpe.evaluate(digits_cnn, x, y, loss="tmifpe", eps=0.2, budget=5,
                          precision=precision)
    assert res.precision == precision
    frame = res.frame()
    assert frame["precision"].unique().to_list() == [precision]
    # every success is confirmed by the fp32 pass: robust = clean-correct and not broken
    assert not (res.attack_success & res.robust).any()
    assert res.robust_acc <= res.clean_acc
    # untouched caller's model
    assert digits_cnn.training is False
    assert all(p.dtype == torch.float32 for p in digits_cnn.parameters())


@pytest.mark.parametrize("name", ["amp-fp16", "amp-bf16"])
def test_diagnostics_input_gradient_runs_under_autocast_on_a_conv_model(name: str) -> None:
    """The diagnostics' gradient of a conv model under autocast (its leaf is float32: autocast
    casts only float32 tensors; a float64 leaf met fp16 weights in the diagnostics stage)."""
    from tmifpe.diagnostics.gradients import input_gradient
    from tmifpe.losses import get_loss
    from tmifpe.precision import Precision, PrecisionModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 10))
    x, y = torch.rand(5, 1, 8, 8), torch.arange(5)
    g = input_gradient(PrecisionModel(net, Precision(name)), x, y, get_loss("ce"))
    ref = input_gradient(PrecisionModel(net, Precision.FP64), x, y, get_loss("ce"))
    assert g.grad.dtype == torch.float64 and g.grad.shape == ref.grad.shape
    assert torch.isfinite(g.grad).all()
