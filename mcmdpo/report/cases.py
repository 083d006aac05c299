"""Case studies (paper Fig. 8): per test item, the image, the post, the reference and what each model wrote.

:func:`case_sets` reads, for every benchmark of a results table, each model row's merged predictions
(``predictions/<model>/<benchmark>.jsonl`` of its score task), its per-item scores (the metrics file's
``.samples.jsonl``) and the benchmark's images (through the benchmark reader, with the source paths
the eval task recorded in its ``generation.json``). The HTML report's cases view and the human
evaluation's annotation pages are built from these. :func:`write_thumbnail` shrinks an image into a
folder so that a page can be copied elsewhere with its pictures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import atomic_path, content_hash
from mcmdpo.report.collect import MetricsFile

if TYPE_CHECKING:
    from mcmdpo.report.tables import ResultTable, TableRow

CONTEXT_MARK = "Context:\n"
"""The alt-text prompt puts the post text after this line (``Given an image and context, ...``)."""


@dataclass(frozen=True)
class CaseModel:
    """One model column of a case set: a table row and the metrics file of this benchmark."""

    label: str
    """The column header: the row's label, plus run and seed when the row averages several."""
    key: str
    file: MetricsFile
    row: str
    """The table row's label (unique in a table)."""


@dataclass(frozen=True)
class CaseItem:
    """One test item: its id, the question / post text, the reference and the image (None: unknown)."""

    id: Any
    question: str
    reference: str
    image: Path | bytes | None

    @property
    def context(self) -> str:
        """The post text of an alt-text question (the whole question for other benchmarks)."""
        head, mark, tail = self.question.partition(CONTEXT_MARK)
        return tail.strip() if mark else self.question.strip()


@dataclass
class CaseSet:
    """Every item of one benchmark with each model's record and per-item scores (keyed by item id)."""

    benchmark: str
    kind: str
    models: list[CaseModel]
    items: list[CaseItem]
    records: list[dict[str, dict[str, Any]]]
    """Per model: id key -> its prediction record."""
    scores: list[dict[str, dict[str, float]]]
    """Per model: id key -> ``{"paper.rouge_l": 0.41, ...}`` (numeric per-item scores)."""
    notes: list[str] = field(default_factory=list)


def id_text(item_id: Any) -> str:
    """How an item id is matched across files and shown (``7`` and ``"7"`` are the same item here)."""
    return str(item_id)


def flat_scores(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a per-item score row, dotted (``paper.rouge_l``); lists are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_scores(value, name + "."))
        elif _is_number(value) and name != "id" and math.isfinite(value):
            out[name] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def case_models(table: ResultTable, benchmark: str) -> list[CaseModel]:
    """The table's result rows scored on ``benchmark`` (a row over several seeds shows its first run)."""
    out = []
    for row in table.rows:
        files = [f for f in row.files if f.benchmark == benchmark] if row.kind == "result" else []
        if files:
            out.append(CaseModel(_case_label(row, files), row.key, files[0], row.label))
    return out


def _case_label(row: TableRow, files: Sequence[MetricsFile]) -> str:
    if len(files) == 1:
        return row.label
    return f"{row.label} (run {files[0].run}, seed {files[0].seed})"


def case_sets(table: ResultTable) -> list[CaseSet]:
    """One case set per benchmark of ``table`` whose predictions files exist."""
    benchmarks = dict.fromkeys(f.benchmark for r in table.rows if r.kind == "result" for f in r.files)
    out = []
    for benchmark in benchmarks:
        models = [m for m in case_models(table, benchmark) if m.file.predictions_path.is_file()]
        if models:
            out.append(case_set(benchmark, models))
    return out


def case_set(benchmark: str, models: Sequence[CaseModel]) -> CaseSet:
    """Read the predictions, per-item scores and images of ``models`` on ``benchmark``."""
    from mcmdpo.evaluation.metrics.predictions import read_predictions

    records = [{id_text(r.get("id")): r for r in read_predictions(m.file.predictions_path)} for m in models]
    scores = [{id_text(s.get("id")): flat_scores(s) for s in m.file.samples()} for m in models]
    images, notes = item_images(models[0].file)
    items: dict[str, CaseItem] = {}  # in benchmark order; an item any model answered
    for model_records in records:
        for key, record in model_records.items():
            items.setdefault(key, _item(record, images.get(key)))
    if any(set(r) != set(items) for r in records):
        notes.append(f"{benchmark}: not every model answered every item (eval.limit differs?)")
    return CaseSet(benchmark, models[0].file.kind, list(models), list(items.values()), records, scores, notes)


def _item(record: Mapping[str, Any], image: Path | bytes | None) -> CaseItem:
    reference = record.get("chosen") or record.get("gt_answer") or ""
    return CaseItem(record.get("id"), str(record.get("question") or ""), str(reference), image)


def item_images(file: MetricsFile) -> tuple[dict[str, Path | bytes], list[str]]:
    """id -> image of the benchmark's items, read with the source paths of the file's eval task.

    Returns no images and a note when the source cannot be read (moved files, a missing asset).
    """
    from mcmdpo.batch.artifacts import read_json
    from mcmdpo.batch.paths import RunPaths
    from mcmdpo.evaluation.benchmarks import read_items
    from mcmdpo.evaluation.metrics.predictions import GENERATION

    tasks = file.doc.get("eval_tasks") or []
    if not tasks:
        return {}, [f"{file.benchmark}: no images (the metrics file names no eval task)"]
    generation = RunPaths(file.run_dir).task_dir("eval", tasks[0]) / GENERATION
    try:
        source = read_json(generation)["source"]
        items = read_items(file.benchmark, source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, [f"{file.benchmark}: no images ({generation}: {exc})"]
    return {id_text(item.id): item.image for item in items}, []


def image_name(item_id: Any) -> str:
    """A file name for an item's picture that no id can break out of (a hash of the id)."""
    return content_hash(id_text(item_id)) + ".jpg"


def write_thumbnail(image: Path | bytes, dest: Path, size: int) -> bool:
    """Shrink ``image`` to at most ``size`` pixels a side as JPEG at ``dest`` (atomic); False when the
    image cannot be read (the page then shows no picture for that item)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as source:
            picture = source.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    picture.thumbnail((size, size))
    with atomic_path(dest) as tmp:
        picture.save(tmp, format="JPEG", quality=85)
    return True


def thumbnails(case: CaseSet, folder: Path, size: int) -> dict[str, str]:
    """Write each item's thumbnail into ``folder``; id text -> file name (items without one left out)."""
    out = {}
    for item in case.items:
        if item.image is not None and write_thumbnail(item.image, folder / image_name(item.id), size):
            out[id_text(item.id)] = image_name(item.id)
    return out
