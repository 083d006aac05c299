"""Inputs of the eval stage made here (an upstream-format alt-text test file with its images) and
eval task contexts, also for the child process a test kills (:func:`child_main`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mcmdpo.batch.stage import TaskContext, TaskInput
from mcmdpo.stages.eval import EvalSpec, run_eval

QUESTIONS = [
    "Given an image and context, generate alt-text for the image.\nContext:\nsunny day",
    "Describe this image.",
    "given an image and context, generate alt-text for the image.\ncontext:\na longer post about a red bus",
]


def talt_files(folder: Path, n: int) -> dict[str, str]:
    """An upstream-format alt-text test file (JSONL) with ``n`` records and their images."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"{i}.png"
        size = (40 + 9 * i, 30 + 5 * (i % 3))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / name)
        record = {"ds_name": "t", "image": {"path": name}, "question": QUESTIONS[i % 3], "chosen": f"ref {i}",
                  "idx": 100 + i, "image_path": name}  # fmt: skip
        lines.append(json.dumps(record))
    (folder / "t_test.json").write_text("\n".join(lines) + "\n")
    return {"file": str(folder / "t_test.json"), "images": str(images)}


def make_context(
    root: Path, model_task: Path, source: dict[str, str], data_dir: str, **spec: Any
) -> TaskContext:
    settings = EvalSpec.model_validate({"benchmarks": ["talt"], "talt": source, **spec})
    scoring = {"protocols": ["paper"], "nltk": {"tokenizer": "treebank", "data_dirs": [data_dir]}}
    out = root / "eval" / "task"
    (out / ".work").mkdir(parents=True, exist_ok=True)
    return TaskContext(
        stage="eval",
        task_id="task",
        index=0,
        params={"model": "base", "benchmark": "talt", "shard": 0, "num_shards": 1},
        spec=settings,
        recipe={"eval": settings.model_dump(mode="json"), "score": scoring},
        seed=0,
        run_dir=root,
        out_dir=out,
        work_dir=out / ".work",
        inputs={"model": [TaskInput("model", "m", model_task, {}, ())]},
    )


def child_main(args_json: str) -> None:
    """Entry point of the child process that gets killed."""
    args = json.loads(args_json)
    ctx = make_context(Path(args["root"]), Path(args["model"]), args["source"], args["nltk"], **args["spec"])
    run_eval(ctx)
