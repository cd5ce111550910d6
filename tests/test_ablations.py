"""Ablations: the forced-phase T-MIFPE wrapper, the phase (ii)/(iii) rules, the freeze-on-success
equivalence, and the stage end to end (columns, determinism, report tables)."""

from __future__ import annotations

import dataclasses
import json
import math

import polars as pl
import pytest
import torch
from support.suites import write_params

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.data.sources import save_tensors
from tmifpe.losses.tmifpe.loss import tmifpe_loss
from tmifpe.losses.tmifpe.tstar import attack_phase, gap_thresholds, optimal_t
from tmifpe.models.small_cnn import SmallCNN
from tmifpe.pipeline.ablations import (
    BUDGETS,
    NA,
    Variant,
    forced_phase_loss,
    forced_tstar,
    variant_loss,
    variants,
)
from tmifpe.pipeline.train import TrainConfig, train_model
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.report.ablations import tables
from tmifpe.report.detail import Table

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def logits():
    """200 rows of 10-class logits (spread 3) with labels and targets in every phase."""
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(200, 10, generator=g)
    top = z.argmax(dim=1)
    other = (top + torch.randint(1, 10, (200,), generator=g)) % 10
    y = torch.where(torch.arange(200) % 2 == 0, top, other)  # half phase (i), half (ii)
    t = torch.where(torch.arange(200) % 3 == 0, top, other)  # a third (iv), rest (iii)
    return z, y, t


def _rows(z, y, t, phases):
    ph = attack_phase(z, y, targets=t)
    return torch.isin(ph, torch.tensor(phases))


@pytest.mark.parametrize("rule", ["mifpe", "coef", "cap"])
def test_auto_mode_is_the_real_loss(logits, rule):
    z, y, t = logits
    for tg in (None, t):
        assert torch.equal(forced_phase_loss("auto", rule)(z, y, targets=tg),
                           tmifpe_loss(z, y, targets=tg, rule=rule))


@pytest.mark.parametrize(("mode", "targeted", "agree"), [
    ("unsuccessful", False, [1]), ("successful", False, [2]),
    ("unsuccessful", True, [3]), ("successful", True, [4]),
])
def test_forced_phase_changes_tstar_exactly_where_the_phase_differs(logits, mode, targeted,
                                                                    agree):
    z, y, t = logits
    tg = t if targeted else None
    real = optimal_t(z, y, targets=tg)
    forced = forced_tstar(z, y, targets=tg, mode=mode)
    same = _rows(z, y, tg, agree)
    assert same.any() and (~same).any()
    assert torch.equal(forced[same], real[same])  # phases agree: t* and loss unchanged
    assert torch.equal(forced_phase_loss(mode)(z, y, targets=tg)[same],
                       tmifpe_loss(z, y, targets=tg)[same])
    # elsewhere t* changes; both rules tend to 1 + W0(1/e) when two logits dominate (theory
    # §5-6), so a few such rows may nearly coincide
    rel = (forced[~same] - real[~same]).abs() / real[~same]
    assert (rel > 1e-6).float().mean() > 0.9 and (rel > 0.05).any()
    # a row forced onto the (i)/(iv) rule gets argmax h, which depends on the logits only
    top_rule = (mode == "unsuccessful") != targeted
    if top_rule:
        assert torch.equal(forced[~same], optimal_t(z, z.argmax(dim=1))[~same])
    else:  # k on top, evaluated with the runner-up as class of interest
        runner_up = z.topk(2, dim=1).indices[:, 1]
        assert torch.equal(forced[~same], optimal_t(z, runner_up)[~same])


def test_rules_differ_only_where_k_is_below_the_top(logits):
    z, y, t = logits
    for tg, below in ((None, [2]), (t, [3])):
        ts = {r: optimal_t(z, y, targets=tg, rule=r, dtype=torch.float32)
              for r in ("mifpe", "coef", "cap")}
        rows = _rows(z, y, tg, below)
        assert torch.equal(ts["mifpe"][~rows], ts["coef"][~rows])
        assert torch.equal(ts["cap"][~rows], ts["coef"][~rows])
        assert (ts["mifpe"][rows] == 1.0).all()
        assert (ts["cap"][rows] > ts["coef"][rows]).all()
        # cap: t·a_k = −ln u(fp32) exactly (to rounding)
        zk = z.double().gather(1, (y if tg is None else tg)[:, None]).squeeze(1)
        top2 = z.double().topk(2, dim=1).values
        a_k = (top2[:, 0] - zk) / (top2[:, 0] - top2[:, 1])
        assert torch.allclose((ts["cap"] * a_k)[rows],
                              torch.full_like(a_k[rows], gap_thresholds(torch.float32)[0]))


def test_forced_modes_change_the_loss_value(logits):
    z, y, _ = logits
    wrong = _rows(z, y, None, [2])
    a = forced_phase_loss("unsuccessful")(z, y)
    b = tmifpe_loss(z, y)
    assert not torch.allclose(a[wrong], b[wrong])


def test_wrapper_errors_are_one_line(logits):
    z, y, _ = logits
    with pytest.raises(ValueError, match="unknown phase mode 'always'"):
        forced_tstar(z, y, mode="always")
    with pytest.raises(ValueError, match="unknown phase mode"):
        forced_phase_loss("never")
    with pytest.raises(ValueError, match="unknown phase \\(ii\\)/\\(iii\\) rule 'x'"):
        forced_phase_loss("auto", "x")
    with pytest.raises(ValueError, match="labels must have shape"):
        forced_tstar(z, y[:3], mode="successful")


def test_variant_grid():
    grid = variants("coef")
    assert len(grid) == len(set(grid)) == len({v.name for v in grid}) == 12
    assert [v.name for v in grid] == sorted(v.name for v in grid)
    assert Variant("pgd", "ce") in grid
    assert {v.phase_mode for v in grid if v.loss == "tmifpe"} == {"auto", "unsuccessful",
                                                                  "successful"}
    assert {v.rule for v in grid if v.loss == "tmifpe"} == {"mifpe", "coef", "cap"}
    # loss x progress crossed in APGD (issue 19 item 5), both losses under both measures
    apgd = {(v.loss, v.progress) for v in grid if v.engine == "apgd"}
    assert apgd == {(loss, p) for loss in ("ce", "tmifpe") for p in ("loss", "margin")}
    assert Variant("pgd", "ce").progress == NA
    # MIFPE at the paper's T = 1 and the released code's T = 10
    assert {v.temperature for v in grid if v.loss == "mifpe"} == {1.0, 10.0}
    assert Variant("pgd", "mifpe", temperature=10.0).name == "pgd/mifpe/T10"
    assert Variant("apgd", "tmifpe", "coef", "auto", progress="loss").name == \
        "apgd/tmifpe/coef/auto/loss"
    with pytest.raises(ValueError, match="unknown phase"):
        variants("nope")
    with pytest.raises(ValueError, match="progress '-'; expected one of loss, margin for apgd"):
        Variant("apgd", "ce")
    with pytest.raises(ValueError, match="progress 'loss'"):
        Variant("pgd", "ce", progress="loss")
    with pytest.raises(ValueError, match="temperature None; expected a number for mifpe"):
        Variant("pgd", "mifpe")
    with pytest.raises(ValueError, match="unknown ablation loss 'dlr'"):
        Variant("pgd", "dlr")


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_mifpe_temperature_against_float64_reference(temperature):
    """MIFPE's loss at T: CE((T/Δ)·z, y), Δ the top-2 gap, against a float64 formula; and the
    gradient the attack uses differs between T = 1 and T = 10."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 4
    y = torch.randint(0, 10, (16,), generator=gen)
    top2 = z.topk(2, dim=1).values
    c = temperature / (top2[:, 0] - top2[:, 1])
    ref = torch.logsumexp(c[:, None] * z, dim=1) - c * z[torch.arange(16), y]
    got = variant_loss(Variant("pgd", "mifpe", temperature=temperature))(z.float(), y)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    z1 = z.float().requires_grad_()
    g = [torch.autograd.grad(variant_loss(Variant("pgd", "mifpe", temperature=t))(z1, y).sum(),
                             z1)[0] for t in (1.0, 10.0)]
    assert not torch.allclose(g[0], g[1])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_mifpe_rejects_bad_temperature(bad):
    from tmifpe.losses.mifpe import mifpe_loss

    with pytest.raises(ValueError, match=r"MIFPE temperature T=.*expected a finite number > 0"):
        mifpe_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), temperature=bad)


@pytest.mark.parametrize("targeted", [False, True])
def test_forced_unsuccessful_equals_real_phase_under_freezing(digits, digits_cnn_at, targeted):
    """Only unsuccessful examples take gradient steps, so forcing "unsuccessful" changes
    nothing, while "successful" (the wrong t* for every attacked example) does."""
    x, y = digits.x_test[:60], digits.y_test[:60]
    model = PrecisionModel(digits_cnn_at, Precision.FP32)
    with torch.no_grad():
        clean = model(x)
    tg = attack_targets(clean, 2) if targeted else None
    cfg = PGDConfig(eps=0.15, steps=10, targeted=targeted, n_targets=2)

    def run(mode):
        v = Variant("pgd", "tmifpe", "coef", mode)
        return run_pgd(model, x, y, variant_loss(v), cfg, targets=tg)

    auto, unsucc, succ = run("auto"), run("unsuccessful"), run("successful")
    for f in dataclasses.fields(auto):
        assert torch.equal(getattr(auto, f.name), getattr(unsucc, f.name)), f.name
    assert not torch.equal(auto.x_adv, succ.x_adv)


# --- the stage end to end ------------------------------------------------------------------

N_POINTS = 40
COLUMNS = {"model", "variant", "engine", "loss", "rule", "phase_mode", "progress", "targeted",
           "precision", "budget", "n_targets", "eps", "n_points", "n_clean", "robust_acc",
           "robust_count", "n_false_success", "n_invalid", "mean_forward", "mean_backward"}


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory, digits):
    """A project directory with params.yaml (40 digits points), data and a trained model."""
    root = tmp_path_factory.mktemp("ablations")
    suite = {
        "name": "tiny", "device": "cpu", "threads": 1,
        "datasets": {"digits": {"source": "digits", "n_examples": N_POINTS, "eps": 0.2,
                                "test_size": 0.25, "split_seed": 0}},
        "model_zoo": {"digits_m": {"source": "trained", "dataset": "digits", "epochs": 2}},
        "models": ["digits_m"], "losses": ["ce", "tmifpe"], "budgets": [20],
        "precisions": {"fp32": {"n_targets": 2}},
        "attack": {"batch_size": 25, "tstar_rule": "coef", "seed": 0},
        "ablations": {"budgets": list(BUDGETS), "precisions": ["fp32"]},
    }
    write_params(root / "params.yaml", suite)
    save_tensors({"x_train": digits.x_train, "y_train": digits.y_train,
                  "x_test": digits.x_test[:N_POINTS], "y_test": digits.y_test[:N_POINTS]},
                 root / "data" / "eval" / "digits.pt")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN()
        train_model(model, digits.x_train, digits.y_train, TrainConfig(epochs=3, seed=0))
    (root / "models" / "digits_m").mkdir(parents=True)
    torch.save(model.state_dict(), root / "models" / "digits_m" / "model.pt")
    return root


def _run_stage(root, monkeypatch, model="digits_m"):
    from stages.ablations import main

    monkeypatch.chdir(root)
    main(model=model)
    out = root / "results" / "ablations"
    return (out / f"{model}.parquet").read_bytes(), json.loads(
        (out / f"{model}.timing.json").read_text())


def test_stage_outputs_are_complete_and_byte_identical(stage_dir, monkeypatch):
    first, timing = _run_stage(stage_dir, monkeypatch)
    second, _ = _run_stage(stage_dir, monkeypatch)
    assert first == second
    frame = pl.read_parquet(stage_dir / "results" / "ablations" / "digits_m.parquet")
    assert set(frame.columns) >= COLUMNS
    assert "wall" not in " ".join(frame.columns)  # wall time lives in the JSON only
    assert frame.height == 12 * 2 * len(BUDGETS)  # variants × (untargeted, targeted) × budgets
    assert (frame["n_points"] == N_POINTS).all() and (frame["n_invalid"] == 0).all()
    assert (frame["n_false_success"] == 0).all()  # fp32 attack: its verdict is the fp32 one
    n_clean = frame["n_clean"][0]
    assert n_clean > 0.5 * N_POINTS and (frame["robust_count"] <= n_clean).all()
    assert ((frame["robust_acc"] - frame["robust_count"] / N_POINTS).abs() < 1e-12).all()
    assert frame.filter(pl.col("targeted"))["n_targets"].unique().to_list() == [2]
    assert (frame["mean_forward"] >= 1).all()
    keys = frame.select("precision", "targeted", "budget", "variant")
    assert keys.rows() == sorted(keys.rows())
    assert len(timing["runs"]) == frame.height and timing["total_wall_time_s"] > 0
    assert all(math.isfinite(r["wall_time_s"]) for r in timing["runs"])
    # the control of the phase ablation holds in the stage's data too
    auto = frame.filter(pl.col("variant") == "pgd/tmifpe/coef/auto")["robust_count"]
    control = frame.filter(pl.col("variant") == "pgd/tmifpe/coef/unsuccessful")["robust_count"]
    assert auto.to_list() == control.to_list()

    tabs = tables([stage_dir / "results" / "ablations" / "digits_m.parquet"])
    assert [t.key for t in tabs] == ["ablation_phase", "ablation_rule", "ablation_engine",
                                     "ablation_progress", "ablation_mifpe"]
    for t in tabs:
        assert isinstance(t, Table) and len(t.rows) == 2 * len(BUDGETS)
        assert all(len(r) == len(t.headers) == len(t.numeric) for r in t.rows)
        assert all(isinstance(c, str) for r in t.rows for c in r)
    for t in tabs[2:]:  # every engine × loss, loss × progress and temperature cell ran
        assert "–" not in {c for r in t.rows for c in r}, t.key
    assert tabs[4].headers[4:7] == ("CE", "MIFPE T=1", "MIFPE T=10")
    assert tables([])[0].rows == ()


def test_stage_rejects_unknown_model(stage_dir, monkeypatch, capsys):
    with pytest.raises(SystemExit) as err:
        _run_stage(stage_dir, monkeypatch, model="nope")
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.startswith("error: unknown model 'nope'") and "\n" not in msg
