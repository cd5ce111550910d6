"""Validating the fast preset on models it was not chosen on (issue 21).

    .venv/bin/python benchmarks/fast_validation.py [--protocol benchmarks/fast_protocol.json]
        [--out benchmarks/results/fast_validation.json] [--fresh] [--shard i/n]

Follows the committed protocol file (``benchmarks/fast_protocol.json``): trains its models
(benchmarks/fast_models.py), runs verified standard AutoAttack on each
(:func:`tmifpe.evaluation.autoattack.run_autoattack_eval`), runs every candidate component alone
on the *tuning* models, selects the preset by the protocol's greedy rule (:func:`select`), then
runs the selected preset once on every model (:func:`tmifpe.evaluation.fast.run_fast_eval`),
the loss ablation of it, and scores each model against AutoAttack on the same points: robust
accuracy, gap (points), pass ratio, forward-equivalent ratio, time ratio, paired bootstrap CIs
over points, and every disagreement with the AutoAttack component that broke the point.

Protocol v2 (``benchmarks/fast_protocol_v2.json``, a ``candidates`` section; :func:`main_v2`):
candidates are whole compositions scored on every tuning model; :func:`select_cheapest` picks
the cheapest one with gap <= 0 on every tuning model within the pass-ratio budget; only it (and
the v1 preset, the reference) is then scored on the validation models. ``--shard i/n`` fills the
candidate cache in parallel processes; a run without it scores.

Protocol v3 (``benchmarks/fast_protocol_v3.json``) runs the same way (:func:`main_v2`) with
its own work dir (``--work``): v2's 14 models as tuning models, 6 new validation models, and
candidates whose phases may be focused (``focus``, :class:`tmifpe.attacks.fast.Phase`).

Refuses to score when the protocol file differs from its committed version, or from the hash a
started run recorded in the work dir (``--fresh`` discards that run's scoring caches; trained
models and AutoAttack results stay cached: they do not depend on the candidates or the rule).
Resumable: models, AutoAttack frames, component and preset results are cached under
``.tmifpe-work/fast_validation/`` (gitignored).

Wall time (one definition, docs/fast.md): seconds of the attack call alone (``run_fast_eval`` /
``run_autoattack_eval``, :func:`time.perf_counter`), same machine, same thread count, clean
pass and model loading excluded; ``time_ratio`` = fast / AutoAttack. ``aa_wall_from_cache``
says when AutoAttack's time comes from an earlier process of the same benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_models import PROTOCOL, ROOT, WORK, digits_data, load_or_train

from tmifpe.attacks.autoattack import AAConfig
from tmifpe.attacks.fast import FastConfig, Kind, Phase, run_fast
from tmifpe.evaluation.autoattack import run_autoattack_eval
from tmifpe.evaluation.fast import run_fast_eval
from tmifpe.runtime import environment
from tmifpe.storage import write_json

OUT = ROOT / "benchmarks/results/fast_validation.json"


def protocol_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LEGACY = "benchmarks/fast_protocol.json"  # the protocol a state file without "protocols" meant
V1_DIRS = ("components", "preset", "ablation")  # v1's scoring caches (--fresh discards them)
V2_DIRS = ("candidates", "ablation_v2")  # protocol v2's scoring caches


def check_protocol(path: Path, work: Path, fresh: bool,
                   scoring_dirs: tuple[str, ...] = V1_DIRS) -> str:
    """The protocol's sha256, after refusing an uncommitted/modified protocol or one that differs
    from the hash a started scoring run of the same protocol file recorded (``work/state.json``,
    one hash per protocol file)."""
    rel = path.resolve().relative_to(ROOT)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(rel)], cwd=ROOT,
                             capture_output=True).returncode == 0
    clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(rel)],
                           cwd=ROOT).returncode == 0
    if not (tracked and clean):
        raise SystemExit(f"refusing to score: {rel} is not committed as is (commit the protocol "
                         "before scoring)")
    sha = protocol_sha256(path)
    state = work / "state.json"
    known: dict[str, str] = {}
    if state.exists():
        doc = json.loads(state.read_text())
        known = doc.get("protocols", {LEGACY: doc["protocol_sha256"]})
    started = known.get(str(rel))
    if started is not None and started != sha and not fresh:
        raise SystemExit(f"refusing to score: a run was started with protocol {started[:12]}"
                         f", the file is now {sha[:12]} (the protocol may not change after "
                         "scoring starts; --fresh discards that run)")
    if fresh:
        for sub in scoring_dirs:
            shutil.rmtree(work / sub, ignore_errors=True)
    write_json({"protocol_sha256": sha, "protocols": {**known, str(rel): sha}}, state)
    return sha


# ---------------------------------------------------------------- per-model cached runs
def autoattack(key: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, proto: dict,
               work: Path, wait: bool = False) -> tuple[pl.DataFrame, float, bool]:
    """AA frame, wall seconds, whether from the cache (of an earlier process). ``wait``: poll
    for the cache another process of this benchmark is filling instead of running AA here."""
    pq, meta = work / "aa" / f"{key}.parquet", work / "aa" / f"{key}.json"
    spec = {"eps": eps, **proto["autoattack"], "n": int(y.shape[0])}
    while wait and not (pq.exists() and meta.exists()):
        time.sleep(20)
    if pq.exists() and meta.exists() and json.loads(meta.read_text())["spec"] == spec:
        return pl.read_parquet(pq), json.loads(meta.read_text())["wall_time_s"], True
    cfg = AAConfig(eps=eps, seed=proto["autoattack"]["seed"],
                   batch_size=proto["autoattack"]["batch_size"], device="cpu")
    t0 = time.perf_counter()
    ev = run_autoattack_eval(model, x, y, cfg, model_name=key, dataset="digits")
    wall = time.perf_counter() - t0
    pq.parent.mkdir(parents=True, exist_ok=True)
    ev.examples.write_parquet(pq)
    write_json({"spec": spec, "wall_time_s": wall, "stage_wall_time_s": ev.stage_wall_time_s},
               meta)
    print(f"  AA {key}: robust {ev.robust_acc:.4f} in {wall:.0f}s", flush=True)
    return ev.examples, wall, False


def phase_of(c: dict) -> Phase:
    return Phase(Kind(c["kind"]), c["steps"], loss=c["loss"], n_targets=c["n_targets"],
                 targets=c["targets"], restarts=c.get("restarts", 1),
                 focus=c.get("focus", 1.0))


def component(key: str, name: str, c: dict, model: nn.Module, x: Tensor, y: Tensor, eps: float,
              proto: dict, work: Path) -> dict[str, Any]:
    """One component alone on every point: per-point robust (fp32), passes, fwd-equivalents."""
    path = work / "components" / key / f"{name}.json"
    if path.exists() and json.loads(path.read_text())["spec"] == c:
        return json.loads(path.read_text())
    cfg = FastConfig(eps=eps, phases=(phase_of(c),), guard_queries=0, escalate_queries=0,
                     tstar_rule=proto["rule"]["tstar_rule"], seed=c["seed"])
    t0 = time.perf_counter()
    res = run_fast(model, x, y, cfg)
    wall = time.perf_counter() - t0
    out = {"spec": c, "robust": (res.clean_correct & ~res.verdict.broken(y)).tolist(),
           "passes": res.passes.tolist(), "fwd_eq": res.forward_equivalents.tolist(),
           "wall_time_s": wall}
    write_json(out, path)
    return out


def preset_config(phases: tuple[Phase, ...], eps: float, proto: dict) -> FastConfig:
    r = proto["rule"]
    return FastConfig(eps=eps, phases=phases, guard_queries=r["guard_queries"],
                      escalate_queries=r["escalate_queries"], tstar_rule=r["tstar_rule"])


def run_preset(kind: str, key: str, cfg: FastConfig, model: nn.Module, x: Tensor, y: Tensor,
               proto: dict, work: Path) -> tuple[pl.DataFrame, float, dict]:
    path = work / kind / key / f"{cfg.name}.parquet"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        m = json.loads(meta.read_text())
        return pl.read_parquet(path), m["wall_time_s"], m["environment"]
    run = run_fast_eval(model, x, y, cfg, dataset="digits", model_name=key,
                        threads=proto["threads"])
    path.parent.mkdir(parents=True, exist_ok=True)
    run.frame.write_parquet(path)
    write_json({"wall_time_s": run.wall_time_s, "environment": run.environment}, meta)
    return run.frame, run.wall_time_s, run.environment


# ---------------------------------------------------------------- selection
def aa_passes(aa: pl.DataFrame) -> np.ndarray:
    return (2 * aa["n_grad"] + aa["n_queries"]).to_numpy().astype(float)


def select(comp: dict[str, dict[str, dict]], aa: dict[str, pl.DataFrame], rule: dict
           ) -> tuple[list[str], list[dict]]:
    """The protocol's greedy rule (``rule['steps']``) on tuning models: ``comp[model][name]``
    per-point results of each component alone, ``aa[model]`` AutoAttack's frame. Returns the
    chosen components in order and the log of every step."""
    models = sorted(comp)
    names = sorted(next(iter(comp.values())))
    robust = {m: {c: np.array(comp[m][c]["robust"]) for c in names} for m in models}
    passes = {m: {c: np.array(comp[m][c]["passes"], float) for c in names} for m in models}
    correct = {m: aa[m].sort("example")["clean_correct"].to_numpy() for m in models}
    alive = {m: correct[m].copy() for m in models}  # clean-correct, no member broke them yet
    aa_cost = {m: aa_passes(aa[m].sort("example")).sum() for m in models}
    spent = {m: 0.0 for m in models}
    chosen: list[str] = []
    log: list[dict] = []
    n_total = sum(len(alive[m]) for m in models)

    def ratio_after(c: str) -> float:
        worst = 0.0
        for m in models:
            after = alive[m] & robust[m][c]
            cost = spent[m] + passes[m][c][alive[m]].sum() + rule["guard_queries"] * after.sum()
            worst = max(worst, cost / aa_cost[m])
        return worst

    def add(c: str, why: str, gain: int, cost: float) -> None:
        chosen.append(c)
        for m in models:
            spent[m] += passes[m][c][alive[m]].sum()
            alive[m] &= robust[m][c]
        log.append({"step": len(chosen), "added": c, "why": why, "gain_points": gain,
                    "cost_passes_per_point": round(cost, 3),
                    "est_worst_pass_ratio": round(max(
                        (spent[m] + rule["guard_queries"] * alive[m].sum()) / aa_cost[m]
                        for m in models), 5),
                    "robust_left": {m: int(alive[m].sum()) for m in models}})

    while True:
        best = None
        for c in names:
            if c in chosen or ratio_after(c) > rule["budget_pass_ratio"]:
                continue
            gain = sum(int((alive[m] & ~robust[m][c]).sum()) for m in models)
            cost = sum(passes[m][c][alive[m]].sum() for m in models) / n_total
            if gain > 0:
                key = (-gain / max(cost, 1e-9), cost, c)
                if best is None or key < best[0]:
                    best = (key, c, gain, cost)
        if best is None:
            break
        add(best[1], "gain/cost", best[2], best[3])
    while True:  # fill the budget with the most reliable remaining attacks
        best = None
        for c in names:
            if c in chosen or ratio_after(c) > rule["budget_pass_ratio"]:
                continue
            breaks = sum(int((correct[m] & ~robust[m][c]).sum()) for m in models)
            per = sum(passes[m][c][correct[m]].sum() for m in models)
            key = (-breaks / max(per, 1e-9), c)
            if best is None or key < best[0]:
                best = (key, c, sum(passes[m][c][alive[m]].sum() for m in models) / n_total)
        if best is None:
            break
        add(best[1], "fill", 0, best[2])
    return chosen, log


def select_cheapest(scores: dict[str, dict[str, dict]], rule: dict
                    ) -> tuple[str, bool, list[dict]]:
    """Protocol v2's rule (``rule['admissible']``, ``['select']``, ``['fallback']``) on
    ``scores[candidate][tuning model]`` rows of :func:`score` (``gap_vs_aa_pts``,
    ``pass_ratio``, ``n_missed``), candidates in protocol order. Returns the selected name,
    whether the fallback chose it, and one summary row per candidate."""
    budget = rule["budget_pass_ratio"]
    table = []
    for order, (name, per_model) in enumerate(scores.items()):
        rows = list(per_model.values())
        gaps = [r["gap_vs_aa_pts"] for r in rows]
        ratios = [r["pass_ratio"] for r in rows]
        within = max(ratios) <= budget
        table.append({"candidate": name, "order": order, "within_budget": within,
                      "admissible": within and max(gaps) <= 0,
                      "models_gap_gt_0": sum(g > 0 for g in gaps),
                      "worst_gap_pts": max(gaps), "sum_gap_pts": round(sum(gaps), 4),
                      "n_missed": sum(r["n_missed"] for r in rows),
                      "mean_pass_ratio": round(float(np.mean(ratios)), 5),
                      "worst_pass_ratio": max(ratios)})
    ok = [t for t in table if t["admissible"]]
    if ok:
        best = min(ok, key=lambda t: (t["mean_pass_ratio"], t["n_missed"], t["order"]))
        return best["candidate"], False, table
    within = [t for t in table if t["within_budget"]]
    if not within:
        raise SystemExit(f"no candidate stays within pass ratio {budget} on every tuning model")
    best = min(within, key=lambda t: (t["models_gap_gt_0"], t["worst_gap_pts"], t["sum_gap_pts"],
                                      t["mean_pass_ratio"], t["order"]))
    return best["candidate"], True, table


# How wall time and cost are counted, written into every result file (protocols v1 and v2).
DEFINITIONS: dict[str, Any] = {
    "wall_time_definition": "seconds of the attack call alone (run_fast_eval / "
                            "run_autoattack_eval), same machine, threads as in the protocol",
    "cost_definition": {"passes": "forward + backward passes (fast: n_forward + n_backward + "
                                  "n_queries + n_verify; AA: 2 n_grad + n_queries)",
                        "fwd_eq": "a backward weighted as two forwards (fast: n_forward + "
                                  "2 n_backward + n_queries + n_verify; AA: 3 n_grad + "
                                  "n_queries)"},
}


# ---------------------------------------------------------------- scoring
def bootstrap(fast_r: np.ndarray, aa_r: np.ndarray, fast_p: np.ndarray, aa_p: np.ndarray,
              spec: dict) -> dict[str, float]:
    """Paired percentile bootstrap over points of the gap (points) and the pass ratio."""
    rng = np.random.default_rng(spec["seed"])
    n = len(fast_r)
    idx = rng.integers(0, n, size=(spec["n_resamples"], n))
    gap = 100.0 * (fast_r[idx].mean(1) - aa_r[idx].mean(1))
    ratio = fast_p[idx].mean(1) / aa_p[idx].mean(1)
    lo, hi = (1 - spec["level"]) / 2, 1 - (1 - spec["level"]) / 2
    return {"gap_ci_low": round(float(np.quantile(gap, lo)), 4),
            "gap_ci_high": round(float(np.quantile(gap, hi)), 4),
            "pass_ratio_ci_low": round(float(np.quantile(ratio, lo)), 5),
            "pass_ratio_ci_high": round(float(np.quantile(ratio, hi)), 5)}


def score(key: str, role: str, eps: float, frame: pl.DataFrame, wall: float, aa: pl.DataFrame,
          aa_wall: float, aa_cached: bool, spec: dict) -> dict[str, Any]:
    f, a = frame.sort("example"), aa.sort("example")
    fr, ar = f["robust_fp32"].to_numpy(), a["robust_fp32"].to_numpy()
    fp, ap = f["passes"].to_numpy().astype(float), aa_passes(a)
    fe = f["forward_equivalents"].to_numpy().astype(float)
    ae = (3 * a["n_grad"] + a["n_queries"]).to_numpy().astype(float)
    missed = np.nonzero(fr & ~ar)[0]
    extra = np.nonzero(~fr & ar)[0]
    return {
        "model": key, "role": role, "eps": eps, "n": len(fr),
        "clean_acc": round(float(f["clean_correct"].mean()), 6),
        "robust_acc": round(float(fr.mean()), 6), "aa_robust_acc": round(float(ar.mean()), 6),
        "gap_vs_aa_pts": round(100.0 * float(fr.mean() - ar.mean()), 4),
        "passes_per_point": round(float(fp.mean()), 3),
        "aa_passes_per_point": round(float(ap.mean()), 3),
        "pass_ratio": round(float(fp.mean() / ap.mean()), 5),
        "fwd_eq_per_point": round(float(fe.mean()), 3),
        "aa_fwd_eq_per_point": round(float(ae.mean()), 3),
        "fwd_eq_ratio": round(float(fe.mean() / ae.mean()), 5),
        "wall_time_s": round(wall, 3), "aa_wall_time_s": round(aa_wall, 3),
        "time_ratio": round(wall / aa_wall, 5), "aa_wall_from_cache": aa_cached,
        **bootstrap(fr, ar, fp, ap, spec),
        "n_missed": len(missed), "n_broken_fast_only": len(extra),
        "missed": [{"example": int(i), "aa_broken_by": a["broken_by"][int(i)],
                    "aa_margin_fp32": round(float(a["margin_fp32"][int(i)]), 5),
                    "fast_margin_fp32": round(float(f["margin_fp32"][int(i)]), 5)}
                   for i in missed],
        "n_guard_broken": int(f["guard_broken"].sum()), "n_escalated": int(f["escalated"].sum()),
        "fast_broken_by": dict(sorted(f.filter(pl.col("broken_by") != "")["broken_by"]
                                      .value_counts().iter_rows())),
    }


def markdown(doc: dict) -> str:
    """The per-model table, the loss ablation and the component table of a written result, as
    Markdown (what README.md and docs/fast.md quote)."""
    out = ["| model | role | eps | points | fast robust % | AA robust % | gap (pts) [95% CI] | "
           "passes/pt fast / AA | pass ratio [95% CI] | fwd-eq ratio | time ratio | missed "
           "(AA attack) | escalated |", "|" + "---|" * 13]
    for r in sorted(doc["models"], key=lambda r: (r["role"] != "validation", r["model"])):
        missed = ", ".join(f"#{m['example']} ({m['aa_broken_by']})" for m in r["missed"]) or "0"
        out.append(
            f"| {r['model']} | {r['role']} | {r['eps']:g} | {r['n']} | "
            f"{100 * r['robust_acc']:.2f} | {100 * r['aa_robust_acc']:.2f} | "
            f"{r['gap_vs_aa_pts']:+.2f} [{r['gap_ci_low']:+.2f}, {r['gap_ci_high']:+.2f}] | "
            f"{r['passes_per_point']:.1f} / {r['aa_passes_per_point']:.1f} | "
            f"{r['pass_ratio']:.4f} [{r['pass_ratio_ci_low']:.4f}, "
            f"{r['pass_ratio_ci_high']:.4f}] | {r['fwd_eq_ratio']:.4f} | {r['time_ratio']:.3f} | "
            f"{missed} | {r['n_escalated']} |")
    out += ["", "| loss | model | role | robust % | AA % | gap (pts) | pass ratio | missed |",
            "|" + "---|" * 8]
    for r in doc["loss_ablation"]:
        out.append(f"| {r['loss']} | {r['model']} | {r['role']} | {100 * r['robust_acc']:.2f} | "
                   f"{100 * r['aa_robust_acc']:.2f} | {r['gap_vs_aa_pts']:+.2f} | "
                   f"{r['pass_ratio']:.4f} | {r['n_missed']} |")
    if "candidates_on_tuning_models" in doc:  # protocol v2
        out += ["", "| candidate | admissible | tuning models gap > 0 | worst gap (pts) | "
                "missed | mean pass ratio | worst pass ratio |", "|" + "---|" * 7]
        for t in doc["candidates_on_tuning_models"]:
            mark = " (selected)" if t["candidate"] == doc["selected"] else ""
            out.append(f"| {t['candidate']}{mark} | {'yes' if t['admissible'] else 'no'} | "
                       f"{t['models_gap_gt_0']} | {t['worst_gap_pts']:+.2f} | {t['n_missed']} | "
                       f"{t['mean_pass_ratio']:.4f} | {t['worst_pass_ratio']:.4f} |")
        ref = doc["reference"]
        out += ["", f"| reference ({ref['candidate']}) on validation models | gap (pts) [95% CI] "
                "| pass ratio | missed (AA attack) |", "|" + "---|" * 4]
        for r in ref["models"]:
            if r["role"] == "validation":
                missed = ", ".join(f"#{m['example']} ({m['aa_broken_by']})"
                                   for m in r["missed"]) or "0"
                out.append(f"| {r['model']} | {r['gap_vs_aa_pts']:+.2f} [{r['gap_ci_low']:+.2f}, "
                           f"{r['gap_ci_high']:+.2f}] | {r['pass_ratio']:.4f} | {missed} |")
        return "\n".join(out)
    out += ["", "| component | " + " | ".join(sorted({r["model"] for r in
                                                     doc["components_on_tuning_models"]})) + " |"]
    models = sorted({r["model"] for r in doc["components_on_tuning_models"]})
    out.append("|" + "---|" * (len(models) + 1))
    by = {(r["component"], r["model"]): r for r in doc["components_on_tuning_models"]}
    for c in dict.fromkeys(r["component"] for r in doc["components_on_tuning_models"]):
        cells = [f"{100 * by[c, m]['robust_acc']:.2f} % ({by[c, m]['passes_per_point']:.0f} p)"
                 for m in models]
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    aa_acc = {r["model"]: r["aa_robust_acc"] for r in doc["components_on_tuning_models"]}
    out.append("| AutoAttack | " + " | ".join(f"{100 * aa_acc[m]:.2f} %" for m in models) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------- protocol v2
def candidate_config(spec: list[dict], eps: float, proto: dict) -> FastConfig:
    g = proto["guard"]
    return FastConfig(eps=eps, phases=tuple(phase_of(c) for c in spec),
                      guard_queries=g["guard_queries"], escalate_queries=g["escalate_queries"],
                      tstar_rule=g["tstar_rule"], seed=g["seed"])


def main_v2(args: argparse.Namespace, proto: dict, sha: str) -> None:
    """Protocol v2 (``candidates``): every candidate on every tuning model, the rule's choice
    (:func:`select_cheapest`), then the choice and the reference on the validation models."""
    data = digits_data()
    n = proto["dataset"]["n_points"]
    x, y = data["x_test"][:n], data["y_test"][:n]
    specs = proto["models"]
    tuning = [k for k, s in specs.items() if s["role"] == "tuning"]
    validation = [k for k, s in specs.items() if s["role"] == "validation"]
    names = list(proto["candidates"])
    if args.shard:
        i, m = (int(v) for v in args.shard.split("/"))
        names = names[i::m]
    models = {k: load_or_train(k, specs[k]["train"], data, args.work) for k in tuning}
    aa = {k: autoattack(k, models[k], x, y, specs[k]["eps"], proto, args.work) for k in tuning}
    scores: dict[str, dict[str, dict]] = {}
    for c in names:
        scores[c] = {}
        for k in tuning:
            cfg = candidate_config(proto["candidates"][c], specs[k]["eps"], proto)
            frame, wall, _ = run_preset("candidates", k, cfg, models[k], x, y, proto, args.work)
            scores[c][k] = {"candidate": c, "preset": cfg.name,
                            **score(k, "tuning", specs[k]["eps"], frame, wall, *aa[k],
                                    proto["bootstrap"])}
            print(f"  {c} on {k}: gap {scores[c][k]['gap_vs_aa_pts']:+.2f} pts, pass ratio "
                  f"{scores[c][k]['pass_ratio']:.4f}", flush=True)
    if args.shard:
        print(f"shard {args.shard} done")
        return
    chosen, fallback, table = select_cheapest(scores, proto["rule"])
    print("selected:", chosen, "(fallback)" if fallback else "", flush=True)
    ref = proto["reference"]
    vmodels = {k: load_or_train(k, specs[k]["train"], data, args.work) for k in validation}
    rows = [scores[chosen][k] for k in tuning]
    ref_rows = [scores[ref][k] for k in tuning]
    for k in validation:
        aa[k] = autoattack(k, vmodels[k], x, y, specs[k]["eps"], proto, args.work)
        for c, out in ((chosen, rows), (ref, ref_rows)):
            cfg = candidate_config(proto["candidates"][c], specs[k]["eps"], proto)
            frame, wall, _ = run_preset("candidates", k, cfg, vmodels[k], x, y, proto, args.work)
            out.append({"candidate": c, "preset": cfg.name,
                        **score(k, "validation", specs[k]["eps"], frame, wall, *aa[k],
                                proto["bootstrap"])})
        print(f"  {k} (validation): gap {rows[-1]['gap_vs_aa_pts']:+.2f} pts, pass ratio "
              f"{rows[-1]['pass_ratio']:.4f}; reference gap {ref_rows[-1]['gap_vs_aa_pts']:+.2f}",
              flush=True)

    def verdict(rs: list[dict]) -> dict:
        val = [r for r in rs if r["role"] == "validation"]
        target = proto["verdict"]["pass_ratio_target"]
        return {"validation_models": len(val),
                "gap_le_0_on_every_validation_model": all(r["gap_vs_aa_pts"] <= 0 for r in val),
                "models_gap_gt_0": sum(r["gap_vs_aa_pts"] > 0 for r in val),
                "worst_validation_gap_pts": max(r["gap_vs_aa_pts"] for r in val),
                "worst_validation_pass_ratio": max(r["pass_ratio"] for r in val),
                "pass_ratio_le_target_on_every_validation_model":
                    all(r["pass_ratio"] <= target for r in val),
                "missed_points": sum(r["n_missed"] for r in val),
                "broken_fast_only_points": sum(r["n_broken_fast_only"] for r in val)}

    sel_v, ref_v = verdict(rows), verdict(ref_rows)
    sel_v["passes"] = (sel_v["gap_le_0_on_every_validation_model"]
                       and sel_v["pass_ratio_le_target_on_every_validation_model"])
    sel_v["at_least_as_good_as_v1_on_validation"] = (
        sel_v["models_gap_gt_0"] <= ref_v["models_gap_gt_0"]
        and sel_v["worst_validation_gap_pts"] <= ref_v["worst_validation_gap_pts"])
    doc = {
        "protocol": str(args.protocol.resolve().relative_to(ROOT)), "protocol_sha256": sha,
        "selected": chosen, "selected_by_fallback": fallback,
        "selected_phases": proto["candidates"][chosen], "preset": rows[0]["preset"],
        "candidates_on_tuning_models": table, "verdict": sel_v,
        "reference": {"candidate": ref, "preset": ref_rows[0]["preset"], "verdict": ref_v,
                      "models": ref_rows},
        **DEFINITIONS,
        "environment": environment("cpu"), "models": rows,
        "candidate_rows_on_tuning_models": [r for c in scores for r in scores[c].values()],
        "loss_ablation": [], "loss_ablation_status": "pending",
    }
    write_json(doc, args.out)  # the verdict first; the ablation (reported only) follows
    print(f"wrote {args.out} (verdict)", flush=True)
    phases = tuple(phase_of(c) for c in proto["candidates"][chosen])
    for loss in proto["loss_ablation"]["losses"]:
        ph = tuple(dataclasses.replace(p, loss=loss) for p in phases)
        for k in validation:
            cfg = dataclasses.replace(candidate_config(proto["candidates"][chosen],
                                                       specs[k]["eps"], proto), phases=ph)
            frame, wall, _ = run_preset("ablation_v2", k, cfg, vmodels[k], x, y, proto,
                                        args.work)
            r = score(k, "validation", specs[k]["eps"], frame, wall, *aa[k], proto["bootstrap"])
            doc["loss_ablation"].append(
                {"loss": loss, "preset": cfg.name,
                 **{f: r[f] for f in ("model", "role", "robust_acc", "aa_robust_acc",
                                      "gap_vs_aa_pts", "pass_ratio", "n_missed")}})
    doc["loss_ablation_status"] = "done"
    write_json(doc, args.out)
    print(f"wrote {args.out} (with the loss ablation)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", type=Path, default=PROTOCOL)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--wait-aa", action="store_true",
                    help="wait for AutoAttack caches filled by other processes of this script")
    ap.add_argument("--shard", default="",
                    help="i/n: run only every n-th candidate on the tuning models (from i), "
                         "fill the cache and exit (v2; a run without --shard then scores)")
    ap.add_argument("--markdown", action="store_true",
                    help="print the tables of the written --out JSON as Markdown (no run)")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    proto = json.loads(args.protocol.read_text())
    v2 = "candidates" in proto
    sha = check_protocol(args.protocol, args.work, args.fresh, V2_DIRS if v2 else V1_DIRS)
    torch.set_num_threads(proto["threads"])
    if v2:
        main_v2(args, proto, sha)
        return
    data = digits_data()
    n = proto["dataset"]["n_points"]
    x, y = data["x_test"][:n], data["y_test"][:n]
    models = {k: load_or_train(k, s["train"], data, args.work) for k, s in
              proto["models"].items()}
    tuning = [k for k, s in proto["models"].items() if s["role"] == "tuning"]
    aa = {k: autoattack(k, models[k], x, y, proto["models"][k]["eps"], proto, args.work,
                        args.wait_aa) for k in tuning}
    comp = {k: {name: component(k, name, c, models[k], x, y, proto["models"][k]["eps"], proto,
                                args.work)
                for name, c in proto["components"].items()} for k in tuning}
    comp_rows = [{"model": k, "component": name, "eps": proto["models"][k]["eps"],
                  "robust_acc": round(float(np.mean(r["robust"])), 6),
                  "aa_robust_acc": round(float(aa[k][0]["robust_fp32"].mean()), 6),
                  "passes_per_point": round(float(np.mean(r["passes"])), 3),
                  "wall_time_s": round(r["wall_time_s"], 3)}
                 for k in tuning for name, r in comp[k].items()]
    chosen, log = select(comp, {k: aa[k][0] for k in tuning}, proto["rule"])
    print("selected:", chosen, flush=True)
    phases = tuple(phase_of(proto["components"][c]) for c in chosen)
    rows, ablation = [], []
    frames = {k: run_preset("preset", k, preset_config(phases, s["eps"], proto), models[k], x, y,
                            proto, args.work) for k, s in proto["models"].items()}
    abl_cfgs = {loss: tuple(Phase(p.kind, p.steps, loss=loss, n_targets=p.n_targets,
                                  targets=p.targets) for p in phases)
                for loss in proto["loss_ablation"]["losses"]}
    abl_frames = {(loss, k): run_preset("ablation", k, preset_config(ph, s["eps"], proto),
                                        models[k], x, y, proto, args.work)
                  for loss, ph in abl_cfgs.items() for k, s in proto["models"].items()}
    for k, s in proto["models"].items():  # all preset runs done before waiting for AA
        aa[k] = autoattack(k, models[k], x, y, s["eps"], proto, args.work, args.wait_aa)
        cfg = preset_config(phases, s["eps"], proto)
        frame, wall, _ = frames[k]
        rows.append({"preset": cfg.name, **score(k, s["role"], s["eps"], frame, wall, *aa[k],
                                                 proto["bootstrap"])})
        print(f"  {k} ({s['role']}): gap {rows[-1]['gap_vs_aa_pts']:+.2f} pts, pass ratio "
              f"{rows[-1]['pass_ratio']:.4f}", flush=True)
    for loss, ph in abl_cfgs.items():
        for k, s in proto["models"].items():
            cfg = preset_config(ph, s["eps"], proto)
            frame, wall, _ = abl_frames[loss, k]
            r = score(k, s["role"], s["eps"], frame, wall, *aa[k], proto["bootstrap"])
            ablation.append({"loss": loss, "preset": cfg.name,
                             **{f: r[f] for f in ("model", "role", "robust_acc", "aa_robust_acc",
                                                  "gap_vs_aa_pts", "pass_ratio", "n_missed")}})
    val = [r for r in rows if r["role"] == "validation"]
    write_json({
        "protocol": str(args.protocol.resolve().relative_to(ROOT)), "protocol_sha256": sha,
        "selected": chosen, "preset": rows[0]["preset"], "selection_log": log,
        "verdict": {"validation_models": len(val),
                    "gap_le_0_on_every_validation_model": all(r["gap_vs_aa_pts"] <= 0 for r in val),
                    "worst_validation_gap_pts": max(r["gap_vs_aa_pts"] for r in val),
                    "worst_validation_pass_ratio": max(r["pass_ratio"] for r in val)},
        **DEFINITIONS,
        "environment": environment("cpu"), "models": rows, "loss_ablation": ablation,
        "components_on_tuning_models": comp_rows,
    }, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
