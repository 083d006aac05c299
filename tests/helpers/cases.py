"""A synthetic finished run with everything the HTML report and the human evaluation read.

:func:`make_case_run` builds on ``bench.report.make_run`` (a plan and one finished score task per
model with per-item scores) and adds what the score stage also leaves behind: the merged predictions
``predictions/<model>/palt.jsonl`` (listed in DONE), an eval task whose ``generation.json`` names the
benchmark's test file and image folder, and that folder with one small picture per item.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from bench.report import make_run
from mcmdpo.batch.artifacts import read_json, write_done, write_json_atomic

KIND = "preference.loss.kind"
MODELS = [("sft", {}), ("preference", {KIND: "dpo"}), ("preference", {KIND: "mcmdpo"})]
LABELS = ["+SFT", "+DPO", "+MCM-DPO"]
XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2"> </script>'
COLORS = [
    "red",
    "green",
    "blue",
    "orange",
    "purple",
    "yellow",
    "black",
    "white",
    "grey",
    "pink",
    "brown",
    "cyan",
]


PROMPT = "Given an image and context, generate alt-text for the image.\nContext:\n"
VOICES = ["plainly", "vividly", "briefly"]  # no model names: the annotation pages must stay blind


def response(model: int, item: int) -> str:
    return f"A {COLORS[item % len(COLORS)]} square, described {VOICES[model]} (item {item})."


def write_benchmark(folder: Path, n: int) -> dict[str, str]:
    """An upstream-format alt-text test file and its images; returns the source (``file``, ``images``)."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (64 + 8 * i, 48), COLORS[i % len(COLORS)]).save(images / f"item_{i:03d}.png")
        record = {
            "idx": i,
            "image_path": f"item_{i:03d}.png",
            "question": f"{PROMPT}Post {i}: look!",
            "chosen": f"A plain {COLORS[i % len(COLORS)]} rectangle (reference {i}).",
        }
        lines.append(json.dumps(record) + "\n")
    (folder / "test.jsonl").write_text("".join(lines))
    return {"file": str(folder / "test.jsonl"), "images": str(images)}


def make_case_run(
    root: Path, n: int = 12, special: Mapping[tuple[int, int], str] | None = None, name: str = "cases"
) -> Path:
    """The run dir; ``special[(model, item)]`` replaces that model's output for that item."""
    run = make_run(root, MODELS, ["palt"], n, name=name)
    source = write_benchmark(run / "data" / "d0", n)
    tests = [json.loads(line) for line in Path(source["file"]).read_text().splitlines()]
    for index, (model, _) in enumerate(MODELS):
        task = run / "score" / f"t{index:03d}palt"
        eval_task = f"e{index:03d}palt"
        write_json_atomic(run / "eval" / eval_task / "generation.json", {"source": source})
        doc_path = task / "metrics" / model / "palt.json"
        write_json_atomic(doc_path, {**read_json(doc_path), "eval_tasks": [eval_task]})
        records = [
            {
                "id": t["idx"],
                **t,
                "response": (special or {}).get((index, i), response(index, i)),
                "model": model,
                "benchmark": "palt",
            }  # fmt: skip
            for i, t in enumerate(tests)
        ]
        rel = f"predictions/{model}/palt.jsonl"
        (task / rel).parent.mkdir(parents=True, exist_ok=True)
        (task / rel).write_text("".join(json.dumps(r) + "\n" for r in records))
        done = read_json(task / "DONE")
        write_done(task / "DONE", {**done, "outputs": [*done["outputs"], rel]})
    return run
