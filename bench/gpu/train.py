"""Suite part ``train``: real MCM-DPO steps through the project's trainer (DeepSpeed ZeRO-2, one GPU).

A recipe runs in this process (debug executor): ``data`` (the synthetic demo set) -> ``model``
(``source = "path"``: a randomly initialised ~1.25B LLaVA-NeXT, CLIP ViT-L/14-336 + a 2048-wide,
16-layer Llama, saved here with the suite's tokenizer and processor) -> ``precompute`` (pad mode,
336 crops) -> ``reference`` (offline reference log-probs) -> ``preference`` (MCM-DPO, ZeRO-2, bf16,
gradient checkpointing, global batch 8 on one GPU). The step times come from the trainer's own
metrics JSONL (``mcmdpo.method.train.loop.StepTimes``): data wait, forward+backward, optimizer update,
step-boundary all-reduce, and the wall time between consecutive steps; the first steps are warm-up
(compilation of the flex kernels, allocator growth) and not counted. Figures are computed by
``bench/train_step.py``'s ``step_figures``, so they mean the same as in its CPU table.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import torch

from bench.gpu.common import Shape, build_model, parameter_count
from bench.train_step import step_figures
from mcmdpo.batch.launch import submit
from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe

RECIPE = """\
[run]
name = "gpu-suite-train"
output_root = "{root}"

[cluster]
executor = "debug"

[data]
num_train = {samples}
num_test = 2

[model]
source = "path"
path = "{model}"

[precompute]
mode = "pad"

[reference]
batch_size = 8
dtype = "{dtype}"

[preference]
max_steps = {steps}
epochs = 100
global_batch_size = 8
micro_batch_size = {micro}
precision = "{precision}"
gradient_checkpointing = {checkpointing}
checkpoint_every_minutes = 1000.0
log_every_steps = 1000
deepspeed = {{ zero_optimization = {{ stage = 2 }} }}
"""


def save_model_folder(shape: Shape, device: str, folder: Path) -> int:
    """A random model of ``shape`` as an HF folder (bf16 on CUDA, fp32 on CPU); its parameter count."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_model(shape.config, device, dtype, checkpointing=False)
    count = parameter_count(model)
    model.save_pretrained(folder)
    shape.processor.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return count


def write_recipe(root: Path, model: Path, device: str, steps: int, micro: int) -> Path:
    gpu = device.startswith("cuda")
    text = RECIPE.format(
        root=root / "runs",
        model=model,
        samples=8 * steps,
        steps=steps,
        micro=micro,
        dtype="bfloat16" if gpu else "float32",
        precision="bf16" if gpu else "fp32",
        checkpointing="true" if gpu else "false",
    )
    path = root / "train.toml"
    path.write_text(text)
    return path


def measure_training(
    shape: Shape, device: str, root: Path, steps: int, warmup: int, micro: int
) -> dict[str, Any]:
    """Run the recipe; the trainer's step figures (medians over the steps after ``warmup``)."""
    params = save_model_folder(shape, device, root / "model")
    recipe = load_recipe(write_recipe(root, root / "model", device, steps, micro))
    try:
        with _no_stdin():  # the debug executor opens pdb on a failure: let it quit at once
            report = submit(recipe)
    finally:
        _release_process_group()
    if not report.ok:
        raise RuntimeError(f"training recipe failed: {report.blocked_by}")
    (task,) = build_plan(recipe).stage("preference").tasks
    figures = step_figures(recipe.run_dir / "preference" / task.task_id, warmup)
    outside = 1 - (figures["compute_ms"] + figures["update_ms"]) / figures["wall_ms"]
    return {
        "model_parameters": params,
        "steps": steps,
        "warmup_steps": warmup,
        "global_batch": 8,
        "micro_batch": micro,
        **{k: round(v, 4) for k, v in figures.items()},
        "share_outside_fwd_bwd_update": round(outside, 4),
        "share_outside_fwd_bwd_update_sync": round(figures["outside_share"], 4),
    }


@contextlib.contextmanager
def _no_stdin() -> Any:
    saved = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = saved


def _release_process_group() -> None:
    """The in-process trainer leaves its one-process group behind; later parts do not need it."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
