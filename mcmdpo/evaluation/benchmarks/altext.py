"""Alt-text benchmarks: ``test`` (the data stage's test split), ``talt`` and ``palt`` (upstream test files).

Scored with both alt-text protocols of :mod:`mcmdpo.evaluation.metrics.altext` (``[score] protocols``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mcmdpo.batch.errors import InputError, record_ref
from mcmdpo.batch.spec import EnvStr, Spec
from mcmdpo.evaluation import assets
from mcmdpo.evaluation.benchmarks.registry import Benchmark, Item, ScoreEnv, register_benchmark

Protocol = Literal["paper", "coco"]
RELEASE_HOW = "the MCM-DPO alt-text release (upstream *_test.json files and their image folders)"


class AltextSource(Spec):
    """``[eval.talt]`` / ``[eval.palt]``: an upstream alt-text test file and its image folder."""

    file: EnvStr = Field(description="test records: JSONL (upstream *_test.json), JSON list or parquet")
    images: EnvStr = Field(description="folder the records' image paths are relative to")


def read_altext(source: Mapping[str, Any]) -> list[Item]:
    """Upstream alt-text test records (via :mod:`mcmdpo.method.data.records`); any bad record is an error."""
    from mcmdpo.method.data.records import UnsafePath, load_records, resolve_image

    file, root = Path(source["file"]), Path(source["images"])
    items = []
    for record in load_records(file, "test"):
        where = f"{record_ref(record.position)} (id={record.id!r})"
        if record.problem is not None:
            raise InputError(f"{record.problem[0]}: {record.problem[1]}", file=file, record=where)
        if record.image_bytes is not None:
            image: Path | bytes = record.image_bytes
        else:
            try:
                image = resolve_image(root, record.image or "")
            except UnsafePath as exc:
                raise InputError(str(exc), file=file, record=where, field="image_path") from None
        fields = {
            "idx": record.id,
            "question": record.question,
            "chosen": record.chosen,
            "image_path": record.image,
        }
        items.append(Item(record.id, record.question, image, fields))
    return items


def score_altext(records: Sequence[Mapping[str, Any]], env: ScoreEnv) -> tuple[Any, Any, list[str]]:
    from mcmdpo.evaluation.metrics import altext

    pairs = altext.pairs_from_records(records)
    results = altext.score_pairs(pairs, list(env.settings.protocols), env.settings.nltk)
    metrics = {name: r.aggregate for name, r in results.items()}
    deviations = sorted({d for r in results.values() for d in r.deviations})
    return metrics, altext.sample_rows(results), deviations


def altext_assets(
    name: str, section: AltextSource | None, settings: Any, checksums: bool
) -> list[assets.AssetStatus]:
    """The test file and image folder (the data stage checks ``test``'s), and what the protocols need."""
    out = []
    if section is not None:
        out.append(assets.file_status(f"{name} test file", name, section.file, RELEASE_HOW, checksums))
        out.append(assets.folder_status(f"{name} images", name, section.images, RELEASE_HOW))
    if "paper" in settings.protocols:
        needed_by = "alt-text protocol paper"
        out += assets.text_assets(settings.nltk, needed_by, tokenize=True, lemmatize=True, tag=False)
        out.append(assets.package_status("rouge", needed_by))
        out.append(assets.package_status("pycocoevalcap", "alt-text protocol paper (CIDEr)"))
    if "coco" in settings.protocols:
        out.append(assets.java_status("alt-text protocol coco"))
        out += assets.coco_jars("alt-text protocol coco")
    return out


for _name, _source, _text in (
    ("test", None, "the [data] stage's test split (alt-text)"),
    ("talt", AltextSource, "TAlt (Twitter alt-text) test set"),
    ("palt", AltextSource, "PAlt (Pinterest alt-text) test set"),
):
    register_benchmark(
        Benchmark(
            name=_name,
            kind="altext",
            source=_source,
            read=read_altext,
            score=score_altext,
            assets=altext_assets,
            description=_text,
        )
    )
