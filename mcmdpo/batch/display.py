"""What the terminal shows: the plan, live progress of a submission, status and runs tables.

Every cell is plain text (``rich.text.Text``), so ``[brackets]`` in stage or file names are shown,
never read as markup. On a terminal a submission shows a live table of its running tasks (stage, task,
progress from ``.work/mcmdpo-progress.json``, elapsed, log); piped, it prints one line per state change.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mcmdpo.batch.launch import Observer, SubmitReport
from mcmdpo.batch.plan import Plan, PlannedTask

STATE_STYLE = {"done": "green", "failed": "red", "submitted": "cyan", "adopted": "yellow"}


def _table(title: str, columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def _row(*cells: Any) -> list[Text]:
    return [c if isinstance(c, Text) else Text(str(c)) for c in cells]


def plan_table(
    report: SubmitReport,
    gpu_hours: dict[str, float | None] | None = None,
    memory: dict[str, str] | None = None,
) -> Table:
    """Stages with their task counts, what is done, what runs, resources, dependencies (and the
    estimated GPU-hours and GPU memory per task of a dry run)."""
    extra = [*(["GPU-h"] if gpu_hours else []), *(["GiB/GPU"] if memory else [])]
    columns = ("stage", "tasks", "done", "to run", "resources", "after", *extra)
    table = _table(f"plan: {report.plan.run_name}", columns)
    for stage, rep in zip(report.plan.stages, report.stages, strict=False):
        r = stage.resources
        res = (
            f"{r['nodes']}x{r['tasks_per_node']} tasks, {r['gpus_per_node']} gpu, {r['cpus_per_task']} cpu, "
        )
        res += f"{r['mem_gb']:g}G, {r['timeout_min']:g} min"
        placed = [t for t in stage.tasks if t.resources.get("gpus_per_node")]
        if placed:  # tasks with their own resources (a baseline too big for the stage's GPUs)
            res += f"; {len(placed)} on {max(t.resources['gpus_per_node'] for t in placed)} gpu"
        inst = f" ({len(stage.instances)} variants)" if len(stage.instances) > 1 else ""
        hours = [] if not gpu_hours else [_hours(gpu_hours.get(stage.name))]
        hours += [] if not memory else [memory.get(stage.name, "-")]
        cells = (
            stage.name,
            f"{rep.total}{inst}",
            rep.done,
            rep.total - rep.done,
            res,
            ", ".join(stage.after) or "-",
        )
        table.add_row(*_row(*cells, *hours))
    return table


def memory_cells(needs: dict[str, list[tuple[str, Any]]], resources: dict[str, dict[str, Any]]) -> dict:
    """Per stage: the largest planned GiB per GPU of its tasks, over the GPU's memory when known."""
    out = {}
    for stage, rows in needs.items():
        gib = resources.get(stage, {}).get("gpu_mem_gb")
        top = max(need.gib for _, need in rows)
        out[stage] = f"{top:.1f}" + (f" / {gib:g}" if gib else "")
    return out


def memory_lines(needs: dict[str, list[tuple[str, Any]]]) -> list[str]:
    """One line per distinct (stage, plan): the parts and whether activations are analytic or measured."""
    lines: list[str] = []
    for stage, rows in needs.items():
        seen: dict[str, list[str]] = {}
        for label, need in rows:
            seen.setdefault(need.summary, []).append(label)
        for summary, labels in seen.items():
            where = f" [{labels[0]}{f' +{len(labels) - 1}' if len(labels) > 1 else ''}]" if labels[0] else ""
            lines.append(f"  {stage}{where}: {summary}")
    return lines


def _hours(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


def format_notes(summary: dict[str, Any], limit: int = 90) -> str:
    """``key=value`` facts (the cell wraps between them), at most ``limit`` characters."""
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_table(result: dict[str, Any]) -> Table:
    """Per stage: task counts by state, requeues, and facts of its tasks (fits 80 columns); on SLURM
    also the nodes its tasks ran on."""
    slurm = result["executor"] == "slurm"
    columns = ("stage", "tasks", "done", "run", "wait", "fail", "requeue", *(("nodes",) * slurm), "notes")
    table = _table(f"{result['run']} ({result['executor']})", columns)
    for s in result["stages"]:
        counts = (s[k] for k in ("tasks", "done", "running", "pending", "failed", "requeues"))
        nodes = (compact_hosts(s.get("nodes", [])),) * slurm
        table.add_row(*_row(s["stage"], *counts, *nodes, format_notes(s["summary"])))
    return table


def tasks_table(result: dict[str, Any]) -> Table:
    """One row per task that has started: state, job, and the nodes of every attempt (rank 0's first)."""
    table = _table("tasks", ("stage", "#", "task", "state", "job", "nodes (each attempt)"))
    for stage in result["stages"]:
        for task in stage["task_status"]:
            if task.get("node_history"):
                attempts = " > ".join(",".join(nodes) for nodes in task["node_history"])
                cells = (stage["stage"], task["index"], task["task_id"], task["state"], task["job_id"] or "-")
                table.add_row(*_row(*cells, attempts))
    return table


def compact_hosts(names: Sequence[str], limit: int = 24) -> str:
    """``node[1-3],gpu07`` in the manner of Slurm's host lists; ``-`` for none."""
    groups: dict[tuple[str, int], list[int]] = {}
    plain = []
    for name in sorted(set(names)):
        match = re.fullmatch(r"(.*?)(\d+)", name)
        if match:
            groups.setdefault((match.group(1), len(match.group(2))), []).append(int(match.group(2)))
        else:
            plain.append(name)
    parts = plain + [_host_range(prefix, width, sorted(nums)) for (prefix, width), nums in groups.items()]
    text = ",".join(sorted(parts)) or "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _host_range(prefix: str, width: int, numbers: list[int]) -> str:
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    fmt = f"{{:0{width}d}}"
    spans = [fmt.format(a) if a == b else f"{fmt.format(a)}-{fmt.format(b)}" for a, b in runs]
    return prefix + spans[0] if len(spans) == 1 and "-" not in spans[0] else f"{prefix}[{','.join(spans)}]"


def format_progress(task: dict[str, Any]) -> str:
    """``step 12/40 (30%)``, ``items 8/16`` or ``-`` from a running task's progress report."""
    progress = task.get("progress") or {}
    if "done" not in progress:
        return "-"
    unit, done, total = progress.get("unit", "items"), progress["done"], progress.get("total")
    if not total:
        return f"{unit} {done}"
    return f"{unit} {done}/{total} ({100 * done / total:.0f}%)"


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def running_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = _table("running", ("stage", "task", "progress", "elapsed", "log"))
    for task in rows:
        table.add_row(*_row(task["stage"], task["task_id"], format_progress(task),
                            format_elapsed(task.get("elapsed_s")), task.get("log") or "-"))  # fmt: skip
    return table


def runs_table(runs: Sequence[dict[str, Any]]) -> Table:
    table = _table("runs", ("run dir", "executor", "tasks", "done", "run", "wait", "fail", "last submit"))
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_submit"]))
        counts = (r[k] for k in ("tasks", "done", "running", "pending", "failed"))
        table.add_row(*_row(r["path"], r["executor"], *counts, when))
    return table


class LineObserver(Observer):
    """One line per state change (piped output, log files)."""

    def __init__(self, console: Console):
        self.console = console

    def message(self, text: str) -> None:
        self.console.print(Text(text))

    def task(self, task: PlannedTask, state: str, detail: str = "", log: str = "") -> None:
        line = Text(f"{task.stage}/{task.task_id} ")
        line.append(state, style=STATE_STYLE.get(state, ""))
        if detail:
            line.append(f": {detail}" if state == "failed" else f" ({detail})")
        self.console.print(line)
        if state == "failed":
            self.console.print(Text(f"  log: {log or '-'}"))


class LiveObserver(LineObserver):
    """On a terminal: the same lines, plus a live table of the running tasks and their progress."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.live = Live(console=console, auto_refresh=False, transient=True)
        self.plan: Plan | None = None

    def tick(self, plan: Plan, running: Sequence[PlannedTask]) -> None:
        from mcmdpo.batch.status import task_status

        self.plan = plan
        rows = [task_status(plan, t, "", {}) for t in running]
        if not self.live.is_started:
            self.live.start()
        self.live.update(Group(running_table(rows)), refresh=True)

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


def failed_details(result: dict[str, Any]) -> list[Text]:
    """For every failed task: its error, log path and last log line."""
    lines = []
    for stage in result["stages"]:
        for task in stage["task_status"]:
            if task["state"] != "failed":
                continue
            line = Text("failed ", style="red")
            line.append(f"{stage['stage']}/{task['task_id']}: {task.get('error', '')}")
            lines.append(line)
            lines.append(Text(f"  log: {task.get('log') or '-'}"))
            if task.get("last_log_line"):
                lines.append(Text(f"  last line: {task['last_log_line']}"))
    return lines
