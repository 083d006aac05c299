"""The trainer shared by ``sft`` and ``preference``: setup, step, maybe_log, maybe_save, finish.

One optimizer step = ``accum`` micro-batches of forward/backward on every rank, then the optimizer
update (DeepSpeed). At every step boundary all ranks all-reduce one small vector: the step's metric
sums and two flags, "the scheduler asked this process to stop" (``ctx.should_checkpoint()``, which
only the signalled process sees) and "a periodic save is due". So every rank sees the same
decision and saves at the same step; after a stop-save the stage raises ``ctx.interrupted()`` and
the runtime requeues the job, which resumes from the newest complete checkpoint.

Files of a training task::

    <task>/model/               the final HF folder (safetensors + processor)    [output]
    <task>/metrics.jsonl        one JSON line per optimizer step                  [output]
    <task>/train.json           summary: steps, samples, time, layout, resumes    [output]
    <task>/tensorboard/         with tensorboard = true                           [output]
    <task>/.work/checkpoints/step-NNNNNNN/   see mcmdpo.method.train.checkpoint
    <task>/.work/metrics.jsonl  the live metrics file
    <task>/.work/complete.json  written after the export: a restart only returns the outputs

The test pause (:func:`mcmdpo.batch.resumable.pause_for_tests`) runs after every step of a task's first
attempt (outside the timed part), so tests can stretch it across a time limit without burning CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from mcmdpo.batch.artifacts import write_json_atomic
from mcmdpo.batch.errors import ConfigError, StateError
from mcmdpo.batch.resumable import copy_atomic, mark_complete, pause_for_tests, reusable
from mcmdpo.batch.stage import TaskContext
from mcmdpo.method.data.shards import PreferenceShards
from mcmdpo.method.model.images import check_geometry
from mcmdpo.method.train import checkpoint
from mcmdpo.method.train.batches import (
    DataOrder,
    Prefetcher,
    WorkerLoader,
    conversation_lengths,
    sample_lengths,
    step_loader,
)
from mcmdpo.method.train.engine import build_engine, seed_everything, setup_distributed
from mcmdpo.method.train.export import export_model
from mcmdpo.method.train.metrics import MetricsLog, log_line
from mcmdpo.method.train.objectives import MicroResult, SampleSource
from mcmdpo.method.train.spec import TrainSpec

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from transformers import PreTrainedModel, ProcessorMixin

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "train.json"
MODEL_DIR = "model"
TENSORBOARD = "tensorboard"


class Objective(Protocol):
    metric_names: tuple[str, ...]

    def prepare(self, indices: Sequence[int]) -> None: ...

    def load(self, indices: Sequence[int]) -> Any: ...

    def loss(self, model: PreTrainedModel, batch: Any) -> MicroResult: ...


ObjectiveFactory = Callable[[SampleSource, "PreTrainedModel", "ProcessorMixin"], Objective]


class IncompatibleCheckpoint(StateError):
    """A checkpoint written under other settings (world size, model shapes, data)."""


@dataclass
class StepTimes:
    """Where one step's time went (seconds, this rank): waiting for data, forward + backward, the
    optimizer update, the step-boundary all-reduce (which also waits for the slowest rank)."""

    step_s: float = 0.0
    data_s: float = 0.0
    compute_s: float = 0.0
    update_s: float = 0.0
    sync_s: float = 0.0


@dataclass
class Counters:
    """Running totals carried by checkpoints."""

    step: int = 0
    samples: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    resumes: int = 0


# ------------------------------------------------------------------------------------------- entry


@dataclass
class TrainData:
    """What a task trains on, before the model is loaded: the image mode the model must use, and
    how to make the sample source once the model's processor is known (and check it fits)."""

    mode: str
    make_source: Callable[[ProcessorMixin], Any]
    lengths: Callable[[int, str], list[int]]
    """``lengths(n, stage)``: upstream's modality lengths of the first ``n`` samples, for
    ``data_order = "length_grouped"``."""
    check: Callable[[ProcessorMixin], None] = lambda processor: None


def run_training(
    ctx: TaskContext,
    spec: TrainSpec,
    init_dir: Path,
    build_objective: ObjectiveFactory,
    data: TrainData | None = None,
) -> list[str]:
    """Train from ``init_dir`` on ``data`` (default: the recipe's precompute shards); export; return
    the outputs (rank 0)."""
    done = exported_outputs(ctx)
    if done is not None:
        return done if ctx.rank == 0 else []
    trainer = setup(ctx, spec, init_dir, build_objective, data or preference_data(ctx))
    trainer.resume()
    trainer.train()
    return trainer.finish()


def setup(
    ctx: TaskContext, spec: TrainSpec, init_dir: Path, build_objective: ObjectiveFactory, data: TrainData
) -> Trainer:
    """Process group, starting model, objective, data order and DeepSpeed engine of one task."""
    rank, _, world = setup_distributed(ctx.world_size)
    layout = spec.layout(world)  # batch arithmetic fails here, before anything is loaded
    set_cpu_threads(world)
    seed = spec.seed if spec.seed is not None else int(ctx.seed)
    seed_everything(seed, rank)
    policy = load_policy(init_dir, spec, data.mode)
    data.check(policy.processor)
    source = data.make_source(policy.processor)
    objective = build_objective(source, policy.model, policy.processor)
    n = min(len(source), spec.max_samples or len(source))
    lengths = data.lengths(n, ctx.stage) if spec.data_order == "length_grouped" else None
    order = DataOrder(n, layout, seed, lengths)
    objective.prepare(range(order.num_samples))
    total = min(order.steps_per_epoch * spec.epochs, spec.max_steps or 2**62)
    engine = build_engine(policy.model, spec, layout, total)
    return Trainer(ctx, spec, engine, objective, order, total, policy)


def preference_data(ctx: TaskContext) -> TrainData:
    """The precompute shards (image mode and crop size as stored) through :class:`SampleSource`."""
    shards = open_shards(ctx)
    reader = shards.readers[0]
    mode = str(reader.attrs.get("mode", "pad"))
    return TrainData(
        mode,
        lambda processor: SampleSource(shards, processor, mode),
        lambda n, stage: sample_lengths(shards.text_column, n, stage),
        lambda processor: check_geometry(
            processor, reader.attrs.get("patch_shape"), reader.path, "the training model"
        ),
    )


def conversation_data(ctx: TaskContext) -> TrainData:
    """The ``sft_data`` shards (encoded images, decoded in DataLoader workers); the image mode is
    the one the ``model`` stage declares (pad without one)."""
    from mcmdpo.method.data.sft_shards import SftShards
    from mcmdpo.method.model.folders import declared_mode
    from mcmdpo.method.samples import ConversationSource

    tasks = ctx.inputs.get("sft_data")
    if not tasks:
        raise ConfigError(f"stage {ctx.stage} trains on the sft_data shards, but none were consumed")
    shards = SftShards.from_inputs(tasks)
    mode = declared_mode(ctx) or "pad"
    return TrainData(
        mode,
        lambda processor: ConversationSource(shards, processor, mode),
        lambda n, stage: conversation_lengths(shards.text_column("conversations")[:n]),
    )


def open_shards(ctx: TaskContext) -> PreferenceShards:
    tasks = ctx.inputs.get("precompute")
    if not tasks:
        raise ConfigError(
            f"stage {ctx.stage} needs a [precompute] section: it trains on the precomputed shards"
        )
    return PreferenceShards.from_inputs(tasks)


@dataclass
class Policy:
    """The starting model as loaded: what the engine wraps and what the export needs."""

    model: PreTrainedModel
    processor: ProcessorMixin
    mode: str
    use_cache: bool | None
    shapes: dict[str, list[int]]


def load_policy(init_dir: Path, spec: TrainSpec, mode: str) -> Policy:
    """fp32 weights (DeepSpeed keeps fp32 masters and casts for bf16), paradigm, checkpointing."""
    from transformers.utils import logging as hf_logging

    from mcmdpo.method.model import load_llava, set_gradient_checkpointing

    hf_logging.disable_progress_bar()  # progress bars garble job log files
    model, processor = load_llava(
        init_dir,
        mode=mode,  # type: ignore[arg-type]
        train_vision_tower=spec.vision_tower == "trained",
        dtype=torch.float32,
    )
    use_cache = model.config.text_config.use_cache
    set_gradient_checkpointing(model, spec.gradient_checkpointing)
    model.train()
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    return Policy(model, processor, mode, use_cache, shapes)


def set_cpu_threads(world: int) -> None:
    """On CPU, give each rank of this node an equal share of the cores, set explicitly.

    Explicitly: torch's implicit default and an explicit ``set_num_threads`` of the same number give
    different floating-point results in places (MKL/oneDNN settings), so resumed and uninterrupted
    runs, in a job or in-process, must all go through the same call.
    """
    if torch.cuda.is_available():
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))


def exported_outputs(ctx: TaskContext) -> list[str] | None:
    """The outputs of an earlier attempt that exported everything but died before DONE."""
    record = reusable(ctx.work_dir, ctx.out_dir, ctx.task_id)
    if record is None:
        return None
    ctx.summary.update(record.get("summary", {}))
    return list(record["outputs"])


# ----------------------------------------------------------------------------------------- trainer


class Trainer:
    """Owns the engine, the data order, the counters, the metrics log and the checkpoints."""

    def __init__(
        self,
        ctx: TaskContext,
        spec: TrainSpec,
        engine: DeepSpeedEngine,
        objective: Objective,
        order: DataOrder,
        total_steps: int,
        policy: Policy,
    ):
        self.ctx, self.spec, self.engine, self.objective, self.order = ctx, spec, engine, objective, order
        self.total, self.policy = total_steps, policy
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.root = ctx.work_dir / CHECKPOINTS
        self.counters = Counters()
        tensorboard = ctx.out_dir / TENSORBOARD if spec.tensorboard else None
        self.metrics = MetricsLog(ctx.work_dir / METRICS, enabled=self.rank == 0, tensorboard=tensorboard)
        self.names = ("loss", "micro_batches", "samples", "tokens", *objective.metric_names, "stop", "due")
        self.last_save = time.time()
        self.stop = self.due = False
        self.record: dict[str, Any] = {}

    # ---------------------------------------------------------------- resume

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed from."""
        layout = self.order.layout
        return {
            "world_size": self.world,
            "layout": [layout.global_batch, layout.micro, layout.accum],
            "num_samples": self.order.num_samples,
            "seed": self.order.seed,
            "total_steps": self.total,
            "shapes": self.policy.shapes,
        }

    def resume(self) -> None:
        """Load the newest complete checkpoint (rank 0 chooses for all); drop newer leftovers."""
        folder = self._agreed_checkpoint()
        state: dict[str, Any] = {}
        if folder is not None:
            state = checkpoint.read_state(folder)
            check_compatible(state, self.identity(), self.order, folder)
            checkpoint.load_checkpoint(self.engine, folder, self.rank)
            self.counters = Counters(**state["counters"])
            self.counters.resumes += 1
        if self.rank == 0:
            checkpoint.discard_after(self.root, self.counters.step if folder else -1)
            self.metrics.truncate(int(state.get("metrics_bytes", 0)))
        dist.barrier()
        self.metrics.open(self.counters.step, self.total)
        where = f"resumed from {folder.name}" if folder else "starting from scratch"
        self.ctx.log.info("%s: %d/%d steps done", where, self.counters.step, self.total)

    def _agreed_checkpoint(self) -> Path | None:
        """Rank 0 picks the newest complete folder and broadcasts its step (-1: none)."""
        choice = checkpoint.latest_complete(self.root) if self.rank == 0 else None
        step = torch.tensor([checkpoint.step_of(choice) if choice else -1], dtype=torch.long)
        dist.broadcast(step, src=0)
        if int(step) < 0:
            return None
        folder = self.root / checkpoint.step_name(int(step))
        if not folder.is_dir():
            raise RuntimeError(
                f"rank {self.rank} cannot see {folder}: is the run dir on a shared file system?"
            )
        return folder

    # ---------------------------------------------------------------- training

    def train(self) -> None:
        prefetch = step_loader(self.objective, self.order, self.rank, self.counters.step, self.total)
        try:
            while self.counters.step < self.total:
                self.step(prefetch)
                self.maybe_log()
                self.maybe_save()
        finally:
            prefetch.close()
            self.metrics.close()

    def step(self, prefetch: WorkerLoader | Prefetcher) -> None:
        """One optimizer step: forward/backward of this rank's micro-batches, update, all-reduce."""
        started = time.perf_counter()
        times = StepTimes()
        lr = float(self.engine.get_lr()[0])
        batches = prefetch.get(self.counters.step)
        times.data_s = time.perf_counter() - started
        results = [self._micro(batch, times) for batch in batches]
        synced = time.perf_counter()
        totals = self._reduce(results)
        times.sync_s = time.perf_counter() - synced
        self.counters.step += 1
        self.counters.samples += int(totals["samples"])
        self.counters.tokens += int(totals["tokens"])
        self.stop, self.due = totals["stop"] > 0, totals["due"] > 0
        times.step_s = time.perf_counter() - started
        self.counters.train_time_s += times.step_s
        self.record = self._record(totals, lr, times)
        self.ctx.progress(self.counters.step, self.total, "steps")
        if self.counters.resumes == 0:
            pause_for_tests(self.ctx)

    def _micro(self, batch: Any, times: StepTimes) -> MicroResult:
        started = time.perf_counter()
        out = self.objective.loss(self.engine.module, batch)
        self.engine.backward(out.loss)
        computed = time.perf_counter()
        self.engine.step()  # the optimizer update on the last micro-batch of the step
        times.compute_s += computed - started
        times.update_s += time.perf_counter() - computed
        out.loss = out.loss.detach()
        return out

    def _reduce(self, results: list[MicroResult]) -> dict[str, float]:
        """Sum the step's numbers and flags over micro-batches and ranks (one all-reduce)."""
        metric_names = self.names[4:-2]
        values = [
            sum(float(r.loss) for r in results),
            len(results),
            sum(r.samples for r in results),
            sum(r.tokens for r in results),
            *(sum(r.sums[n] for r in results) for n in metric_names),
            float(self.ctx.should_checkpoint()),
            float(self._save_due()),
        ]
        return dict(zip(self.names, all_reduce_sum(values), strict=True))

    def _save_due(self) -> bool:
        minutes = self.spec.checkpoint_every_minutes
        return minutes is not None and time.time() - self.last_save >= minutes * 60

    def _record(self, totals: dict[str, float], lr: float, times: StepTimes) -> dict[str, Any]:
        samples = max(totals["samples"], 1.0)
        grad_norm = self.engine.get_global_grad_norm()
        record: dict[str, Any] = {
            "step": self.counters.step,
            "epoch": round(self.counters.step / self.order.steps_per_epoch, 4),
            "loss": totals["loss"] / max(totals["micro_batches"], 1.0),
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "samples": self.counters.samples,
            "tokens": self.counters.tokens,
            "samples_per_s": totals["samples"] / times.step_s,
            "tokens_per_s": totals["tokens"] / times.step_s,
            **asdict(times),
            "time": time.time(),
        }
        record.update({n: totals[n] / samples for n in self.names[4:-2]})
        return record

    # ---------------------------------------------------------------- logging and saving

    def maybe_log(self) -> None:
        self.metrics.write(self.record)
        step = self.counters.step
        if self.rank == 0 and (step % self.spec.log_every_steps == 0 or step == self.total):
            log_line(self.ctx.log, self.record, self.total)

    def maybe_save(self) -> None:
        """Periodic saves (steps or minutes), and the stop-save followed by the requeue request."""
        step, every = self.counters.step, self.spec.checkpoint_every_steps
        periodic = (every is not None and step % every == 0) or self.due
        if self.stop or (periodic and step < self.total):
            self.save()
        if self.stop:
            self.ctx.log.info("stop requested: saved step %d, asking to be requeued", step)
            raise self.ctx.interrupted()

    def save(self) -> None:
        """Checkpoint the current step on every rank (collective), then keep the last k."""
        if checkpoint.incomplete_reason(self.root / checkpoint.step_name(self.counters.step)) is None:
            return  # resumed from this very step and asked to stop again: it is already saved
        started = time.time()
        epoch, in_epoch = self.order.position(self.counters.step)
        state = {
            **self.identity(),
            "stage": self.ctx.stage,
            "task_id": self.ctx.task_id,
            "step": self.counters.step,
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "order": self.order.fingerprint(epoch),
            "counters": asdict(self.counters),
            "metrics_bytes": self.metrics.offset,
        }
        checkpoint.save_checkpoint(self.engine, self.root, self.counters.step, state, self.rank)
        if self.rank == 0:
            checkpoint.prune(self.root, self.spec.keep_last)
        self.last_save = time.time()
        self.ctx.log.info("saved checkpoint step %d in %.1f s", self.counters.step, self.last_save - started)

    # ---------------------------------------------------------------- the end

    def finish(self) -> list[str]:
        """Export the model (collective), publish metrics and summary; return outputs on rank 0.

        A stop request that arrived after the last step's check is honoured first (save, requeue):
        the job may not have the time left to export.
        """
        if all_reduce_sum([float(self.ctx.should_checkpoint())])[0] > 0:
            self.save()
            raise self.ctx.interrupted()
        final = self.ctx.out_dir / MODEL_DIR
        export_model(self.engine, self.policy.processor, final, use_cache=self.policy.use_cache)
        outputs = [MODEL_DIR, METRICS, SUMMARY] + ([TENSORBOARD] if self.spec.tensorboard else [])
        summary = {
            "steps": self.counters.step,
            "samples": self.counters.samples,
            "train_time_s": round(self.counters.train_time_s, 3),
            "resumes": self.counters.resumes,
            "final_loss": self.record.get("loss"),
        }
        if self.rank == 0:
            self._publish(outputs, summary)
        dist.barrier()
        self.ctx.summary.update(summary)
        return outputs if self.rank == 0 else []

    def _publish(self, outputs: list[str], summary: dict[str, Any]) -> None:
        out, work = self.ctx.out_dir, self.ctx.work_dir
        copy_atomic(work / METRICS, out / METRICS)
        layout = self.order.layout
        write_json_atomic(
            out / SUMMARY,
            {
                **summary,
                "total_steps": self.total,
                "epochs": self.spec.epochs,
                "steps_per_epoch": self.order.steps_per_epoch,
                "num_samples": self.order.num_samples,
                "world_size": self.world,
                "global_batch_size": layout.global_batch,
                "micro_batch_size": layout.micro,
                "gradient_accumulation_steps": layout.accum,
                "zero_stage": self.spec.zero_stage,
                "precision": self.spec.precision,
            },
        )
        mark_complete(work, self.ctx.task_id, outputs, summary)
        if not self.spec.keep_checkpoints:
            checkpoint.remove_all(self.root)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (float64; on the GPU under nccl)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def check_compatible(state: dict[str, Any], expected: dict[str, Any], order: DataOrder, folder: Path) -> None:
    """Refuse a checkpoint written under other settings, naming what differs."""
    problems = [
        f"{key}: checkpoint {state.get(key)!r}, now {expected[key]!r}"
        for key in ("world_size", "layout", "num_samples", "seed", "total_steps")
        if state.get(key) != expected[key]
    ]
    problems += shape_differences(state.get("shapes", {}), expected["shapes"])
    epoch = state.get("epoch")
    if not problems and epoch is not None and state.get("order") != order.fingerprint(int(epoch)):
        problems.append("the data order of this epoch differs (numpy's permutation changed?)")
    if problems:
        raise IncompatibleCheckpoint(
            f"checkpoint {folder} does not match this job: "
            + "; ".join(problems)
            + f". Restore the previous settings, or delete {folder.parent} to start this task over."
        )


def shape_differences(
    saved: dict[str, list[int]], current: dict[str, list[int]], limit: int = 3
) -> list[str]:
    """Human lines for parameters whose shapes differ (or that exist on one side only)."""
    names = sorted(set(saved) | set(current))
    diffs = [n for n in names if saved.get(n) != current.get(n)]
    lines = [f"parameter {n}: checkpoint {saved.get(n)}, model {current.get(n)}" for n in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"... {len(diffs) - limit} more parameters differ (a different model shape)")
    return lines
