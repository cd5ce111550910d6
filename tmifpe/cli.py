"""The ``tmifpe`` command: evaluate any model outside DVC, and the pipeline's commands.

``tmifpe evaluate`` attacks a model given as a TorchScript file, ``package.module:factory``
(+ ``--weights``) or a RobustBench ID on ``digits``/``mnist``/``cifar10``/``cifar100`` or an
ImageFolder directory, and writes ``DIR/summary.json`` and ``DIR/examples.parquet`` (the attack
cells' schema, docs/results-schema.md). ``tmifpe report`` renders the report from existing
aggregate results. Bad input: one line on stderr naming the value, exit code 2, no output.
"""

from __future__ import annotations

import enum
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tmifpe import __version__
from tmifpe.dispatch.cli import prefetch as dispatch_prefetch
from tmifpe.dispatch.cli import run as dispatch_run
from tmifpe.dispatch.cli import status as dispatch_status
from tmifpe.losses import LossName
from tmifpe.precision import Precision

app = typer.Typer(
    name="tmifpe",
    help="Adversarial robustness under floating-point error: evaluate a model with PGD and the "
         "T-MIFPE loss, or run the DVC benchmark's commands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Pipeline commands: `tmifpe run` / `tmifpe status` dispatch the DVC grid through Dask
# (tmifpe/dispatch/cli.py; importing it does not import Dask).
app.command()(dispatch_run)
app.command()(dispatch_prefetch)
app.command()(dispatch_status)


class Attack(str, enum.Enum):
    """Attack presets of ``evaluate`` (``pgd``: the suite's PGD engine with the chosen loss)."""

    PGD = "pgd"
    FAST = "fast"  # the fast preset (tmifpe/attacks/fast.py, docs/fast.md); ignores --loss etc.


class ThreatModel(str, enum.Enum):
    """Threat models the attacks implement (l-inf only)."""

    LINF = "Linf"


DEFAULT_EPS = {"digits": 0.2, "mnist": 0.3, "cifar10": 8 / 255, "cifar100": 8 / 255}
SCHEMA_DOC = "docs/results-schema.md"


def _fail(message: str) -> typer.Exit:
    """One line on stderr, exit code 2 (bad input; tmifpe/errors.py)."""
    from tmifpe.errors import usage_error

    return usage_error(message)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tmifpe {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="On an error, print the full traceback too.")] = False,
) -> None:
    """tmifpe: PGD with CE, C&W, DLR, MIFPE and T-MIFPE at fp16/bf16/fp32/fp64 or under
    autocast (amp-fp16/amp-bf16), verified."""
    from tmifpe.errors import set_debug

    set_debug(debug)
    ctx.call_on_close(lambda: set_debug(False))  # this invocation only (in-process callers)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(
        help="RobustBench model ID (with --dataset and --threat-model), a TorchScript file, or "
             "package.module:factory (with --weights).")],
    dataset: Annotated[str, typer.Option(
        help="digits, mnist, cifar10, cifar100, or a folder <dir>/<class>/<image> "
             "(torchvision ImageFolder).")],
    out: Annotated[Path, typer.Option(help="Output folder: summary.json, examples.parquet.")],
    loss: Annotated[LossName, typer.Option(help="Attack loss.")] = LossName.TMIFPE,
    eps: Annotated[str | None, typer.Option(
        help="l-inf radius in [0,1] pixel units, a number or a fraction such as 8/255 "
             "(default: 0.2 digits, 0.3 mnist, 8/255 cifar; required for a folder).")] = None,
    budget: Annotated[int, typer.Option(min=1, help="PGD iterations per run.")] = 100,
    precision: Annotated[Precision, typer.Option(
        help="Attack arithmetic: fp16/bf16/fp32/fp64 (model and loss cast to the dtype) or "
             "amp-fp16/amp-bf16 (torch.autocast, fp32 weights); verdicts always at fp32.")
    ] = Precision.FP32,
    n_examples: Annotated[int | None, typer.Option(
        min=1, help="First N test points (default: all).")] = None,
    targets: Annotated[int, typer.Option(
        min=0, help="0: untargeted; T: targeted, one run per class ranked 2..T+1.")] = 0,
    attack: Annotated[Attack, typer.Option(help="Attack preset.")] = Attack.PGD,
    vs_autoattack: Annotated[bool, typer.Option(
        "--vs-autoattack", help="Also run standard AutoAttack (pyautoattack) on the same "
                                "points and compare accuracy and cost.")] = False,
    weights: Annotated[Path | None, typer.Option(
        help="State dict for a package.module:factory model (torch.load weights_only).")
    ] = None,
    threat_model: Annotated[ThreatModel, typer.Option(
        help="Threat model (of the attacks and of a RobustBench ID).")] = ThreatModel.LINF,
    seed: Annotated[int, typer.Option(help="Attack seed.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Points per batch.")] = 500,
    device: Annotated[str, typer.Option(
        help="cpu, cuda, cuda:N or auto (CUDA when present).")] = "auto",
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads for torch during the attacks (default: torch's).")] = None,
    data_dir: Annotated[Path, typer.Option(
        help="Where torchvision keeps (or downloads) mnist/cifar.")] = Path("data/raw"),
    model_dir: Annotated[Path, typer.Option(
        help="Where RobustBench keeps (or downloads) checkpoints.")] = Path("models/robustbench"),
) -> None:
    """Attack a model on a dataset; print a summary table, write DIR/summary.json and
    DIR/examples.parquet (per-example results in the attack cells' schema)."""
    from tmifpe.data.spec import DatasetSpecError
    from tmifpe.errors import UserError, handled
    from tmifpe.models.spec import ModelSpecError

    # bad input: one line, exit 2; a failure while running (CUDA out of memory, a bug): one
    # line, exit 1 (`tmifpe --debug evaluate ...` prints the traceback)
    with handled(batch_option="--batch-size"):
        try:
            ctx = _prepare(model, dataset, weights, eps, n_examples, threat_model.value,
                           device, threads, data_dir, model_dir, out)
            summary = _run(ctx, loss.value, budget, precision.value, targets, attack,
                           vs_autoattack, seed, batch_size)
        except (ModelSpecError, DatasetSpecError, ValueError, FileNotFoundError) as err:
            raise UserError(str(err)) from None
    _print_summary(summary)


def parse_eps(text: str) -> float:
    """``"8/255"`` or ``"0.03"`` -> float; one-line ValueError naming the value otherwise."""
    from fractions import Fraction

    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--eps {text!r} is not a number; expected e.g. 0.03 or 8/255") from None


def _prepare(model: str, dataset: str, weights: Path | None, eps_text: str | None,
             n_examples: int | None, threat_model: str, device: str, threads: int | None,
             data_dir: Path, model_dir: Path, out: Path) -> dict[str, Any]:
    """Check every argument, then load data and model (cheap checks first)."""

    from tmifpe.data.spec import NAMED, check_dataset_spec, load_eval_set
    from tmifpe.models.spec import check_robustbench_id, load_spec_model, parse_model_spec
    from tmifpe.runtime import resolve_device

    spec = parse_model_spec(model, weights)
    check_dataset_spec(dataset)
    if eps_text is None:
        if dataset not in NAMED:
            raise ValueError(f"--eps is required for an image folder (--dataset {dataset})")
        eps = DEFAULT_EPS[dataset]
    else:
        eps = parse_eps(eps_text)
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"--eps {eps} out of range; expected 0 < eps <= 1 (pixels in [0,1])")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        dev = resolve_device(device)
    except RuntimeError as err:
        raise ValueError(str(err)) from None
    rb_dataset = dataset if dataset in NAMED else ""
    if spec.kind == "robustbench":  # before any data download
        check_robustbench_id(spec.value, rb_dataset, threat_model)
    data = load_eval_set(dataset, n_examples, data_dir)
    net = load_spec_model(spec, weights=weights, dataset=rb_dataset, threat_model=threat_model,
                          model_dir=model_dir)
    n_classes = _check_model_fits(net, data, spec.value, dataset)
    return {"spec": spec, "data": data, "model": net, "eps": float(eps), "device": dev,
            "n_classes": n_classes, "threads": threads,
            "out": out, "dataset_arg": dataset, "weights": weights}


def _check_model_fits(net: Any, data: Any, model: str, dataset: str) -> int:
    """The model's number of classes, after checking it accepts the data and covers its labels."""
    import torch

    try:
        with torch.no_grad():
            logits = net(data.x[:2])
    except Exception as exc:  # shape/dtype mismatches of a user's model: one line
        msg = " ".join(str(exc).split())
        raise ValueError(f"--model {model} fails on --dataset {dataset} inputs of shape "
                         f"{tuple(data.x.shape[1:])}: {msg[:200]}") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"--model {model} returns {type(logits).__name__} "
                         f"{tuple(getattr(logits, 'shape', ()))}, expected (N, K) logits")
    if int(data.y.max()) >= logits.shape[1]:
        raise ValueError(f"--model {model} has {logits.shape[1]} outputs but --dataset {dataset} "
                         f"has labels up to {int(data.y.max())}")
    return int(logits.shape[1])


def _run(ctx: dict[str, Any], loss: str, budget: int, precision: str, targets: int,
         attack: Attack, vs_autoattack: bool, seed: int, batch_size: int) -> dict[str, Any]:
    """Run the chosen runner (``tmifpe.evaluate`` or ``tmifpe.evaluate_fast``) and, with
    ``--vs-autoattack``, AutoAttack; write the outputs; return summary.json's content."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tmifpe.api import evaluate as run_evaluate
    from tmifpe.api import evaluate_fast
    from tmifpe.storage import write_json, write_parquet

    data, net, out = ctx["data"], ctx["model"], ctx["out"]
    n = int(data.y.shape[0])
    if vs_autoattack and ctx["n_classes"] < 4:
        raise ValueError(f"--vs-autoattack needs a model with >= 4 classes (targeted DLR), "
                         f"--model has {ctx['n_classes']}")
    common = {"device": ctx["device"], "threads": ctx["threads"]}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), redirect_stdout=False) as bar:
        if attack is Attack.FAST:
            bar.add_task("fast preset", total=None)
            fast = evaluate_fast(net, data.x, data.y, eps=ctx["eps"], seed=seed,
                                 batch_size=batch_size, dataset=data.name,
                                 model_name=ctx["spec"].name, **common)
            frame, wall, env = fast.frame, fast.wall_time_s, fast.environment
        else:
            task = bar.add_task(f"{attack.value} {loss} {precision} budget {budget}", total=n)
            res = run_evaluate(net, data.x, data.y, loss=loss, eps=ctx["eps"], budget=budget,
                               precision=precision, targets=targets, seed=seed,
                               batch_size=batch_size,
                               progress=lambda done, total: bar.update(task, completed=done),
                               **common)
            frame, wall, env = res.frame(dataset=data.name, model=ctx["spec"].name), \
                res.wall_time_s, res.environment
        aa = _autoattack(ctx, seed, batch_size, bar) if vs_autoattack else None
    summarise_run = summarise_fast if attack is Attack.FAST else summarise
    summary = summarise_run(frame, wall_time_s=wall, aa_frame=aa[0] if aa else None,
                            aa_wall_time_s=aa[1] if aa else None)
    summary.update({"model_spec": ctx["spec"].value, "model_kind": ctx["spec"].kind,
                    "weights": None if ctx["weights"] is None else str(ctx["weights"]),
                    "dataset_spec": ctx["dataset_arg"], "attack": attack.value,
                    "schema": "docs/fast.md" if attack is Attack.FAST else SCHEMA_DOC,
                    "environment": env})
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(frame, out / "examples.parquet", metadata={"environment": env})
    if aa is not None:
        write_parquet(aa[0], out / "autoattack.parquet", metadata={"environment": env})
    write_json(summary, out / "summary.json")
    return summary


def _autoattack(ctx: dict[str, Any], seed: int, batch_size: int, bar: Any) -> tuple[Any, float]:
    """AutoAttack on the same points: the one runner (``tmifpe.evaluate_autoattack``)."""
    from tmifpe.evaluation.autoattack import evaluate_autoattack

    data = ctx["data"]
    tasks: dict[str, Any] = {}

    def on_batch(name: str, batch: int, n_batches: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(f"autoattack {name}", total=n_batches)
        bar.update(tasks[name], completed=batch + 1)

    run = evaluate_autoattack(ctx["model"], data.x, data.y, eps=ctx["eps"], seed=seed,
                              batch_size=batch_size, device=ctx["device"],
                              threads=ctx["threads"], progress=on_batch, dataset=data.name,
                              model_name=ctx["spec"].name)
    return run.frame(), run.wall_time_s


def _verdict_counts(frame: Any) -> dict[str, Any]:
    return {
        "clean_acc": frame["clean_correct"].mean(),
        "robust_acc": frame["robust_fp32"].mean(),
        "robust_acc_fp64": frame["robust_fp64"].mean(),
        "n_clean_correct": int(frame["clean_correct"].sum()),
        "n_robust": int(frame["robust_fp32"].sum()),
        "n_nonfinite_fp32": int(frame["nonfinite_fp32"].sum()),
        "n_nonfinite_fp64": int(frame["nonfinite_fp64"].sum()),
    }


def summarise(frame: Any, *, wall_time_s: float, aa_frame: Any = None,
              aa_wall_time_s: float | None = None) -> dict[str, Any]:
    """summary.json of a PGD run from the per-example frames: accuracies, non-finite verdict
    logits (``n_nonfinite_fp32``/``_fp64``) and cost in passes and seconds.

    Cost per point: PGD mean(n_forward + n_backward); AutoAttack mean(2·n_grad + n_queries)
    (:mod:`tmifpe.evaluation.cost`), as in the aggregate tables.
    """
    from tmifpe.evaluation.cost import attack_passes

    first = frame.row(0, named=True)
    s: dict[str, Any] = {
        "model": first["model"], "dataset": first["dataset"], "n_examples": frame.height,
        "loss": first["loss"], "eps": first["eps"], "budget": first["budget"],
        "precision": first["precision"], "targets": first["n_targets"],
        "restarts": first["restarts"], "seed": first["seed"],
        **_verdict_counts(frame),
        "n_false_success": int(frame["false_success"].sum()),
        "n_invalid": int((~frame["valid"]).sum()),
        "nonfinite_steps": int(frame["nonfinite_steps"].sum()),
        "dtype_only_hits": int(frame["dtype_only_hits"].sum()),
        "missed_hits": int(frame["missed_hits"].sum()),
        "cost": {
            "forward_per_point": frame["n_forward"].mean(),
            "backward_per_point": frame["n_backward"].mean(),
            "passes_per_point": frame.select(attack_passes().mean()).item(),
            "wall_time_s": round(wall_time_s, 4),
        },
    }
    if aa_frame is not None:
        s.update(_aa_summary(aa_frame, aa_wall_time_s))
        s["robust_acc_gap_vs_autoattack"] = s["robust_acc"] - s["autoattack_robust_acc"]
    return s


def summarise_fast(frame: Any, *, wall_time_s: float, aa_frame: Any = None,
                   aa_wall_time_s: float | None = None) -> dict[str, Any]:
    """summary.json of ``--attack fast`` (same cost unit as PGD: passes) and, with AutoAttack,
    the preset's gap and pass/time ratios."""
    first = frame.row(0, named=True)
    s: dict[str, Any] = {
        "model": first["model"], "dataset": first["dataset"], "n_examples": frame.height,
        "preset": first["preset"], "eps": first["eps"], "seed": first["seed"],
        **_verdict_counts(frame),
        "n_invalid": int((frame["success"] & ~frame["valid"]).sum()),
        "guard_broken": int(frame["guard_broken"].sum()),
        "flag_zero_grad": int(frame["flag_zero_grad"].sum()),
        "flag_nonfinite": int(frame["flag_nonfinite"].sum()),
        "cost": {"passes_per_point": frame["passes"].mean(),
                 "wall_time_s": round(wall_time_s, 4)},
    }
    if aa_frame is not None:
        s.update(_aa_summary(aa_frame, aa_wall_time_s))
        aa_cost = s["autoattack_cost"]
        s["gap_vs_aa_pts"] = 100 * (s["robust_acc"] - s["autoattack_robust_acc"])
        s["pass_ratio"] = (s["cost"]["passes_per_point"] / aa_cost["passes_per_point"]
                           if aa_cost["passes_per_point"] else None)
        s["time_ratio"] = wall_time_s / aa_wall_time_s if aa_wall_time_s else None
    return s


def _aa_summary(aa_frame: Any, aa_wall_time_s: float | None) -> dict[str, Any]:
    from tmifpe.evaluation.cost import autoattack_passes

    return {
        "autoattack_robust_acc": aa_frame["robust_fp32"].mean(),
        "autoattack_clean_acc": aa_frame["clean_correct"].mean(),
        "autoattack_cost": {
            "grad_per_point": aa_frame["n_grad"].mean(),
            "queries_per_point": aa_frame["n_queries"].mean(),
            "passes_per_point": aa_frame.select(autoattack_passes().mean()).item(),
            "wall_time_s": round(float(aa_wall_time_s or 0.0), 4),
        },
    }


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{s['model']} on {s['dataset']} ({s['n_examples']} points, eps "
                    f"{s['eps']:.6g})")
    for col in ("attack", "clean acc", "robust acc", "passes / point", "wall time"):
        t.add_column(col, justify="left" if col == "attack" else "right")
    if s["attack"] == "fast":
        name = f"fast preset {s['preset']}"
    else:
        kind = f"targeted x{s['targets']}" if s["targets"] else "untargeted"
        name = f"PGD {s['loss']} {s['precision']} budget {s['budget']} ({kind})"
    t.add_row(name,
              f"{100 * s['clean_acc']:.2f} %", f"{100 * s['robust_acc']:.2f} %",
              f"{s['cost']['passes_per_point']:.1f}", f"{s['cost']['wall_time_s']:.2f} s")
    if "autoattack_robust_acc" in s:
        c = s["autoattack_cost"]
        t.add_row("AutoAttack (standard)", f"{100 * s['autoattack_clean_acc']:.2f} %",
                  f"{100 * s['autoattack_robust_acc']:.2f} %", f"{c['passes_per_point']:.1f}",
                  f"{c['wall_time_s']:.2f} s")
    Console(file=sys.stdout).print(t)


@app.command()
def report(
    params: Annotated[Path, typer.Option(help="params.yaml of the suite.")] = Path("params.yaml"),
) -> None:
    """Render reports/index.html, reports/tables.tex and reports/figures/*.pdf from existing
    aggregate results (what the DVC stage `report` does), in the current folder."""
    from tmifpe.errors import handled
    from tmifpe.pipeline.config import ParamsError, load_params
    from tmifpe.report.build import build_report

    t0 = time.perf_counter()
    try:
        suite = load_params(params)
    except ParamsError as err:  # one line per problem, as the stages print it
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    with handled():
        try:
            written = build_report(suite)
        except (ValueError, FileNotFoundError) as err:
            raise _fail(str(err)) from None
    for path in written:
        typer.echo(str(path))
    typer.echo(f"report: {len(written)} files in {time.perf_counter() - t0:.1f} s", err=True)


if __name__ == "__main__":  # pragma: no cover
    app()
