"""Human evaluation (paper Fig. 6): the study folder, its key and the annotators' exports.

The flow: ``mcmdpo humaneval prepare`` (:mod:`mcmdpo.report.annotation`) writes blind annotation pages
and the key; annotators judge and export; ``mcmdpo humaneval collect``
(:mod:`mcmdpo.report.humaneval_results`) checks the exports against the key, un-blinds them and
summarises; the report includes the summary. The study folder (default ``<run>/humaneval/``)::

    key.json                       the un-blinding key: pairs, items, and per annotator and question
                                   which model is on the left (never linked from a page)
    pages/annotator-<k>.html       one static page per annotator (open from file://)
    pages/images/<hash>.jpg        the items' pictures
    judgements.csv, humaneval.*    what ``collect`` writes

This module holds the formats both sides share: the key (:func:`build_key` writes it,
:func:`read_key` reads it; its ``fingerprint`` hashes everything else in it), the exported judgements
(written by the page's ``web/annotate.js``, read by :func:`read_export`)::

    {"format": "mcmdpo-humaneval-judgements/1", "study": <fingerprint>, "run": <run name>,
     "annotator": "a1", "exported_at": ..., "complete": true,
     "judgements": [{"question": "q0001", "choice": "left" | "tie" | "right", "at": <ISO time>}, ...]}

and :class:`StudyError` (every problem one line).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import content_hash, read_json
from mcmdpo.batch.errors import McmdpoError

if TYPE_CHECKING:
    from mcmdpo.report.cases import CaseSet
    from mcmdpo.report.tables import TableRow

STUDY_DIR = "humaneval"
"""The study folder inside a run dir (``prepare`` writes there by default, the report reads there)."""
KEY = "key.json"
PAGES = "pages"
IMAGES = "images"
KEY_FORMAT = "mcmdpo-humaneval-key/1"
EXPORT_FORMAT = "mcmdpo-humaneval-judgements/1"
CHOICES = ("left", "tie", "right")
IMAGE_PX = 512


class StudyError(McmdpoError, ValueError):
    """Problems with a study's inputs; ``problems`` holds one line each (all are reported at once)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def study_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / STUDY_DIR


def annotator_ids(count: int) -> list[str]:
    return [f"a{k}" for k in range(1, count + 1)]


def questions(pairs: int, items: Sequence[str], annotator: str, seed: int) -> list[dict[str, Any]]:
    """An annotator's questions: every (pair, item) once, shuffled; A is on the left in half of them (one
    more with an odd count), drawn at random, so that a preference for one side cannot favour a model."""
    rng = random.Random(f"{seed}/{annotator}")
    todo = [(p, i) for p in range(pairs) for i in items]
    rng.shuffle(todo)
    sides = ["a", "b"] * (len(todo) // 2 + 1)
    sides = sides[: len(todo)]
    rng.shuffle(sides)
    return [
        {"question": f"q{n:04d}", "pair": p, "item": i, "left": side}
        for n, ((p, i), side) in enumerate(zip(todo, sides, strict=True), 1)
    ]


def build_key(
    pairs: Sequence[tuple[TableRow, TableRow]],
    case: CaseSet,
    items: list[str],
    annotators: int,
    seed: int,
) -> dict[str, Any]:
    """The key document; its fingerprint hashes everything else in it."""
    run = case.models[0].file.run
    body = {
        "format": KEY_FORMAT,
        "run": run,
        "benchmark": case.benchmark,
        "seed": seed,
        "pairs": [{"a": a.label, "b": b.label, "a_key": a.key, "b_key": b.key} for a, b in pairs],
        "items": items,
        "annotators": {k: questions(len(pairs), items, k, seed) for k in annotator_ids(annotators)},
    }
    return {"fingerprint": content_hash(body, 16), **body}


def read_key(path: Path) -> dict[str, Any]:
    """A study's ``key.json`` (checked for its format)."""
    try:
        key = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyError([f"{path}: cannot read the study key ({exc})"]) from None
    if not isinstance(key, Mapping) or key.get("format") != KEY_FORMAT:
        raise StudyError([f"{path}: not a study key ({KEY_FORMAT})"])
    return dict(key)


def read_export(path: Path) -> dict[str, Any]:
    """One annotator's exported judgements (format checked; contents by the collector)."""
    try:
        doc = read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudyError([f"{path}: cannot read the judgements ({exc})"]) from None
    if not isinstance(doc, Mapping) or doc.get("format") != EXPORT_FORMAT:
        raise StudyError([f"{path}: not an exported judgements file ({EXPORT_FORMAT})"])
    return dict(doc)
