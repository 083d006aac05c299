"""Blind annotation pages for the human evaluation (``mcmdpo humaneval prepare``).

For pairs of table rows (``+MCM-DPO:+DPO``) on one benchmark, :func:`prepare_study` samples test items
that every row answered (seeded) and writes the key and one static page per annotator into the study
folder (layout and formats: :mod:`mcmdpo.report.humaneval`). Send ``pages/`` to the annotators, keep
``key.json``. A page shows the image, the post and two alt-texts with no model names; sides and
question order are randomised per annotator. Keys 1 / 2 / 3 = left better / tie / right better, arrows
or the buttons go back and forth, the judgements survive a reload (localStorage), and *Export*
downloads them as JSON with the annotator id and the study's fingerprint.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import write_json_atomic, write_text_atomic
from mcmdpo.report.humaneval import (
    CHOICES,
    EXPORT_FORMAT,
    IMAGES,
    KEY,
    PAGES,
    StudyError,
    build_key,
    read_key,
    study_dir,
)

if TYPE_CHECKING:
    from mcmdpo.report.cases import CaseSet
    from mcmdpo.report.tables import ResultTable, TableRow

IMAGE_PX = 512
"""Largest side of an annotation page's pictures."""


@dataclass(frozen=True)
class Study:
    """What :func:`prepare_study` wrote."""

    out_dir: Path
    key: Path
    pages: list[Path]
    fingerprint: str
    benchmark: str
    items: int
    questions: int
    """Questions per annotator (pairs x items)."""


def resolve_pair(rows: Sequence[TableRow], text: str) -> tuple[TableRow, TableRow]:
    """``A:B`` -> the two rows (labels and keys may contain ':', so every split point is tried)."""
    from mcmdpo.report.compare import find_row

    found = []
    for at in [i for i, ch in enumerate(text) if ch == ":"]:
        try:
            found.append((find_row(rows, text[:at])[0], find_row(rows, text[at + 1 :])[0]))
        except ValueError:
            continue
    if len(found) != 1:
        known = ", ".join(repr(r.label) for r in rows if r.kind == "result")
        why = "no split into two rows" if not found else "several splits into two rows"
        raise StudyError([f"--pairs {text!r}: {why} (give A:B with rows {known})"])
    a, b = found[0]
    if a is b:
        raise StudyError([f"--pairs {text!r}: both sides are row {a.label!r}"])
    return a, b


def choose_benchmark(rows: Sequence[TableRow], benchmark: str | None) -> str:
    """The benchmark every row of the pairs was scored on: ``benchmark``, else the only alt-text one."""
    shared = set.intersection(*({f.benchmark for f in r.files} for r in rows))
    if benchmark is not None:
        if benchmark not in shared:
            raise StudyError(
                [f"--benchmark {benchmark!r}: not scored for every row (shared: {sorted(shared)})"]
            )
        return benchmark
    altext = sorted({f.benchmark for r in rows for f in r.files if f.kind == "altext"} & shared)
    if len(altext) != 1:
        raise StudyError(
            [f"name the benchmark with --benchmark (alt-text benchmarks of every row: {altext})"]
        )
    return altext[0]


def study_case(table: ResultTable, rows: Sequence[TableRow], benchmark: str) -> CaseSet:
    """The case set of the pairs' rows (one model column per row)."""
    from mcmdpo.report.cases import case_models, case_set

    labels = {r.label for r in rows}
    models = [m for m in case_models(table, benchmark) if m.row in labels]
    missing = [m.file.predictions_path for m in models if not m.file.predictions_path.is_file()]
    if missing:
        raise StudyError(
            [f"{p}: no predictions file (the score task's outputs are incomplete)" for p in missing]
        )
    return case_set(benchmark, models)


def sample_items(case: CaseSet, count: int, seed: int) -> list[str]:
    """``count`` item ids (benchmark order) that every model answered, drawn with ``seed``."""
    from mcmdpo.report.cases import id_text

    answered = [id_text(i.id) for i in case.items if all(id_text(i.id) in r for r in case.records)]
    if count > len(answered):
        raise StudyError([f"--items {count}: only {len(answered)} items have an output of every model"])
    chosen = set(random.Random(seed).sample(answered, count))
    return [i for i in answered if i in chosen]


def page_data(
    key: Mapping[str, Any], annotator: str, case: CaseSet, images: Mapping[str, str]
) -> dict[str, Any]:
    """What an annotator's page holds: no model names, no pair ids, only the two texts per question."""
    from mcmdpo.report.cases import id_text

    items = {id_text(i.id): i for i in case.items}
    index = {m.row: n for n, m in enumerate(case.models)}
    out = []
    for q in key["annotators"][annotator]:
        pair, item = key["pairs"][q["pair"]], items[q["item"]]
        texts = {s: str(case.records[index[pair[s]]][q["item"]].get("response", "")) for s in "ab"}
        right = "b" if q["left"] == "a" else "a"
        out.append(
            {
                "question": q["question"],
                "image": images.get(q["item"]),
                "context": item.context,
                "left": texts[q["left"]],
                "right": texts[right],
            }
        )
    return {
        "study": key["fingerprint"],
        "run": key["run"],
        "annotator": annotator,
        "format": EXPORT_FORMAT,
        "choices": list(CHOICES),
        "questions": out,
    }


def prepare_study(
    run_dir: Path | str,
    pairs: Sequence[str],
    items: int = 100,
    annotators: int = 3,
    seed: int = 0,
    out_dir: Path | str | None = None,
    benchmark: str | None = None,
) -> Study:
    """Write the key and one blind annotation page per annotator (see the module docstring)."""
    from mcmdpo.report.outputs import build, run_spec

    if not pairs or items < 1 or annotators < 1:
        raise StudyError(["give --pairs A:B (one or more), --items >= 1 and --annotators >= 1"])
    spec = run_spec(run_dir).model_copy(
        update={"resamples": 0, "figures": False, "html": False, "paper": False}
    )
    table = build([run_dir], spec).table  # labels as the run's report shows them
    resolved = [resolve_pair(table.rows, text) for text in pairs]
    rows = list({id(r): r for pair in resolved for r in pair}.values())
    case = study_case(table, rows, choose_benchmark(rows, benchmark))
    key = build_key(resolved, case, sample_items(case, items, seed), annotators, seed)
    out = Path(out_dir) if out_dir is not None else study_dir(run_dir)
    _check_existing(out / KEY, key["fingerprint"])
    return write_study(out, key, case)


def _check_existing(path: Path, fingerprint: str) -> None:
    """Never overwrite another study's key: the exports made with it could no longer be un-blinded."""
    if path.is_file() and read_key(path).get("fingerprint") != fingerprint:
        raise StudyError([f"{path}: holds another study's key; give another --out or move that study away"])


def write_study(out: Path, key: Mapping[str, Any], case: CaseSet) -> Study:
    """Pictures, pages, then the key (atomic files)."""
    from mcmdpo.report.cases import id_text, image_name, write_thumbnail
    from mcmdpo.report.pages import page

    chosen, images = set(key["items"]), {}
    for item in case.items:
        name = f"{IMAGES}/{image_name(item.id)}"
        wanted = id_text(item.id) in chosen and item.image is not None
        if wanted and write_thumbnail(item.image, out / PAGES / name, IMAGE_PX):
            images[id_text(item.id)] = name
    pages = []
    for annotator in key["annotators"]:
        data = page_data(key, annotator, case, images)
        path = out / PAGES / f"annotator-{annotator}.html"
        write_text_atomic(
            path,
            page(
                f"Alt-text comparison ({annotator})", ANNOTATE_BODY, data, ("annotate.css",), ("annotate.js",)
            ),
        )
        pages.append(path)
    write_json_atomic(out / KEY, key)
    questions_each = len(key["pairs"]) * len(key["items"])
    return Study(out, out / KEY, pages, key["fingerprint"], case.benchmark, len(key["items"]), questions_each)


ANNOTATE_BODY = """<main id="annotate">
<header><h1>Which alt-text is better?</h1>
<p class="meta"><span id="who"></span> · <span id="progress"></span></p>
<div class="bar"><div id="progress-bar"></div></div></header>
<p class="hint">Read the post and look at the image. Which description would serve a blind reader of
this post better (accurate, relevant to the post, concise)? Keys: <kbd>1</kbd> left better,
<kbd>2</kbd> tie, <kbd>3</kbd> right better, <kbd>←</kbd>/<kbd>→</kbd> back / next. Your answers are
kept in this browser; press <em>Export</em> when done and send the downloaded file.</p>
<section id="question">
<div class="item"><img id="image" alt="the image of this post">
<div><h2>Post</h2><p id="context"></p></div></div>
<div class="sides"><div class="side" id="left-box"><h2>Left</h2><p id="left"></p></div>
<div class="side" id="right-box"><h2>Right</h2><p id="right"></p></div></div>
<div class="buttons"><button id="choose-left" type="button"><kbd>1</kbd> Left better</button>
<button id="choose-tie" type="button"><kbd>2</kbd> Tie</button>
<button id="choose-right" type="button"><kbd>3</kbd> Right better</button></div>
</section>
<nav class="buttons"><button id="back" type="button">← Back</button><span id="position"></span>
<button id="next" type="button">Next →</button>
<button id="export" type="button">Export judgements</button></nav>
<p id="status" class="meta"></p>
</main>"""
