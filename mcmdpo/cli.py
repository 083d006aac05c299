"""The `mcmdpo` command: each command parses, calls one library function, prints."""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts are plain: "[score.nltk]" stays as written
    help="Reproduce and extend MCM-DPO on SLURM clusters: recipes -> jobs -> tables and figures.",
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True, highlight=False)  # lines are never wrapped; tables fit the width
err = Console(stderr=True, soft_wrap=True, highlight=False)  # errors: one line each, never wrapped
OPTIONS = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from mcmdpo import __version__

        print(f"mcmdpo {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an error")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Reproduce and extend MCM-DPO on SLURM clusters: recipes -> submitit jobs -> tables."""
    OPTIONS["debug"] = debug


RecipeArg = Annotated[Path, typer.Argument(help="recipe TOML file, e.g. recipes/demo.toml")]
SetOpt = Annotated[list[str], typer.Option("--set", help="override before validation: dotted.key=value")]
ProtocolOpt = Annotated[list[str], typer.Option(help="paper and/or coco (repeat the option for both)")]


def _load(recipe: Path, overrides: list[str]):  # noqa: ANN202 - Recipe, imported lazily
    from mcmdpo.batch.recipe import load_recipe

    return load_recipe(recipe, overrides)  # a RecipeError is printed by main(): one line per problem


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:  # type: ignore[assignment]
    """Check a recipe and print it resolved (defaults filled in, overrides applied, sweep expanded)."""
    loaded = _load(recipe, set_ or [])
    sys.stdout.write(loaded.resolved_toml())
    points = len(loaded.variants) if loaded.sweep else 1
    err.print(f"ok: {recipe} ({len(loaded.stages)} stages, {points} sweep point(s))", highlight=False)


@app.command()
def submit(
    recipe: RecipeArg,
    set_: SetOpt = None,  # type: ignore[assignment]
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, submit nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as JSON")] = False,
    rerun: Annotated[
        str, typer.Option(help="STAGE[,STAGE]: run these stages (and what reads them) again")
    ] = "",
    wait: Annotated[bool, typer.Option("--wait", help="wait for a running submission of this run")] = False,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="the same DAG on stand-ins (tiny model, CPU, local): <run>-smoke")
    ] = False,
) -> None:
    """Plan the recipe and submit every task that is not done yet (re-run it any time to resume)."""
    from mcmdpo.batch import display
    from mcmdpo.batch.launch import submit as submit_plan

    if as_json and not dry_run:
        raise typer.BadParameter("--json needs --dry-run")
    with _loaded(recipe, set_ or [], smoke, dry_run) as loaded:
        if dry_run:
            _print_dry_run(submit_plan(loaded, dry_run=True), loaded, as_json)
            return
        out.print(display.plan_table(submit_plan(loaded, dry_run=True)))
        observer = display.LiveObserver(err) if err.is_terminal else display.LineObserver(err)
        try:
            report = submit_plan(
                loaded, observer=observer, rerun=_stages(rerun), wait=wait, overrides=set_ or []
            )
        except KeyboardInterrupt:
            if OPTIONS["debug"]:
                raise
            err.print("interrupted; re-submit to resume (finished tasks are kept)", markup=False)
            raise typer.Exit(130) from None
        finally:
            getattr(observer, "close", lambda: None)()
    _finish(report, smoke)


@app.command()
def rehearse(
    recipe: RecipeArg,
    set_: SetOpt = None,  # type: ignore[assignment]
    smoke: Annotated[bool, typer.Option("--smoke", help="stand-in data files (paper recipes)")] = False,
    cpu: Annotated[
        bool, typer.Option("--cpu/--no-cpu", help="also one real step per stage on the CPU (slow at 7B)")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
) -> None:
    """One real-shape step of every GPU stage at 1-2 layers: pass/fail, tokens, measured activations,
    memory plan per task (written to <run dir>/rehearsal.json for --dry-run and validation)."""
    from mcmdpo.smoke.rehearsal import rehearse_recipe, report_lines

    report = rehearse_recipe(recipe, set_ or [], smoke, cpu, log=lambda line: err.print(Text(line)))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for line in report_lines(report):
            out.print(Text(line))
        out.print(Text(f"written: {report['file']}"))
    if not report["ok"]:
        raise typer.Exit(1)


def _stages(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _finish(report, smoke: bool = False) -> None:  # noqa: ANN001 - SubmitReport, imported lazily
    """The real counts, the results table (when scores exist), and the exit code."""
    from mcmdpo.batch import display
    from mcmdpo.batch.status import run_status

    result = run_status(report.plan.run_dir)
    out.print(display.status_table(result))
    for line in display.failed_details(result):
        err.print(line)
    table = _results(report.plan.run_dir)
    if table is not None:
        out.print(table)
    if smoke and report.ok:
        from mcmdpo.smoke.standins import report_markdown

        sys.stdout.write(report_markdown(report.plan) or "(no [report] stage in this recipe)\n")
    out.print(Text(f"run dir: {report.plan.run_dir}   (mcmdpo status {report.plan.run_dir})"))
    if not report.ok:
        err.print(Text(f"not finished: {report.blocked_by or 'failed tasks'}", style="red"))
        raise typer.Exit(1)


def _results(run_dir: Path):  # noqa: ANN202 - a rich Table or None
    try:
        from mcmdpo.report.outputs import results_table
    except ImportError:  # the report's extras are not installed
        return None
    return results_table([run_dir])


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (<output_root>/<run.name>)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable, with output paths")] = False,
    all_plans: Annotated[bool, typer.Option("--all", help="also tasks of earlier plans of the run")] = False,
    tasks: Annotated[bool, typer.Option("--tasks", help="one row per task: state, job, nodes")] = False,
) -> None:
    """Tasks done / running / pending / failed per stage, requeues, nodes, and where failed tasks logged.

    Exits 1 when a task failed.
    """
    from mcmdpo.batch import display
    from mcmdpo.batch.status import run_status

    result = run_status(run_dir, all_plans=all_plans)
    failed = sum(s["failed"] for s in result["stages"])
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        out.print(display.status_table(result))
        if tasks:
            out.print(display.tasks_table(result))
        running = [t for s in result["stages"] for t in s["task_status"] if t["state"] == "running"]
        if running:
            out.print(display.running_table(running))
        for line in display.failed_details(result):
            out.print(line)
        _earlier(result.get("earlier"))
        table = _results(Path(run_dir))
        if table is not None:
            out.print(table)
    if failed:
        raise typer.Exit(1)


def _earlier(rows: list | None) -> None:
    if rows is None:
        return
    out.print(Text(f"{len(rows)} task(s) of earlier plans not in the current one"))
    for row in rows:
        out.print(Text(f"  {row['stage']}/{row['task_id']}: {row['state']} ({row['plan']}, {row['dir']})"))


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="folder holding run dirs (default: runs)")] = Path("runs"),
) -> None:
    """Every run dir below ROOT with its task counts and last submission."""
    from mcmdpo.batch import display
    from mcmdpo.batch.status import list_runs

    out.print(display.runs_table(list_runs(root)))


@app.command()
def cancel(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Stop a run: scancel its SLURM jobs, or interrupt its local submission and tasks."""
    from mcmdpo.batch.launch import cancel as cancel_run

    for line in cancel_run(run_dir) or ["nothing to stop: no task of this run is queued or running"]:
        out.print(Text(line))


@app.command()
def verify(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Check every finished task's outputs against the sizes and sha256 recorded in its DONE."""
    from mcmdpo.batch.recovery import verify_run

    checked, problems = verify_run(run_dir)
    for line in problems:
        out.print(Text(line))
    out.print(Text(f"{checked} finished task(s) checked, {len(problems)} problem(s)"))
    if problems:
        out.print(Text("re-submit the recipe: damaged tasks are set aside and run again"))
        raise typer.Exit(1)


@app.command()
def clean(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    yes: Annotated[bool, typer.Option("--yes", help="delete (default: only list)")] = False,
    latest: Annotated[bool, typer.Option("--latest", help="keep only the current plan's tasks")] = False,
) -> None:
    """Task folders no plan of the run refers to, and outputs set aside by --rerun (dry by default)."""
    from mcmdpo.batch.recovery import clean_run

    found = clean_run(run_dir, delete=yes, latest_only=latest)
    for path in found:
        out.print(Text(f"{'deleted' if yes else 'would delete'} {path}"))
    out.print(Text(f"{len(found)} folder(s){'' if yes else ' (dry run: --yes deletes them)'}"))


class Tokenizer(str, Enum):
    punkt = "punkt"
    treebank = "treebank"


class Tagger(str, Enum):
    perceptron = "perceptron"
    wordnet = "wordnet"


@app.command()
def score(
    predictions: Annotated[
        Path, typer.Argument(help="predictions JSONL: lines with `response` and `chosen`")
    ],
    protocol: ProtocolOpt = None,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option(help="metrics JSON to write")] = Path("metrics.json"),
    tokenizer: Annotated[
        Tokenizer, typer.Option(help="punkt: nltk.word_tokenize (upstream); treebank: no punkt_tab needed")
    ] = Tokenizer.punkt,
    tagger: Annotated[
        Tagger, typer.Option(help="as [score.nltk] tagger (the alt-text protocols tag nothing)")
    ] = Tagger.perceptron,
    nltk_data: Annotated[
        list[Path], typer.Option("--nltk-data", help="NLTK data folder, searched first (repeatable)")
    ] = None,  # type: ignore[assignment]
) -> None:
    """Score an alt-text predictions file standalone (per-sample scores go next to the metrics)."""
    from mcmdpo.evaluation.metrics.altext import score_file
    from mcmdpo.evaluation.metrics.nlp import NltkSpec

    text = NltkSpec(
        data_dirs=tuple(str(d) for d in nltk_data or ()), tokenizer=tokenizer.value, tagger=tagger.value
    )
    try:
        result = score_file(predictions, protocol or ["paper"], out, text)
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
    html: Annotated[
        bool | None,
        typer.Option(
            "--html/--no-html", help="index.html with tables, figures and cases (default: [report])"
        ),
    ] = None,
) -> None:
    """Tables (results.csv, table.md, table.tex), figures and index.html of finished scores."""
    from pydantic import ValidationError
    from rich.markup import escape

    from mcmdpo.report.outputs import comparison_table, report_runs

    try:
        result = report_runs(run_dirs, out_dir, layout, paper, compare, html)
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


humaneval_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Human evaluation (paper Fig. 6): blind pairwise judgements.",
)
app.add_typer(humaneval_app, name="humaneval")


def _study_errors(exc: Exception) -> None:
    """A study's problems, one line each (exit 2)."""
    from rich.markup import escape

    for line in getattr(exc, "problems", None) or [str(exc)]:
        err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


@humaneval_app.command("prepare")
def humaneval_prepare(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with finished scores")],
    more: Annotated[
        list[str] | None,
        typer.Argument(help="more A:B pairs (so that --pairs A:B C:D works)", show_default=False),
    ] = None,
    pairs: Annotated[
        list[str] | None, typer.Option(help='A:B rows (label or key) to compare, e.g. "+MCM-DPO:+DPO"')
    ] = None,
    items: Annotated[int, typer.Option(help="test items per pair (drawn with --seed)")] = 100,
    annotators: Annotated[int, typer.Option(help="one page per annotator")] = 3,
    seed: Annotated[int, typer.Option(help="seed of the item draw, sides and order")] = 0,
    benchmark: Annotated[
        str | None, typer.Option(help="benchmark (default: the run's only alt-text one)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="study folder (default <run>/humaneval)")
    ] = None,
) -> None:
    """Write one blind annotation page per annotator and the key that un-blinds them."""
    from mcmdpo.report.annotation import prepare_study

    try:
        study = prepare_study(
            run_dir, [*(pairs or []), *(more or [])], items, annotators, seed, out_dir, benchmark
        )
    except (OSError, ValueError) as exc:
        _study_errors(exc)
    for page in study.pages:
        out.print(Text(str(page)))
    err.print(
        f"study {study.fingerprint}: {study.items} items of {study.benchmark}, "
        f"{study.questions} questions per annotator; send {study.out_dir / 'pages'} to the annotators, "
        f"keep {study.key}",
        highlight=False,
        markup=False,
    )


@humaneval_app.command("collect")
def humaneval_collect(
    files: Annotated[list[Path], typer.Argument(help="the annotators' exported judgement files (JSON)")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="the study folder (holds key.json; results go here)")
    ],
    key: Annotated[Path | None, typer.Option(help="the study key (default <out>/key.json)")] = None,
) -> None:
    """Check the judgements against the key, un-blind them, and write win/tie/lose, agreement and Fig. 6."""
    from mcmdpo.report.humaneval_results import collect_study, summary_markdown

    try:
        result = collect_study(files, out_dir, key)
    except (OSError, ValueError) as exc:
        _study_errors(exc)
    sys.stdout.write(summary_markdown(result.summary))
    err.print(f"wrote {len(result.files)} files to {out_dir}", highlight=False, markup=False)


assets_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="External resources the benchmarks need."
)
app.add_typer(assets_app, name="assets")


@assets_app.command("check")
def assets_check(
    recipe: RecipeArg,
    set_: SetOpt = None,  # type: ignore[assignment]
    checksums: Annotated[bool, typer.Option(help="also hash files with known checksums")] = False,
) -> None:
    """List every resource the recipe's benchmarks need, where it is looked for, and how to get it."""
    from mcmdpo.evaluation.assets import format_assets
    from mcmdpo.evaluation.readiness import check_recipe

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
    from mcmdpo.batch.recipe import RecipeError
    from mcmdpo.smoke.standins import smoke_session

    try:
        with smoke_session(recipe, overrides, dry_run) as loaded:
            yield loaded
    except RecipeError as exc:  # say that it is the smoke version that is wrong
        raise RecipeError([replace(p, message=f"(smoke recipe) {p.message}") for p in exc.problems]) from None


def _print_dry_run(report, loaded, as_json: bool) -> None:  # noqa: ANN001
    from mcmdpo.batch.memory import plan_memory
    from mcmdpo.batch.stage import load_plugins
    from mcmdpo.smoke.cost import estimate_cost, with_cost

    estimate = estimate_cost(report.plan, loaded.profile)
    needs = plan_memory(report.plan, load_plugins(loaded.run.plugins))
    if as_json:
        plan = with_cost(report.plan.to_json(), estimate)
        for stage in plan["stages"]:
            stage["memory_gib"] = [{"point": p, "gib": round(n.gib, 2), "plan": n.summary}
                                   for p, n in needs.get(stage["name"], [])]  # fmt: skip
        sys.stdout.write(json.dumps(plan, indent=2) + "\n")
        return
    from mcmdpo.batch import display

    resources = {s.name: s.resources for s in report.plan.stages}
    out.print(display.plan_table(report, estimate.stages, display.memory_cells(needs, resources)))
    total = "unknown" if estimate.total is None else f"{estimate.total:,.1f}"
    out.print(Text(f"GPU-hours: {total} ({estimate.calibration})"))
    for note in estimate.notes:
        out.print(Text(f"  {note}"))
    if needs:
        basis = "analytic = HF Llama/CLIP layers, fused attention, assumed lengths (docs/rehearsal.md)"
        out.print(Text(f"GPU memory per task and rank, GiB; {basis}; measured = `mcmdpo rehearse`:"))
        for line in display.memory_lines(needs):
            out.print(Text(line))
    out.print(Text(f"dry run: nothing submitted; run dir would be {report.plan.run_dir}"))


USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""OS errors a user can cause and fix: shown as one line, not a traceback."""


def main() -> None:
    """The console script: user errors become one line on stderr (exit 2) unless ``--debug``."""
    from mcmdpo.batch.errors import McmdpoError
    from mcmdpo.batch.recipe import RecipeError

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started with SIGINT ignored (a background job of a script, a test runner's worker): Ctrl-C
        # and `mcmdpo cancel` (a SIGINT to the submit) must still stop a submission
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except McmdpoError as exc:
        if OPTIONS["debug"]:
            raise
        lines = [str(p) for p in exc.problems] if isinstance(exc, RecipeError) else [exc.one_line()]
        for line in lines:
            err.print(f"error: {line}", markup=False, highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:  # the machine said no (a full disk, a read-only or forbidden folder)
        if OPTIONS["debug"] or exc.errno not in USER_OS_ERRORS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"error: {exc.strerror}{where}", markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
