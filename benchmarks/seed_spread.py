"""Spread of the README's headline figures across independently trained seeds of each default model.

    .venv/bin/python benchmarks/seed_spread.py [--seeds 0 1 2] [--quick] [--n-examples N]

For every trained model of the suite in ``params.yaml`` (default suite: ``digits_std``,
``digits_at``) and every seed, trains the model with exactly the suite's recipe except the seed
(:func:`tmifpe.pipeline.model_stage.train_recipe`; seed 0 is the recipe's own seed), then
computes each headline figure of README "What the default suite shows" through the library's
public entry points: :func:`tmifpe.evaluate` (PGD cells, the suite's attack settings),
:func:`tmifpe.evaluate_autoattack` (verified)
(AutoAttack, fp32 verdict) and :func:`tmifpe.attacks.fast.run_fast` (the fast preset, judged on
the held-out split of ``fast.split_seed`` / ``fast.tuning_fraction``). Costs are counted as in
:mod:`tmifpe.aggregate.compare_aa`: PGD mean(n_forward + n_backward), AutoAttack
mean(2·n_grad + n_queries), the preset its ``passes``.

Writes ``benchmarks/results/seed_spread.json``: per model and seed the training outcome and the
figures; per figure mean, sample sd (ddof 1), min, max over seeds; per claim whether it holds on
each seed and its margin; the environment (CPU model, ISA flags, torch version, threads).
Resumable: trained weights and every attack run's summary are cached per (model, seed, mode)
under ``.tmifpe-work/seed_spread/`` (gitignored); a rerun recomputes only what is missing.

``--quick``: the first ``--n-examples`` (default 12) points and one budget (5) for every
budget-specific figure, for a smoke test; the training recipe is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

import tmifpe
from tmifpe.attacks.fast import run_fast
from tmifpe.data.build import build_dataset
from tmifpe.evaluation.autoattack import evaluate_autoattack
from tmifpe.models.zoo import build_small_cnn
from tmifpe.pipeline.config import SuiteParams, load_params
from tmifpe.pipeline.fast_cell import preset_config, tuning_mask
from tmifpe.pipeline.model_stage import train_recipe
from tmifpe.precision import Precision, PrecisionModel
from tmifpe.runtime import numerics
from tmifpe.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "seed_spread.json"
WORK = ROOT / ".tmifpe-work" / "seed_spread"
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
PRECISIONS = ("fp16", "bf16", "fp32", "fp64")
QUICK_BUDGET = 5
STD, AT = "digits_std", "digits_at"  # the default suite's two trained models


@dataclass(frozen=True)
class Plan:
    """Budgets of the headline figures (the README's, or one small budget in --quick)."""

    std_budget: int  # digits_std precision comparison (README: 20)
    at_top: int  # digits_at loss comparison (README: 100)
    at_budgets: tuple[int, ...]  # "T-MIFPE below CE at every budget" (README: 10/20/50/100)
    targeted_mifpe: int  # targeted MIFPE vs AA (README: 50)
    targeted_tmifpe: int  # targeted T-MIFPE vs AA (README: 100)
    worst_case: int  # worst case over the ten PGD attacks (README: 50)


def plan_for(suite: SuiteParams, quick: bool) -> Plan:
    if quick:
        b = QUICK_BUDGET
        return Plan(b, b, (b,), b, b, b)
    return Plan(20, 100, tuple(suite.budgets), 50, 100, 50)


# --- environment ---------------------------------------------------------------------------------

def environment(threads: int) -> dict[str, Any]:
    """CPU model and the ISA flags that select float kernels, library versions, threads."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    import polars
    import pyautoattack

    return {
        "cpu_model": model, "isa_flags": {f: f in flags for f in ISA_FLAGS},
        "logical_cores": os.cpu_count(), "threads": threads,
        "torch_version": torch.__version__, "tmifpe_version": tmifpe.__version__,
        "pyautoattack_version": getattr(pyautoattack, "__version__", "unknown"),
        "polars_version": polars.__version__, "python_version": platform.python_version(),
        "machine": platform.machine(), "deterministic_algorithms":
            torch.are_deterministic_algorithms_enabled(),
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
    }


# --- per-run caching -----------------------------------------------------------------------------

def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Missing(Exception):
    """A run (or a trained model) is not in the cache and ``--cached-only`` forbids computing it."""


def cached(path: Path, settings: dict, compute: Callable[[], dict], *,
           offline: bool = False) -> dict:
    """``compute()`` once per ``settings``: the summary is stored as JSON beside its settings.
    ``offline``: raise :class:`Missing` instead of computing."""
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("settings") == settings:
            return doc["summary"]
    if offline:
        raise Missing(str(path))
    summary = compute()
    write_json({"settings": settings, "summary": summary}, path)
    return summary


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of the parameters' bytes (names sorted): equal iff the weights are bitwise equal."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trained(suite: SuiteParams, key: str, seed: int, x_tr: Tensor, y_tr: Tensor,
            folder: Path, *, offline: bool = False) -> tuple[nn.Module, dict]:
    """The model ``key`` trained with the suite's recipe and ``seed`` (cached in ``folder``)."""
    params = suite.model_zoo[key]
    _, ds = suite.dataset_of(key)
    settings = {"recipe": params.model_dump(mode="json"), "seed": seed,
                "torch": torch.__version__, "threads": suite.threads}
    ckpt, meta = folder / "model.pt", folder / "train.json"
    if ckpt.is_file() and meta.is_file():
        doc = json.loads(meta.read_text())
        if doc.get("settings") == settings:
            model = build_small_cnn(params, ds.source)
            model.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu"))
            return model.float().eval(), doc["summary"]
    if offline:
        raise Missing(str(ckpt))
    t0 = time.perf_counter()
    model, history = train_recipe(params, ds.source, x_tr, y_tr, device=suite.device, seed=seed)
    wall = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    summary = {"final_train_loss": round(history[-1], 6), "train_time_s": round(wall, 2),
               "parameters_sha256": state_sha256(model)}
    write_json({"settings": settings, "summary": summary}, meta)
    return model.float().eval(), summary


# --- one (model, seed): every run the figures need ---------------------------------------------

class Runs:
    """The attack runs of one trained replica, each computed once (:func:`cached`)."""

    def __init__(self, suite: SuiteParams, key: str, model: nn.Module, x: Tensor, y: Tensor,
                 folder: Path, weights: str, *, offline: bool = False) -> None:
        self.suite, self.key, self.model, self.x, self.y = suite, key, model, x, y
        self.folder, self.offline = folder, offline
        self.eps = suite.dataset_of(key)[1].eps
        self.base = {"model": key, "parameters_sha256": weights, "n": int(y.shape[0]),
                     "eps": self.eps, "torch": torch.__version__, "threads": suite.threads}
        self.done: dict[str, dict] = {}  # run name -> summary (each run computed once)

    @property
    def wall(self) -> float:
        """Compute seconds of the runs (as measured when each was computed, cached or not)."""
        return sum(r["wall_time_s"] for r in self.done.values())

    def _run(self, name: str, settings: dict, compute: Callable[[], dict]) -> dict:
        if name not in self.done:
            self.done[name] = cached(self.folder / f"{name}.json", {**self.base, **settings},
                                     compute, offline=self.offline)
        return self.done[name]

    def pgd(self, loss: str, precision: str, budget: int, targeted: bool = False) -> dict:
        """:func:`tmifpe.evaluate` with the suite's attack settings (3 targets if targeted)."""
        a = self.suite.attack
        targets = self.suite.precisions[Precision(precision)].n_targets if targeted else 0
        settings = {"kind": "pgd", "loss": loss, "precision": precision, "budget": budget,
                    "targets": targets, "attack": a.model_dump(mode="json")}

        def compute() -> dict:
            r = tmifpe.evaluate(
                self.model, self.x, self.y, loss=loss, eps=self.eps, budget=budget,
                precision=precision, targets=targets, schedule=_value(a.schedule),
                momentum=a.momentum, restarts=a.restarts, seed=a.seed,
                batch_size=a.batch_size, tstar_rule=_value(a.tstar_rule),
                device=self.suite.device)
            return {"robust_acc": r.robust_acc, "n_robust": int(r.robust.sum()),
                    "passes_per_point": r.passes_per_point,
                    "zero_grad_steps": int(r.zero_grad_steps.sum()),
                    "backward_passes": int(r.n_backward.sum()),
                    "robust": r.robust.int().tolist(), "wall_time_s": round(r.wall_time_s, 3)}

        tag = f"t{targets}" if targeted else "u"
        return self._run(f"pgd-{loss}-{tag}-{precision}-b{budget}", settings, compute)

    def autoattack(self) -> dict:
        """Standard AutoAttack; fp32 verdict of a fresh forward pass (as the AutoAttack cell)."""
        aa = self.suite.autoattack
        settings = {"kind": "autoattack", "seed": aa.seed, "batch_size": aa.batch_size}

        def compute() -> dict:
            t0 = time.perf_counter()
            ev = evaluate_autoattack(self.model, self.x, self.y, eps=self.eps, seed=aa.seed,
                                     batch_size=aa.batch_size, device=self.suite.device)
            rows = ev.frame()
            robust = torch.from_numpy(rows["robust_fp32"].to_numpy())
            passes = torch.from_numpy((2 * rows["n_grad"] + rows["n_queries"]).to_numpy())
            return {"robust_acc": float(robust.float().mean()), "n_robust": int(robust.sum()),
                    "passes_per_point": float(passes.double().mean()),
                    "robust": robust.int().tolist(), "passes": passes.tolist(),
                    "wall_time_s": round(time.perf_counter() - t0, 3)}

        return self._run("autoattack", settings, compute)

    def fast(self) -> dict:
        """The fast preset of the suite on every point (random starts as in the fast cell)."""
        fp = self.suite.fast
        settings = {"kind": "fast", "fast": fp.model_dump(mode="json")}

        def compute() -> dict:
            t0 = time.perf_counter()
            res = run_fast(self.model, self.x, self.y, preset_config(fp, self.eps))
            robust = res.clean_correct & ~res.verdict.broken(self.y)
            return {"robust": robust.int().tolist(), "passes": res.passes.tolist(),
                    "preset": preset_config(fp, self.eps).name,
                    "wall_time_s": round(time.perf_counter() - t0, 3)}

        return self._run("fast", settings, compute)


def _value(v: Any) -> str:
    return str(getattr(v, "value", v))


def _pct(run: dict) -> float:
    return 100.0 * run["robust_acc"]


Figure = tuple[float, str]  # (value, description)


def fast_figures(runs: Runs) -> dict[str, Figure]:
    """The preset vs AutoAttack on the held-out split (aggregate/fast.py's definitions)."""
    fp = runs.suite.fast
    held = ~tuning_mask(int(runs.y.shape[0]), fp.split_seed, fp.tuning_fraction)
    f, aa = runs.fast(), runs.autoattack()

    def mean(values: list[int]) -> float:
        t = torch.tensor(values, dtype=torch.float64)[held]
        return float(t.mean()) if t.numel() else math.nan

    f_acc, aa_acc = 100 * mean(f["robust"]), 100 * mean(aa["robust"])
    f_pass, aa_pass = mean(f["passes"]), mean(aa["passes"])
    return {
        "fast_heldout_robust_pct": (f_acc, "fast preset robust acc, held-out split (%)"),
        "fast_heldout_aa_pct": (aa_acc, "AutoAttack robust acc, held-out split (%)"),
        "fast_gap_pts": (f_acc - aa_acc, "fast − AutoAttack, held-out (points)"),
        "fast_pass_ratio": (f_pass / aa_pass if aa_pass > 0 else math.nan,
                            "fast / AutoAttack passes per point, held-out"),
    }


def std_pgd_figures(runs: Runs, plan: Plan) -> dict[str, Figure]:
    b = plan.std_budget
    out: dict[str, Figure] = {}
    for loss in ("ce", "mifpe", "tmifpe"):
        for p in PRECISIONS:
            run = runs.pgd(loss, p, b)
            out[f"{loss}_u_b{b}_{p}_pct"] = (_pct(run), f"untargeted {loss} b{b} {p} robust (%)")
            if loss == "ce" and p == "fp16":
                frac = run["zero_grad_steps"] / max(run["backward_passes"], 1)
                out[f"ce_u_b{b}_fp16_zero_grad_pct"] = (
                    100 * frac, "fp16 CE steps with an exactly-zero input gradient (%)")
    for loss in ("mifpe", "tmifpe"):
        vals = [out[f"{loss}_u_b{b}_{p}_pct"][0] for p in PRECISIONS]
        out[f"{loss}_u_b{b}_min_pct"] = (min(vals), f"{loss} b{b}: lowest over precisions (%)")
        out[f"{loss}_u_b{b}_max_pct"] = (max(vals), f"{loss} b{b}: highest over precisions (%)")
    return out


def aa_figures(runs: Runs, plan: Plan) -> dict[str, Figure]:
    aa = runs.autoattack()
    return {"aa_robust_pct": (_pct(aa), "AutoAttack (standard) robust acc (%)"),
            "aa_passes_per_point": (aa["passes_per_point"], "AutoAttack passes per point")}


def at_pgd_figures(runs: Runs, plan: Plan) -> dict[str, Figure]:
    top = plan.at_top
    out: dict[str, Figure] = {}
    for loss in ("ce", "cw", "dlr", "mifpe", "tmifpe"):
        out[f"{loss}_u_b{top}_fp32_pct"] = (_pct(runs.pgd(loss, "fp32", top)),
                                            f"untargeted {loss} b{top} fp32 robust (%)")
    for b in plan.at_budgets:
        ce, tm = _pct(runs.pgd("ce", "fp32", b)), _pct(runs.pgd("tmifpe", "fp32", b))
        out[f"ce_u_b{b}_fp32_pct"] = (ce, f"untargeted ce b{b} fp32 robust (%)")
        out[f"tmifpe_u_b{b}_fp32_pct"] = (tm, f"untargeted tmifpe b{b} fp32 robust (%)")
        out[f"ce_minus_tmifpe_b{b}_pts"] = (ce - tm, f"CE − T-MIFPE, untargeted b{b} (points)")
    return out


def at_vs_aa_figures(runs: Runs, plan: Plan) -> dict[str, Figure]:
    out: dict[str, Figure] = {}
    aa = runs.autoattack()
    for loss, b in (("mifpe", plan.targeted_mifpe), ("tmifpe", plan.targeted_tmifpe)):
        run = runs.pgd(loss, "fp32", b, targeted=True)
        name = f"{loss}_t_b{b}_fp32"
        out[f"{name}_pct"] = (_pct(run), f"targeted {loss} b{b} fp32 robust (%)")
        out[f"{name}_examples_above_aa"] = (float(run["n_robust"] - aa["n_robust"]),
                                            f"targeted {loss} b{b}: robust examples − AA's")
        out[f"{name}_pass_ratio_vs_aa"] = (run["passes_per_point"] / aa["passes_per_point"],
                                           f"targeted {loss} b{b} passes / AA passes")
    w = plan.worst_case
    robust = torch.ones(int(runs.y.shape[0]), dtype=torch.bool)
    for loss in ("ce", "cw", "dlr", "mifpe", "tmifpe"):
        for targeted in (False, True):
            robust &= torch.tensor(runs.pgd(loss, "fp32", w, targeted)["robust"], dtype=torch.bool)
    out[f"worst10_b{w}_fp32_pct"] = (100 * float(robust.float().mean()),
                                     f"worst case over the ten PGD attacks, b{w} fp32 (%)")
    return out


def fast_block(runs: Runs, plan: Plan) -> dict[str, Figure]:
    return fast_figures(runs)


# figure blocks per model, in order (cheap first); a block is left out if a run is missing
BLOCKS: dict[str, tuple[Callable[[Runs, Plan], dict[str, Figure]], ...]] = {
    STD: (std_pgd_figures, aa_figures, fast_block),
    AT: (at_pgd_figures, aa_figures, at_vs_aa_figures, fast_block),
}


# --- claims --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    id: str
    model: str
    statement: str
    margin: str  # what the margin means
    rule: Callable[[dict[str, float]], tuple[bool, float]]  # figures -> (holds, margin)


def claims(plan: Plan) -> list[Claim]:
    b, top, w = plan.std_budget, plan.at_top, plan.worst_case
    tm, mi = f"tmifpe_t_b{plan.targeted_tmifpe}_fp32", f"mifpe_t_b{plan.targeted_mifpe}_fp32"

    def fp16_breaks(f: dict[str, float]) -> tuple[bool, float]:
        m = f[f"ce_u_b{b}_fp16_pct"] - max(f[f"ce_u_b{b}_{p}_pct"] for p in PRECISIONS[1:])
        return m > 0, m

    def scaled_low(f: dict[str, float]) -> tuple[bool, float]:
        m = f[f"ce_u_b{b}_fp16_pct"] - max(f[f"mifpe_u_b{b}_max_pct"],
                                            f[f"tmifpe_u_b{b}_max_pct"])
        return m > 0, m

    def scaled_stronger(f: dict[str, float]) -> tuple[bool, float]:
        m = (min(f[f"{x}_u_b{top}_fp32_pct"] for x in ("ce", "cw", "dlr"))
             - max(f[f"{x}_u_b{top}_fp32_pct"] for x in ("mifpe", "tmifpe")))
        return m > 0, m

    def every_budget(f: dict[str, float]) -> tuple[bool, float]:
        m = min(f[f"ce_minus_tmifpe_b{x}_pts"] for x in plan.at_budgets)
        return m > 0, m

    def near_aa(f: dict[str, float]) -> tuple[bool, float]:
        m = max(f[f"{mi}_examples_above_aa"], f[f"{tm}_examples_above_aa"])
        return m <= 1, m

    def cheap(f: dict[str, float]) -> tuple[bool, float]:
        m = max(f[f"{mi}_pass_ratio_vs_aa"], f[f"{tm}_pass_ratio_vs_aa"])
        return m <= 0.10, m

    def worst_below(f: dict[str, float]) -> tuple[bool, float]:
        m = f["aa_robust_pct"] - f[f"worst10_b{w}_fp32_pct"]
        return m > 0, m

    def fast_target(f: dict[str, float]) -> tuple[bool, float]:
        return f["fast_gap_pts"] <= 1e-9 and f["fast_pass_ratio"] <= 0.10, f["fast_gap_pts"]

    out = [
        Claim("fp16_ce_breaks", STD, f"untargeted CE b{b}: fp16 robust acc above bf16, fp32 "
              "and fp64", "fp16 − max(bf16, fp32, fp64), points", fp16_breaks),
        Claim("scaled_losses_low_at_every_precision", STD, f"MIFPE and T-MIFPE b{b} at every "
              "precision below fp16 CE", "fp16 CE − highest MIFPE/T-MIFPE, points", scaled_low),
        Claim("scaled_losses_stronger", AT, f"untargeted fp32 b{top}: MIFPE and T-MIFPE below "
              "CE, C&W and DLR", "min(CE, C&W, DLR) − max(MIFPE, T-MIFPE), points",
              scaled_stronger),
        Claim("tmifpe_below_ce_every_budget", AT, "untargeted fp32: T-MIFPE below CE at every "
              f"budget ({'/'.join(map(str, plan.at_budgets))})",
              "smallest CE − T-MIFPE over budgets, points", every_budget),
        Claim("targeted_within_one_example_of_aa", AT, f"targeted MIFPE b{plan.targeted_mifpe} "
              f"and T-MIFPE b{plan.targeted_tmifpe} (fp32) at most one example above AutoAttack",
              "robust examples above AA, worse of the two", near_aa),
        Claim("targeted_under_10pct_of_aa_passes", AT, "those two targeted attacks cost at most "
              "10 % of AutoAttack's passes per point", "larger pass ratio", cheap),
        Claim("worst_of_ten_below_aa", AT, f"worst case over the ten PGD attacks (fp32, b{w}) "
              "below AutoAttack", "AA − worst case, points", worst_below),
    ]
    out += [Claim(f"fast_target_met_{m}", m, "fast preset, held-out: gap vs AutoAttack <= 0 and "
                  "pass ratio <= 0.10", "gap vs AA, points", fast_target) for m in (STD, AT)]
    return out


# --- statistics and output -----------------------------------------------------------------------

def spread(values: list[float]) -> dict[str, float | None]:
    """mean, sample sd (ddof 1; None for one seed), min, max of the per-seed values."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) != len(values):
        raise ValueError(f"non-finite per-seed value in {values}")
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def summarise(per_seed: dict[str, dict[int, dict[str, Figure]]], plan: Plan) -> tuple[list, list]:
    figures, claim_rows = [], []
    for model, by_seed in per_seed.items():
        names: dict[str, str] = {}  # figure -> description, in first-seen order
        for s in sorted(by_seed):
            names.update({k: d for k, (_, d) in by_seed[s].items() if k not in names})
        for name, desc in names.items():
            vals = {s: by_seed[s][name][0] for s in sorted(by_seed) if name in by_seed[s]}
            figures.append({"model": model, "figure": name, "description": desc,
                            "per_seed": {str(s): v for s, v in vals.items()},
                            **spread(list(vals.values()))})
    for c in claims(plan):
        if not per_seed.get(c.model):
            continue
        by_seed = per_seed[c.model]
        res = {}
        for s in sorted(by_seed):
            try:
                res[s] = c.rule({k: v for k, (v, _) in by_seed[s].items()})
            except KeyError:  # a figure of this seed is missing (--cached-only)
                continue
        if not res:
            continue
        margins = [m for _, m in res.values()]
        claim_rows.append({
            "id": c.id, "model": c.model, "statement": c.statement, "margin_meaning": c.margin,
            "per_seed": {str(s): {"holds": h, "margin": m} for s, (h, m) in res.items()},
            "n_holds": sum(h for h, _ in res.values()), "n_seeds": len(res),
            "margin_min": min(margins), "margin_max": max(margins)})
    return figures, claim_rows


def print_tables(console: Console, figures: list, claim_rows: list, seeds: list[int]) -> None:
    t = Table(title="Headline figures across seeds")
    for col in ("model", "figure", *[f"seed {s}" for s in seeds], "mean", "sd", "min", "max"):
        t.add_column(col, justify="left" if col in ("model", "figure") else "right",
                     no_wrap=True)
    for f in figures:
        sd = "—" if f["sd"] is None else f"{f['sd']:.2f}"
        per = f["per_seed"]
        t.add_row(f["model"], f["figure"],
                  *[f"{per[str(s)]:.2f}" if str(s) in per else "—" for s in seeds],
                  f"{f['mean']:.2f}", sd, f"{f['min']:.2f}", f"{f['max']:.2f}")
    console.print(t)
    c = Table(title="Claims per seed")
    for col in ("model", "claim", "holds", "margin min..max", "margin"):
        c.add_column(col)
    for r in claim_rows:
        ok = "green" if r["n_holds"] == r["n_seeds"] else "red"
        c.add_row(r["model"], r["id"], f"[{ok}]{r['n_holds']}/{r['n_seeds']}[/{ok}]",
                  f"{r['margin_min']:.3g}..{r['margin_max']:.3g}", r["margin_meaning"])
    console.print(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="few points, one budget (smoke test)")
    ap.add_argument("--n-examples", type=int, default=None,
                    help="first N evaluation points (default: the suite's; 12 with --quick)")
    ap.add_argument("--models", nargs="+", default=[STD, AT])
    ap.add_argument("--cached-only", action="store_true",
                    help="compute nothing: report the (model, seed) pairs whose runs are all "
                         "cached (e.g. filled by parallel invocations), list the others")
    ap.add_argument("--started-at", type=float, default=None,
                    help="unix time the run began (its first invocation, when parallel "
                         "invocations filled the cache): recorded as run_wall_time_s")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the suite's `threads`)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        ap.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    suite = load_params(args.params)
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        suite = suite.model_copy(update={"threads": args.threads})
    unknown = [m for m in args.models if m not in (STD, AT) or m not in suite.model_zoo]
    if unknown:
        ap.error(f"--models: {unknown} not among the suite's trained models {STD}, {AT}")
    t_start = time.perf_counter()
    contract = numerics(suite.threads)  # the runtime contract, for the whole benchmark
    contract.__enter__()
    plan = plan_for(suite, args.quick)
    console = Console(stderr=True)
    data: dict[str, dict[str, Tensor]] = {}
    per_seed: dict[str, dict[int, dict[str, Figure]]] = {}
    models_out: dict[str, dict] = {}
    compute_s = 0.0
    for key in args.models:
        ds_key, ds = suite.dataset_of(key)
        if ds_key not in data:
            data[ds_key] = build_dataset(ds, Path(suite.data_dir))
        tensors = data[ds_key]
        n = args.n_examples or (12 if args.quick else ds.n_examples)
        if n > ds.n_examples:
            ap.error(f"--n-examples {n} exceeds the suite's {ds.n_examples} points of {ds_key}")
        x, y = tensors["x_test"][:n], tensors["y_test"][:n]
        mode = f"{'quick' if args.quick else 'full'}-n{n}"
        models_out[key] = {"recipe": suite.model_zoo[key].model_dump(mode="json"),
                           "dataset": ds_key, "n_examples": n, "seeds": {}, "missing_seeds": []}
        per_seed[key] = {}
        for seed in args.seeds:
            folder = args.work / key / f"seed{seed}"
            console.log(f"{key} seed {seed}: training")
            try:
                model, train = trained(suite, key, seed, tensors["x_train"], tensors["y_train"],
                                       folder, offline=args.cached_only)
                with torch.no_grad():
                    pred = PrecisionModel(model, Precision.FP32)(x).argmax(dim=1)
                clean = 100 * float((pred == y).double().mean())
                runs = Runs(suite, key, model, x, y, folder / mode, train["parameters_sha256"],
                            offline=args.cached_only)
                console.log(f"{key} seed {seed}: attacks")
                figs: dict[str, Figure] = {"clean_acc_pct": (clean, "clean accuracy (%)")}
                for block in BLOCKS[key]:
                    try:
                        figs.update(block(runs, plan))
                    except Missing as missing:  # only with --cached-only
                        console.log(f"{key} seed {seed}: a block left out ({missing})")
                        left = models_out[key].setdefault("incomplete_seeds", {})
                        left.setdefault(str(seed), []).append(block.__name__)
            except Missing as missing:
                console.log(f"{key} seed {seed}: not cached ({missing}); left out")
                models_out[key]["missing_seeds"].append(seed)
                continue
            per_seed[key][seed] = figs
            compute_s += runs.wall + train["train_time_s"]
            models_out[key]["seeds"][str(seed)] = {
                "train": train, "attack_compute_s": round(runs.wall, 2),
                "figures": {k: v for k, (v, _) in figs.items()}}
    figures, claim_rows = summarise(per_seed, plan)
    report = {
        "benchmark": "seed_spread", "mode": "quick" if args.quick else "full",
        "seeds": args.seeds, "plan": plan.__dict__ | {"at_budgets": list(plan.at_budgets)},
        "suite": suite.name, "attack": suite.attack.model_dump(mode="json"),
        "precisions": {p.value: v.model_dump(mode="json") for p, v in suite.precisions.items()},
        "environment": environment(suite.threads), "sd": "sample standard deviation (ddof 1)",
        "units": "*_pct: percent of the evaluation points; *_pts: percentage points",
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "compute_time_s": round(compute_s, 1),
        "run_wall_time_s": None if args.started_at is None
        else round(time.time() - args.started_at, 1),
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
        "models": models_out, "figures": figures, "claims": claim_rows,
    }
    write_json(report, args.out)
    print_tables(Console(width=160), figures, claim_rows, args.seeds)
    console.log(f"wrote {args.out} (wall {report['wall_time_s']} s, compute {compute_s:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
