"""Tiny stand-in files in the real formats, for smoke runs (``mcmdpo submit --smoke``) and tests.

Every writer takes a folder and a record count and returns the paths a recipe section needs:

- :func:`preference_files` (upstream preference JSON / RLHF-V parquet with image bytes and a
  ``text`` JSON string) and :func:`altext_test` (upstream test JSONL) from the demo generator;
- :func:`sft_conversations`: LLaVA conversation JSON (every third record has a second turn);
- :func:`objhal_files`, :func:`mmhal_files`, :func:`amber_files`: the benchmark files with a few
  items (COCO annotation files, synonym table, AMBER's data folder, base64 / file images);
- :func:`head_file`: the first N records of a real file, same format;
- :class:`FixedJudge`: an OpenAI-compatible chat-completions endpoint on 127.0.0.1 whose every reply
  ends in ``Rating: 4`` (what MMHal's parser reads), for runs without a real judge.

Nothing here is imported by a stage (the CLI's smoke command and the tests use it).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

JUDGE_MODEL = "smoke-judge"
JUDGE_REPLY = "The response mentions only what the image shows.\nRating: 4"
COCO_CLASSES = ("person", "dog", "cat", "car", "chair")
NO_CONTEXT_QUESTION = "Describe this image in one sentence."


# ---------------------------------------------------------------- alt-text and preference data


def demo_split(folder: Path, num_train: int, num_test: int, seed: int = 0) -> dict[str, Any]:
    """The demo generator's files (upstream formats) with small images; paths made absolute."""
    from mcmdpo.method.data.demo import make_demo_dataset

    made = make_demo_dataset(folder, num_train, num_test, seed, 32, 64)
    return {s: {**made[s], "file": folder / made[s]["file"], "images": folder / made[s]["images"]}
            for s in ("train", "test")}  # fmt: skip


def preference_files(folder: Path, n: int, fmt: str = "json", context: bool = True, seed: int = 0) -> dict:
    """Preference records: the demo JSON list, or (``parquet``) RLHF-V's layout: ``idx``, ``image``
    = {bytes, path}, ``text`` = JSON of question / chosen / rejected; ``context = False`` replaces
    the question with one without a post text (the hallucination variant's data)."""
    made = demo_split(folder, n, 0, seed)["train"]
    records = [_flat(r) for r in json.loads(made["file"].read_text())]
    if not context:
        records = [_flat({**r, "question": NO_CONTEXT_QUESTION}) for r in records]
    if fmt != "parquet":
        made["file"].write_text(json.dumps(records, indent=1))
        return {"file": made["file"], "images": made["images"]}
    rows = [_rlhfv_row(r, made["images"]) for r in records]
    path = folder / "preference.parquet"
    _write_parquet(rows, path)
    return {"file": path, "images": folder}


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """A demo record with its texts at the top level and in ``text`` (both upstream spellings)."""
    texts = {k: record.get(k) or json.loads(record["text"])[k] for k in ("question", "chosen", "rejected")}
    return {**record, **texts, "text": json.dumps(texts)}


def _rlhfv_row(record: dict[str, Any], images: Path) -> dict[str, Any]:
    path = record["image"]["path"]
    text = {k: record[k] for k in ("question", "chosen", "rejected")}
    return {"ds_name": "smoke", "idx": record["idx"], "text": json.dumps(text),
            "image": {"bytes": (images / path).read_bytes(), "path": path}}  # fmt: skip


def _write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path)


def altext_test(folder: Path, n: int, seed: int = 1) -> dict[str, Path]:
    """An upstream-format alt-text test JSONL (``image_path``, ``question``, ``chosen``, ``idx``)."""
    made = demo_split(folder, 2, n, seed)["test"]
    return {"file": made["file"], "images": made["images"]}


def sft_conversations(folder: Path, n: int, seed: int = 2) -> dict[str, Path]:
    """LLaVA conversation JSON from demo records; every third record has a second turn."""
    made = demo_split(folder, n, 0, seed)["train"]
    out = []
    for k, r in enumerate(_flat(r) for r in json.loads(made["file"].read_text())):
        turns = [
            {"from": "human", "value": "<image>\n" + r["question"]},
            {"from": "gpt", "value": r["chosen"]},
        ]
        if k % 3 == 2:
            turns += [{"from": "human", "value": "And in three words?"},
                      {"from": "gpt", "value": " ".join(r["chosen"].split()[:3])}]  # fmt: skip
        out.append({"id": f"sft-{r['idx']}", "image": r["image"]["path"], "conversations": turns})
    path = folder / "sft.json"
    path.write_text(json.dumps(out, indent=1))
    return {"file": path, "images": made["images"]}


def head_file(source: Path, n: int, out: Path) -> Path:
    """The first ``n`` records of ``source`` written to ``out`` in the same format."""
    from mcmdpo.method.data.records import detect_format, read_raw

    fmt = detect_format(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with open(source, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()][:n]
        out.write_text("".join(lines))
    elif fmt == "json":
        out.write_text(json.dumps(read_raw(source)[:n], ensure_ascii=False))
    else:
        _write_parquet(read_raw(source)[:n], out)
    return out


# ---------------------------------------------------------------- hallucination benchmarks


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 36)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def objhal_files(folder: Path, n: int) -> dict[str, Path]:
    """Object HalBench: questions with base64 images, COCO 2014 instance + caption files, synonyms."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {"image_id": 100 + i, "question": "Describe this image in detail.",
         "image": base64.b64encode(_png((40 * i % 256, 90, 160))).decode()}
        for i in range(n)
    ]  # fmt: skip
    (folder / "objhal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "synonyms.txt").write_text("".join(f"{c}\n" for c in COCO_CLASSES))
    coco = folder / "coco"
    coco.mkdir(exist_ok=True)
    categories = [{"supercategory": c, "id": k + 1, "name": c} for k, c in enumerate(COCO_CLASSES)]
    instances = [{"id": i, "image_id": 100 + i, "category_id": 1 + i % len(COCO_CLASSES)} for i in range(n)]
    captions = [
        {"id": i, "image_id": 100 + i, "caption": f"A {COCO_CLASSES[i % 5]} in a room."} for i in range(n)
    ]
    for split, inst, caps in (("train", instances, captions), ("val", [], [])):
        (coco / f"instances_{split}2014.json").write_text(
            json.dumps({"categories": categories, "annotations": inst})
        )
        (coco / f"captions_{split}2014.json").write_text(json.dumps({"annotations": caps}))
    return {"file": folder / "objhal.jsonl", "coco_dir": coco, "synonyms": folder / "synonyms.txt"}


def mmhal_files(folder: Path, n: int) -> dict[str, Path]:
    """MMHal-Bench: a JSONL with base64 images and the template's fields (types interleaved)."""
    from mcmdpo.evaluation.metrics.mmhal import QUESTION_TYPES

    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {"question_type": QUESTION_TYPES[i % 8], "question_topic": "smoke", "image_id": f"img{i}",
         "image_src": f"https://example.invalid/img{i}.jpg", "image_content": ["Dog", "Grass"],
         "question": "What animal is shown?", "gt_answer": "A dog.", "model_answer": "",
         "image": base64.b64encode(_png((120, 40 * i % 256, 60))).decode()}
        for i in range(n)
    ]  # fmt: skip
    (folder / "mmhal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"file": folder / "mmhal.jsonl"}


def amber_files(folder: Path, n: int) -> dict[str, Path]:
    """AMBER: ``data/`` (annotations, relation, safe words, metrics counters), queries, images."""
    data, images = folder / "data", folder / "image"
    (data / "query").mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    annotations = [{"id": i, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat"]}
                   for i in range(1, n + 1)]  # fmt: skip
    (data / "annotations.json").write_text(json.dumps(annotations))
    (data / "relation.json").write_text(json.dumps({"dog": ["puppy"], "grass": [], "cat": [], "ball": []}))
    (data / "safe_words.txt").write_text("light\n")
    counters = (
        "chair_num=0.001",
        "chair_score=0",
        "safe_cover_num=0.001",
        "safe_cover_score=0",
        "hallu_cover_num=0.001",
        "hallu_cover_score=0",
        "non_hallu_score=0",
        "non_hallu_num=0.001",
    )
    (data / "metrics.txt").write_text("\n".join(counters))
    queries = [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in range(1, n + 1)]
    (data / "query" / "query_generative.json").write_text(json.dumps(queries))
    for i in range(1, n + 1):
        from PIL import Image

        Image.open(io.BytesIO(_png((30, 140, 40 * i % 256)))).convert("RGB").save(images / f"AMBER_{i}.jpg")
    return {"data_dir": data, "images": images}


# ---------------------------------------------------------------- a judge stand-in


class LocalServer:
    """A threading HTTP server on 127.0.0.1 (``port = 0``: any free port) serving ``handler`` on a
    daemon thread; ``with`` starts and stops it. ``url`` is its ``/v1`` base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FixedJudge(LocalServer):
    """A chat-completions endpoint that answers every request with :data:`JUDGE_REPLY`.

    ``with FixedJudge() as judge: ... judge.url``; served model id :data:`JUDGE_MODEL`.
    """

    def __init__(self, reply: str = JUDGE_REPLY, port: int = 0) -> None:
        body = json.dumps(completion(reply)).encode()
        self.requests = 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                judge.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler, port)


def completion(content: str, model: str = JUDGE_MODEL) -> dict[str, Any]:
    """An OpenAI chat-completions reply body with ``content`` from ``model``."""
    return {
        "id": "x",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
