"""The `mcmdpo` command: each command parses, calls one library function, prints."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True, soft_wrap=True, highlight=False)  # errors: one line each, never wrapped
OPTIONS = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an error")] = False,
) -> None:
    """Reproduce and extend MCM-DPO on SLURM clusters: recipes -> submitit jobs -> tables."""
    OPTIONS["debug"] = debug


RecipeArg = Annotated[Path, typer.Argument(help="recipe TOML file, e.g. recipes/demo.toml")]
SetOpt = Annotated[list[str], typer.Option("--set", help="override before validation: dotted.key=value")]
ProtocolOpt = Annotated[list[str], typer.Option(help="paper and/or coco (repeat the option for both)")]


def _load(recipe: Path, overrides: list[str]):  # noqa: ANN202 - Recipe, imported lazily
    from mcmdpo.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except RecipeError as exc:
        err.print(f"[red]error:[/red] {len(exc.problems)} problem(s) in the recipe", highlight=False)
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:  # type: ignore[assignment]
    """Check a recipe and print it resolved (defaults filled in, overrides applied, sweep expanded)."""
    from mcmdpo.recipe.toml import dump_toml

    loaded = _load(recipe, set_ or [])
    doc = dict(loaded.doc)
    if loaded.sweep:
        doc["sweep"] = {f'"{k}"': v for k, v in loaded.sweep.items()}
    sys.stdout.write(dump_toml(doc))
    points = len(loaded.variants) if loaded.sweep else 1
    err.print(f"ok: {recipe} ({len(loaded.stages)} stages, {points} sweep point(s))", highlight=False)


@app.command()
def submit(
    recipe: RecipeArg,
    set_: SetOpt = None,  # type: ignore[assignment]
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, submit nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as JSON")] = False,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="the same DAG on stand-ins (tiny model, CPU, local): <run>-smoke")
    ] = False,
) -> None:
    """Plan the recipe and submit every task that is not done yet (re-run it any time to resume)."""
    from mcmdpo.launch import submit as submit_plan

    if as_json and not dry_run:
        raise typer.BadParameter("--json needs --dry-run")
    with _loaded(recipe, set_ or [], smoke, dry_run) as loaded:
        report = submit_plan(loaded, dry_run=dry_run, progress=lambda line: err.print(line, highlight=False))
    if dry_run:
        _print_dry_run(report, loaded, as_json)
        return
    out.print(_plan_table(report))
    out.print(f"run dir: {report.plan.run_dir}   (mcmdpo status {report.plan.run_dir})")
    if smoke and report.ok:
        from mcmdpo.smoke import report_markdown

        sys.stdout.write(report_markdown(report.plan) or "(no [report] stage in this recipe)\n")
    if not report.ok:
        err.print(f"[red]not finished:[/red] {report.blocked_by or 'failed tasks'}")
        raise typer.Exit(1)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (<output_root>/<run.name>)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable, with output paths")] = False,
) -> None:
    """Tasks done / running / pending / failed per stage, requeues, and where failed tasks logged."""
    from mcmdpo.status import run_status

    try:
        result = run_status(run_dir)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out.print(_status_table(result))
    for stage in result["stages"]:
        for task in stage["task_status"]:
            if task["state"] == "failed":
                out.print(f"[red]failed[/red] {stage['stage']}/{task['task_id']}: {task.get('error', '')}")
                out.print(f"  log: {task.get('log') or '-'}", highlight=False)
                if task.get("last_log_line"):
                    out.print(f"  last line: {task['last_log_line']}", markup=False, highlight=False)


@app.command()
def score(
    predictions: Annotated[
        Path, typer.Argument(help="predictions JSONL: lines with `response` and `chosen`")
    ],
    protocol: ProtocolOpt = None,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option(help="metrics JSON to write")] = Path("metrics.json"),
) -> None:
    """Score an alt-text predictions file standalone (per-sample scores go next to the metrics)."""
    from mcmdpo.metrics.altext import score_file

    try:
        result = score_file(predictions, protocol or ["paper"], out)
    except (OSError, ValueError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    sys.stdout.write(json.dumps(result.get("metrics", result), indent=2) + "\n")
    err.print(f"wrote {out}", highlight=False)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories; several make one table")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output folder (default <first run>/report, table on stdout)")
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="auto, all, altext, altext-coco or hallucination (default: [report])")
    ] = None,
    paper: Annotated[
        bool, typer.Option("--paper", help="add the paper's published numbers + deltas")
    ] = False,
    compare: Annotated[
        tuple[str, str] | None, typer.Option(help="two rows (label or key): paired-bootstrap p-values")
    ] = None,
) -> None:
    """Tables (results.csv, table.md, table.tex) and figures of finished scores, with bootstrap intervals."""
    from pydantic import ValidationError
    from rich.markup import escape

    from mcmdpo.report.outputs import comparison_table, report_runs

    try:
        result = report_runs(run_dirs, out_dir, layout, paper, compare)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]error:[/red] report: {escape(problems)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if out_dir is None:
        sys.stdout.write(result.markdown)
    if compare:
        out.print(comparison_table(result.comparisons, *compare))
    err.print(f"wrote {len(result.files)} files to {result.out_dir}", highlight=False)


assets_app = typer.Typer(no_args_is_help=True, help="External resources the benchmarks need.")
app.add_typer(assets_app, name="assets")


@assets_app.command("check")
def assets_check(
    recipe: RecipeArg,
    set_: SetOpt = None,  # type: ignore[assignment]
    checksums: Annotated[bool, typer.Option(help="also hash files with known checksums")] = False,
) -> None:
    """List every resource the recipe's benchmarks need, where it is looked for, and how to get it."""
    from mcmdpo.assets import check_recipe, format_assets

    statuses = check_recipe(_load(recipe, set_ or []), checksums=checksums)
    sys.stdout.write(format_assets(statuses) + "\n")
    if any(s.missing for s in statuses):
        raise typer.Exit(1)


@contextlib.contextmanager
def _loaded(recipe: Path, overrides: list[str], smoke: bool, dry_run: bool):  # noqa: ANN202
    """The recipe (its smoke version with ``--smoke``, the judge stand-in up meanwhile)."""
    if not smoke:
        yield _load(recipe, overrides)
        return
    from mcmdpo.recipe import RecipeError
    from mcmdpo.smoke import smoke_session

    try:
        with smoke_session(recipe, overrides, dry_run) as loaded:
            yield loaded
    except RecipeError as exc:
        err.print(f"[red]error:[/red] {len(exc.problems)} problem(s) in the smoke recipe", highlight=False)
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        raise typer.Exit(2) from None


def _print_dry_run(report, loaded, as_json: bool) -> None:  # noqa: ANN001
    from mcmdpo.cost import estimate_cost, with_cost

    estimate = estimate_cost(report.plan, loaded.profile)
    if as_json:
        sys.stdout.write(json.dumps(with_cost(report.plan.to_json(), estimate), indent=2) + "\n")
        return
    out.print(_plan_table(report, estimate.stages))
    total = "unknown" if estimate.total is None else f"{estimate.total:,.1f}"
    out.print(f"GPU-hours: {total} ({estimate.calibration})", highlight=False, markup=False)
    for note in estimate.notes:
        out.print(f"  {note}", highlight=False, markup=False)
    out.print(f"dry run: nothing submitted; run dir would be {report.plan.run_dir}")


def _plan_table(report, gpu_hours: dict | None = None) -> Table:  # noqa: ANN001
    table = Table(title=f"plan: {report.plan.run_name}")
    for col in ("stage", "tasks", "done", "to run", "resources", "after", *(["GPU-h"] if gpu_hours else [])):
        table.add_column(col)
    for stage, rep in zip(report.plan.stages, report.stages, strict=False):
        r = stage.resources
        res = (
            f"{r['nodes']}x{r['tasks_per_node']} tasks, {r['gpus_per_node']} gpu, {r['cpus_per_task']} cpu, "
        )
        res += f"{r['mem_gb']:g}G, {r['timeout_min']:g} min"
        inst = f" ({len(stage.instances)} variants)" if len(stage.instances) > 1 else ""
        todo = rep.total - rep.done
        hours = [] if not gpu_hours else [_hours(gpu_hours.get(stage.name))]
        table.add_row(
            stage.name,
            f"{rep.total}{inst}",
            str(rep.done),
            str(todo),
            res,
            ", ".join(stage.after) or "-",
            *hours,
        )
    return table


def _hours(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


def _status_table(result: dict) -> Table:
    table = Table(title=f"{result['run']} ({result['executor']})")
    for col in ("stage", "tasks", "done", "running", "pending", "failed", "requeues", "notes"):
        table.add_column(col)
    for s in result["stages"]:
        notes = ", ".join(f"{k}={v:g}" for k, v in s["summary"].items())
        table.add_row(
            s["stage"],
            *(str(s[k]) for k in ("tasks", "done", "running", "pending", "failed", "requeues")),
            notes,
        )
    return table


def main() -> None:
    """The console script: user errors become one line on stderr (exit 2) unless ``--debug``."""
    from mcmdpo.errors import McmdpoError

    try:
        app()
    except McmdpoError as exc:
        if OPTIONS["debug"]:
            raise
        err.print(f"error: {exc.one_line()}", markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
