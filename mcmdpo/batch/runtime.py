"""Inside a job: run one array task of a stage, resumably.

:class:`TaskRunner` is what submitit pickles and runs. It skips a task that is already DONE, exports
the torch.distributed environment for multi-task jobs, records start/interrupted/failed/done events,
and writes the DONE manifest last. The start event names the job's ``nodes`` (``host``: rank 0's) and,
for multi-task jobs, the rendezvous (:mod:`mcmdpo.batch.rendezvous`); ``mcmdpo status`` shows them.
Preemption and time limits (USR2): checkpointable stages see a flag
(``ctx.should_checkpoint()``), save at their next safe point on every rank and raise ``Interrupted``;
only then does rank 0 hand over to submitit's handler, which requeues the same job. Nothing is saved
inside the signal handler itself.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from mcmdpo.batch import toolkit_path, toolkit_version
from mcmdpo.batch.artifacts import (
    append_event,
    done_or_damaged,
    package_versions,
    read_done,
    read_events,
    write_done,
    write_json_atomic,
)
from mcmdpo.batch.integrity import write_stamps
from mcmdpo.batch.paths import RunPaths
from mcmdpo.batch.rendezvous import RendezvousError, export_rendezvous
from mcmdpo.batch.scheduler import process_start
from mcmdpo.batch.stage import (
    STOP,
    Interrupted,
    TaskContext,
    TaskInput,
    get_stage,
    install_stop_handler,
    load_plugins,
)

VERSIONED_PACKAGES = ("torch", "transformers", "deepspeed", "submitit", "h5py", "numpy")


@dataclass(frozen=True)
class TaskPayload:
    """What a job needs to run one task; plain data so it pickles by value."""

    run_dir: str
    stage: str
    task_id: str
    instance: str
    index: int
    params: dict[str, Any]
    spec: dict[str, Any]
    recipe: dict[str, Any]
    seed: int
    plugins: tuple[str, ...] = ()
    upstream: dict[str, list[str]] = field(default_factory=dict)


class TaskRunner(submitit.helpers.Checkpointable):
    """The callable submitted for every task. ``checkpoint()`` (inherited) resubmits it unchanged:
    progress lives in the task's own folder, so the requeued run continues from there."""

    def __call__(self, payload: TaskPayload) -> dict[str, Any]:
        paths = RunPaths(Path(payload.run_dir))
        done, _ = done_or_damaged(paths.done(payload.stage, payload.task_id))  # damaged: run again
        if done is not None:
            return done
        env = _job_env()
        _setup_logging(payload, env["rank"])
        events = paths.events(payload.stage, payload.task_id)
        if env["world_size"] > 1:
            env["rendezvous"] = _rendezvous(paths, payload, env)
        load_plugins(payload.plugins)
        stage = get_stage(payload.stage)
        ctx = _context(payload, paths, stage.spec.model_validate(payload.spec), env)
        previous = install_stop_handler() if stage.checkpointable else None
        ctx.attempt = sum(e["event"] == "start" for e in read_events(events))
        if env["rank"] == 0:
            append_event(events, "start", **env)
        started = time.time()
        try:
            outputs = stage.run(ctx) or []
        except Interrupted:
            return self._requeue(ctx, events, previous, env)
        except BaseException as exc:
            if not isinstance(exc, SystemExit | KeyboardInterrupt):
                _record_failure(paths, payload, env, exc)
            raise
        if env["rank"] != 0:
            return {"rank": env["rank"], "status": "done"}
        manifest = _manifest(payload, ctx, outputs, started, events, env)
        write_done(paths.done(payload.stage, payload.task_id), manifest)
        write_stamps(paths.task_dir(payload.stage, payload.task_id), manifest)
        append_event(events, "done", duration_s=manifest["duration_s"], **env)
        return manifest

    def _requeue(self, ctx: TaskContext, events: Path, previous: Any, env: dict[str, Any]) -> dict[str, Any]:
        """Progress is saved: let submitit requeue the job (rank 0), or just end (other ranks)."""
        if env["rank"] != 0:
            return {"rank": env["rank"], "status": "interrupted"}
        append_event(events, "interrupted", **env)
        ctx.log.info("progress saved; handing over to the scheduler for requeue")
        if callable(previous):
            previous(signal.SIGUSR2, None)  # submitit: checkpoint() + requeue + exit
        raise RuntimeError("asked to requeue, but no scheduler handler is installed (debug executor?)")


def _rendezvous(paths: RunPaths, payload: TaskPayload, env: dict[str, Any]) -> str:
    """Export the torch.distributed environment; a rendezvous that cannot work fails the task."""
    try:
        return export_rendezvous().describe()
    except RendezvousError as exc:
        _record_failure(paths, payload, env, exc)
        raise


def _record_failure(paths: RunPaths, payload: TaskPayload, env: dict[str, Any], exc: BaseException) -> None:
    """Rank 0 appends a "failed" event; any other rank writes its own file, which ``mcmdpo status``
    reads too: on several nodes the first rank to fail is often not rank 0 (whose peers are then
    killed before they can say why)."""
    fields = {"error": _one_line(exc), "trace": traceback.format_exc()[-4000:], **env}
    if env["rank"] == 0:
        append_event(paths.events(payload.stage, payload.task_id), "failed", **fields)
    else:
        record = {"event": "failed", "time": time.time(), **fields}
        write_json_atomic(paths.rank_failure(payload.stage, payload.task_id, env["rank"]), record)


def _job_env() -> dict[str, Any]:
    try:
        env = submitit.JobEnvironment()
        return {
            "job_id": env.job_id,
            "rank": env.global_rank,
            "local_rank": env.local_rank,
            "world_size": env.num_tasks,
            "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "host": socket.gethostname(),
            "nodes": list(env.hostnames),
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "log": str(env.paths.stderr).replace("%t", str(env.global_rank)),
        }
    except (RuntimeError, KeyError):  # not inside a submitit job (debug executor, direct call)
        return {
            "job_id": "",
            "rank": 0,
            "local_rank": 0,
            "world_size": 1,
            "restarts": 0,
            "host": socket.gethostname(),
            "nodes": [socket.gethostname()],
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "log": "",
        }


def _context(payload: TaskPayload, paths: RunPaths, spec: Any, env: dict[str, Any]) -> TaskContext:
    out_dir = paths.task_dir(payload.stage, payload.task_id)
    work_dir = paths.work_dir(payload.stage, payload.task_id)
    work_dir.mkdir(parents=True, exist_ok=True)
    return TaskContext(
        stage=payload.stage,
        task_id=payload.task_id,
        index=payload.index,
        params=payload.params,
        spec=spec,
        recipe=payload.recipe,
        seed=payload.seed,
        run_dir=paths.run_dir,
        out_dir=out_dir,
        work_dir=work_dir,
        inputs={s: [_input(paths, s, t) for t in ids] for s, ids in payload.upstream.items()},
        rank=env["rank"],
        local_rank=env["local_rank"],
        world_size=env["world_size"],
        log=logging.getLogger(f"mcmdpo.{payload.stage}"),
    )


def _input(paths: RunPaths, stage: str, task_id: str) -> TaskInput:
    manifest = read_done(paths.done(stage, task_id))
    if manifest is None:
        raise RuntimeError(f"upstream task {stage}/{task_id} is not DONE ({paths.task_dir(stage, task_id)})")
    folder = paths.task_dir(stage, task_id)
    outputs = tuple(folder / o for o in manifest.get("outputs", []))
    return TaskInput(stage, task_id, folder, manifest.get("params", {}), outputs)


def _manifest(
    payload: TaskPayload, ctx: TaskContext, outputs: Any, started: float, events: Path, env: dict[str, Any]
) -> dict[str, Any]:
    rel = []
    for out in outputs:
        path = (ctx.out_dir / out).resolve()
        if not path.exists():
            raise FileNotFoundError(f"stage {payload.stage} returned output {out} but {path} does not exist")
        if ctx.out_dir.resolve() not in (path, *path.parents):
            raise ValueError(f"stage {payload.stage} output {path} is outside its task folder {ctx.out_dir}")
        rel.append(str(path.relative_to(ctx.out_dir.resolve())))
    first = next((e["time"] for e in read_events(events) if e["event"] == "start"), started)
    from mcmdpo.batch.integrity import describe_outputs

    return {
        "stage": payload.stage,
        "task_id": payload.task_id,
        "instance": payload.instance,
        "index": payload.index,
        "params": payload.params,
        "inputs": payload.upstream,
        "outputs": rel,
        "files": describe_outputs(ctx.out_dir, rel),
        "summary": ctx.summary,
        "duration_s": round(time.time() - started, 3),
        "wall_s": round(time.time() - first, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "job_id": env["job_id"],
        "host": env["host"],
        "nodes": env["nodes"],
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    """Package versions, and where the mcmdpo that ran the task is installed."""
    return {
        "mcmdpo": toolkit_version(),
        "mcmdpo_path": toolkit_path(),
        "python": platform.python_version(),
        **package_versions(VERSIONED_PACKAGES),
    }


def _setup_logging(payload: TaskPayload, rank: int) -> None:
    fmt = f"%(asctime)s %(levelname)s [{payload.stage}:{payload.task_id} r{rank}] %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)
    STOP.clear()


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # e.g. "No space left on device: <file>"
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:500] if text else type(exc).__name__
