"""Human evaluation (paper Fig. 6), part 2: check, un-blind and summarise judgements (``humaneval collect``).

:func:`collect_study` reads the annotators' exported files (:mod:`mcmdpo.report.humaneval`), checks
each against the study key (same study fingerprint, a known annotator, no annotator twice, every
question answered once with a known choice; every problem is reported, one line each), un-blinds the
left/right choices into win / tie / lose of the pair's first model A, and writes into the study folder:

- ``judgements.csv``: one row per (annotator, question), un-blinded;
- ``humaneval.json`` (read back by :func:`read_summary`; the report includes it), ``humaneval.csv``,
  ``humaneval.md``: per pair the share of judgements A wins / ties / loses, each with a percentile
  bootstrap interval over items (an item's judgements by all annotators are drawn together), and the
  agreement between annotators as **Fleiss' kappa** over the three outcomes (items as subjects; per
  pair and over all pairs); it needs two or more annotators;
- ``humaneval.png``: paper Fig. 6, one stacked horizontal bar per pair (win / tie / lose).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import read_json, write_json_atomic, write_text_atomic
from mcmdpo.report.humaneval import CHOICES, KEY, STUDY_DIR, StudyError, read_export, read_key
from mcmdpo.report.results import BootstrapConfig, records_csv

OUTCOMES = ("win", "tie", "lose")
SUMMARY_JSON, SUMMARY_CSV, SUMMARY_MD, FIGURE, JUDGEMENTS_CSV = (
    "humaneval.json",
    "humaneval.csv",
    "humaneval.md",
    "humaneval.png",
    "judgements.csv",
)
SUMMARY_COLUMNS = (
    "run",
    "study",
    "benchmark",
    "a",
    "b",
    "items",
    "annotators",
    "judgements",
    *(f"{o}{s}" for o in OUTCOMES for s in ("", "_low", "_high")),
    "fleiss_kappa",
)
JUDGEMENT_COLUMNS = ("annotator", "question", "pair", "a", "b", "item", "left", "choice", "outcome", "at")


@dataclass(frozen=True)
class Judgement:
    """One un-blinded judgement: ``outcome`` is win / tie / lose of the pair's first model (A)."""

    annotator: str
    question: str
    pair: int
    item: str
    left: str
    choice: str
    outcome: str
    at: str = ""


@dataclass(frozen=True)
class PairResult:
    """One pair's shares of judgements (0-1), their intervals, and Fleiss' kappa (None: < 2 annotators)."""

    a: str
    b: str
    items: int
    annotators: int
    judgements: int
    shares: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    kappa: float | None


@dataclass(frozen=True)
class StudySummary:
    """A collected study: what :func:`read_summary` returns and the report shows."""

    run: str
    study: str
    benchmark: str
    annotators: list[str]
    pairs: list[PairResult]
    kappa: float | None
    """Fleiss' kappa over every pair's items together."""
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.run}: {self.benchmark}, {len(self.annotators)} annotator(s) (study {self.study})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> StudySummary:
        pairs = [
            PairResult(**{**p, "intervals": {k: tuple(v) for k, v in p["intervals"].items()}})
            for p in doc["pairs"]
        ]
        return cls(**{**doc, "pairs": pairs})


@dataclass(frozen=True)
class CollectedStudy:
    summary: StudySummary
    files: list[Path]


# ---------------------------------------------------------------- checking and un-blinding


def check_export(key: Mapping[str, Any], path: Path, doc: Mapping[str, Any]) -> list[str]:
    """The problems of one export against the key (empty: usable)."""
    if doc.get("study") != key["fingerprint"]:
        return [
            f"{path}: judgements of study {doc.get('study')!r} (run {doc.get('run')!r}), but the key is "
            f"study {key['fingerprint']!r} (run {key['run']!r}): wrong run or study folder"
        ]
    annotator = doc.get("annotator")
    if not isinstance(annotator, str) or annotator not in key["annotators"]:
        return [f"{path}: annotator {annotator!r} is not in the key (known: {', '.join(key['annotators'])})"]
    entries = doc.get("judgements")
    if not isinstance(entries, list) or not all(isinstance(j, Mapping) for j in entries):
        return [f"{path}: 'judgements' is not a list of {{question, choice}} objects"]
    return answer_problems(path, {q["question"] for q in key["annotators"][annotator]}, entries)


def answer_problems(path: Path, asked: set[str], entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Questions not judged, judged twice or unknown, and unknown choices (first five of each)."""

    def listed(names: Sequence[str]) -> str:
        return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")

    counts = Counter(str(j.get("question")) for j in entries)
    problems = []
    if missing := sorted(asked - set(counts)):
        problems.append(f"{path}: {len(missing)} of {len(asked)} questions not judged ({listed(missing)})")
    if unknown := sorted(set(counts) - asked):
        problems.append(f"{path}: questions not in the key: {listed(unknown)}")
    if twice := sorted(q for q, n in counts.items() if n > 1):
        problems.append(f"{path}: questions judged more than once: {listed(twice)}")
    if bad := sorted({str(j.get("choice")) for j in entries if j.get("choice") not in CHOICES}):
        problems.append(f"{path}: unknown choices {bad} (expected {', '.join(CHOICES)})")
    return problems


def read_exports(key: Mapping[str, Any], paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every export, checked; all problems of all files raise one :class:`StudyError`."""
    if not paths:
        raise StudyError(["give the exported judgement files"])
    docs, problems, seen = [], [], {}
    for path in paths:
        try:
            doc = read_export(path)
        except StudyError as exc:
            problems += exc.problems
            continue
        problems += check_export(key, path, doc)
        annotator = str(doc.get("annotator"))
        if annotator in seen:
            problems.append(f"{path}: annotator {annotator!r} again (also in {seen[annotator]})")
        seen.setdefault(annotator, path)
        docs.append(doc)
    if problems:
        raise StudyError(problems)
    return docs


def unblind(key: Mapping[str, Any], docs: Sequence[Mapping[str, Any]]) -> list[Judgement]:
    """Left/right choices -> win / tie / lose of each pair's model A."""
    out = []
    for doc in docs:
        annotator = doc["annotator"]
        asked = {q["question"]: q for q in key["annotators"][annotator]}
        for j in doc["judgements"]:
            q = asked[j["question"]]
            if j["choice"] == "tie":
                outcome = "tie"
            else:
                a_side = "left" if q["left"] == "a" else "right"
                outcome = "win" if j["choice"] == a_side else "lose"
            out.append(
                Judgement(
                    annotator,
                    q["question"],
                    q["pair"],
                    q["item"],
                    q["left"],
                    j["choice"],
                    outcome,
                    str(j.get("at", "")),
                )
            )
    return sorted(out, key=lambda j: (j.pair, j.item, j.annotator))


# ---------------------------------------------------------------- statistics


def outcome_counts(judgements: Sequence[Judgement], items: Sequence[str]) -> Any:
    """``[items, 3]`` how many annotators gave each item win / tie / lose."""
    import numpy as np

    row = {item: n for n, item in enumerate(items)}
    counts = np.zeros((len(items), len(OUTCOMES)))
    for j in judgements:
        counts[row[j.item], OUTCOMES.index(j.outcome)] += 1
    return counts


def pair_result(pair: Mapping[str, Any], counts: Any, annotators: int, config: BootstrapConfig) -> PairResult:
    """Shares of all judgements, item-bootstrap intervals and Fleiss' kappa of one pair."""
    import numpy as np

    from mcmdpo.report.stats import bootstrap_intervals, fleiss_kappa

    per_item = counts / counts.sum(axis=1, keepdims=True)
    shares = dict(zip(OUTCOMES, per_item.mean(axis=0).tolist(), strict=True))
    ones = np.ones((len(per_item), 1))
    columns = [np.concatenate([per_item[:, [k]], ones], axis=1) for k in range(len(OUTCOMES))]
    bounds = bootstrap_intervals(
        columns,
        [lambda s: s[..., 0] / s[..., 1]] * len(OUTCOMES),
        config.resamples,
        config.seed,
        config.confidence,
    )
    kappa = fleiss_kappa(counts) if annotators >= 2 else None
    return PairResult(
        pair["a"],
        pair["b"],
        len(counts),
        annotators,
        int(counts.sum()),
        shares,
        dict(zip(OUTCOMES, bounds, strict=True)),
        _finite_or_none(kappa),
    )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def summarise(
    key: Mapping[str, Any], judgements: Sequence[Judgement], config: BootstrapConfig
) -> StudySummary:
    """Per pair results and the overall agreement."""
    import numpy as np

    from mcmdpo.report.stats import fleiss_kappa

    annotators = sorted({j.annotator for j in judgements})
    pairs, all_counts = [], []
    for index, pair in enumerate(key["pairs"]):
        counts = outcome_counts([j for j in judgements if j.pair == index], key["items"])
        all_counts.append(counts)
        pairs.append(pair_result(pair, counts, len(annotators), config))
    overall = fleiss_kappa(np.concatenate(all_counts)) if len(annotators) >= 2 else None
    notes = [
        f"{len(key['items'])} items x {len(key['pairs'])} pair(s), judged by {len(annotators)} of "
        f"{len(key['annotators'])} annotators ({', '.join(annotators)}); sides and order randomised.",
        f"Win / tie / lose: share of all judgements for the first model of each pair; "
        f"{config.confidence:.0%} percentile bootstrap over items ({config.resamples} resamples, seed "
        f"{config.seed}).",
        "Agreement: Fleiss' kappa over the outcomes win / tie / lose, items as subjects "
        + ("(needs >= 2 annotators)." if overall is None else f"(all pairs: {overall:.3f})."),
    ]
    missing = sorted(set(key["annotators"]) - set(annotators))
    if missing:
        notes.append(f"No judgements yet from {', '.join(missing)}.")
    return StudySummary(
        key["run"], key["fingerprint"], key["benchmark"], annotators, pairs, _finite_or_none(overall), notes
    )


# ---------------------------------------------------------------- outputs


def pct(value: float) -> str:
    return f"{100 * value:.1f}%" if math.isfinite(value) else "–"


def summary_table_rows(summary: StudySummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the human-evaluation table (Markdown and HTML)."""
    header = ["Pair (A vs B)", "A wins", "Tie", "A loses", "Items", "Annotators", "Fleiss' κ"]
    rows = []
    for p in summary.pairs:
        cells = [f"{pct(p.shares[o])} ({pct(p.intervals[o][0])}–{pct(p.intervals[o][1])})" for o in OUTCOMES]
        kappa = "n/a" if p.kappa is None else f"{p.kappa:.3f}"
        rows.append([f"{p.a} vs {p.b}", *cells, str(p.items), str(p.annotators), kappa])
    return header, rows


def summary_markdown(summary: StudySummary) -> str:
    header, rows = summary_table_rows(summary)
    lines = [
        f"Human evaluation ({summary.title}):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, "", *(f"- {n}" for n in summary.notes)]) + "\n"


def summary_records(summary: StudySummary) -> list[dict[str, Any]]:
    """``humaneval.csv`` rows (shares as fractions 0-1)."""
    out = []
    for p in summary.pairs:
        row: dict[str, Any] = {
            "run": summary.run,
            "study": summary.study,
            "benchmark": summary.benchmark,
            "a": p.a,
            "b": p.b,
            "items": p.items,
            "annotators": p.annotators,
            "judgements": p.judgements,
            "fleiss_kappa": "" if p.kappa is None else p.kappa,
        }
        for o in OUTCOMES:
            row.update({o: p.shares[o], f"{o}_low": p.intervals[o][0], f"{o}_high": p.intervals[o][1]})
        out.append(row)
    return out


def judgement_records(key: Mapping[str, Any], judgements: Sequence[Judgement]) -> list[dict[str, Any]]:
    out = []
    for j in judgements:
        pair = key["pairs"][j.pair]
        out.append(
            {
                "annotator": j.annotator,
                "question": j.question,
                "pair": j.pair,
                "a": pair["a"],
                "b": pair["b"],
                "item": j.item,
                "left": pair[j.left],
                "choice": j.choice,
                "outcome": j.outcome,
                "at": j.at,
            }
        )
    return out


def write_figure(summary: StudySummary, path: Path) -> Path:
    """Paper Fig. 6: one stacked horizontal bar per pair, A wins / tie / A loses in percent."""
    from mcmdpo.report.figures import new_figure, save

    fig, axes = new_figure(1, width=7.5, height=1.2 + 0.6 * len(summary.pairs))
    ax = axes[0][0]
    colors = {"win": "#2e7d32", "tie": "#9e9e9e", "lose": "#c62828"}
    names = {"win": "win (A better)", "tie": "tie", "lose": "lose (B better)"}
    labels = [f"{p.a} vs {p.b}" for p in summary.pairs][::-1]
    left = [0.0] * len(labels)
    for outcome in OUTCOMES:
        widths = [100 * p.shares[outcome] for p in summary.pairs][::-1]
        bars = ax.barh(labels, widths, left=left, color=colors[outcome], label=names[outcome], height=0.6)
        for bar, width in zip(bars, widths, strict=True):
            if width >= 6:
                x = bar.get_x() + width / 2
                ax.text(
                    x,
                    bar.get_y() + bar.get_height() / 2,
                    f"{width:.0f}%",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=9,
                    fontweight="bold",
                )
        left = [a + w for a, w in zip(left, widths, strict=True)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of judgements")
    n = summary.pairs[0].items if summary.pairs else 0
    ax.set_title(f"Human evaluation: {n} items x {len(summary.annotators)} annotator(s)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
    return save(fig, path)


def write_summary(
    summary: StudySummary, key: Mapping[str, Any], judgements: Sequence[Judgement], out_dir: Path
) -> list[Path]:
    files = [out_dir / name for name in (JUDGEMENTS_CSV, SUMMARY_JSON, SUMMARY_CSV, SUMMARY_MD)]
    write_text_atomic(files[0], records_csv(judgement_records(key, judgements), JUDGEMENT_COLUMNS))
    write_json_atomic(files[1], summary.to_json())
    write_text_atomic(files[2], records_csv(summary_records(summary), SUMMARY_COLUMNS))
    write_text_atomic(files[3], summary_markdown(summary))
    return [*files, write_figure(summary, out_dir / FIGURE)]


def collect_study(
    files: Sequence[Path | str],
    out_dir: Path | str,
    key_path: Path | str | None = None,
    config: BootstrapConfig = BootstrapConfig(),
) -> CollectedStudy:
    """Check, un-blind and summarise the exported judgements of the study in ``out_dir``."""
    out = Path(out_dir)
    key = read_key(Path(key_path) if key_path is not None else out / KEY)
    judgements = unblind(key, read_exports(key, [Path(f) for f in files]))
    summary = summarise(key, judgements, config)
    return CollectedStudy(summary, write_summary(summary, key, judgements, out))


def read_summary(folder: Path) -> StudySummary | None:
    """The collected study in ``folder`` (``humaneval.json``), None when there is none."""
    path = Path(folder) / SUMMARY_JSON
    return StudySummary.from_json(read_json(path)) if path.is_file() else None


def run_summary(run_dir: Path | str) -> tuple[StudySummary, Path] | None:
    """The collected study of a run dir (``<run>/humaneval/``) and its figure, for the report."""
    folder = Path(run_dir) / STUDY_DIR
    summary = read_summary(folder)
    return None if summary is None else (summary, folder / FIGURE)
