"""Alt-text metrics under two named protocols: ``paper`` (the upstream ``get_score.py``) and ``coco``.

Input: prediction records with ``response`` (the model output) and ``chosen`` (the reference), plus
an id (``id`` or ``idx``; the line position otherwise) -- the upstream test format plus a response.

``paper`` (what produced the paper's Tables 2-8), per record:

- the response loses a leading ``"Assistant:"`` and surrounding whitespace;
- ``word_tokenize`` on reference and response (see :mod:`mcmdpo.evaluation.metrics.nlp` for the
  tokenizer modes);
- BLEU-4 = nltk ``sentence_bleu([ref], hyp, weights=(0, 0, 0, 1))`` (the individual 4-gram precision
  with brevity penalty, no smoothing), also BLEU-1 (1, 0, 0, 0) and cumulative BLEU-4;
- METEOR = nltk ``meteor_score([ref], hyp)`` (needs WordNet);
- ROUGE-L = F of the ``rouge`` package's summary-level ROUGE-L on the raw strings (0 for an empty
  response; a record the package rejects, e.g. a response of only periods, contributes 0 as upstream);
- CIDEr over the whole file = pycocoevalcap's CIDEr-D scorer (identical to upstream ``cider.py``) on
  the raw, whitespace-split, case-sensitive strings;
- edit distance = Levenshtein distance between the token lists.

Aggregates are means over records, reported like upstream as ``round(mean, 5) * 100`` (edit
distance: ``round(mean, 3)``); the unrounded values are kept under ``unrounded``.

``coco`` (the captioning-standard toolkit): pycocoevalcap's Stanford PTBTokenizer (lower-cased,
punctuation removed) on reference and response, then corpus BLEU-4 (``closest`` reference length),
METEOR 1.5 (corpus score of the Java tool), ROUGE-L (beta 1.2, mean) and CIDEr-D (mean), all x100.
The Java tools are the ones shipped with pycocoevalcap, run with the same command lines; this module
only feeds them differently (one tokenizer run for references and responses, METEOR lines pipelined
instead of one round trip each, the METEOR JVM's initial heap set to its maximum, temporary files
outside site-packages), which gives the same numbers
(checked against calling pycocoevalcap directly in the tests). SPICE is not computed. Each record's
row also carries ``bleu_counts`` (pycocoevalcap's cooked n-gram statistics) and ``meteor_stats`` (the
METEOR tool's statistics line): summed over any subset of records they give that subset's corpus
BLEU / METEOR, which is what the report's bootstrap resamples.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import write_json_atomic
from mcmdpo.batch.errors import InputError, record_ref
from mcmdpo.evaluation.metrics import nlp
from mcmdpo.evaluation.metrics.predictions import PredictionError, read_predictions, write_predictions

if TYPE_CHECKING:
    from pycocoevalcap.cider.cider_scorer import CiderScorer

PROTOCOLS = ("paper", "coco")
_ASSISTANT = re.compile(r"^Assistant:")
# characters that a line-based Java tool would treat as line breaks; replaced by spaces
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class Pair:
    """One scored record: its id, the (normalised) response and the reference."""

    id: Any
    response: str
    reference: str


@dataclass
class ProtocolResult:
    """Aggregate metrics (x100 where upstream scales), per-sample scores, deviations."""

    aggregate: dict[str, Any]
    samples: list[dict[str, Any]]
    deviations: list[str] = field(default_factory=list)


def strip_assistant(text: str) -> str:
    """Upstream: ``re.sub(r'^Assistant:', '', response).strip()``."""
    return _ASSISTANT.sub("", text).strip()


def pairs_from_records(records: Sequence[Mapping[str, Any]], source: str = "predictions") -> list[Pair]:
    """Validate ``response``/``chosen`` of each record and build :class:`Pair` s."""
    pairs = []
    for position, record in enumerate(records):
        item_id = record.get("id", record.get("idx", position))
        for key in ("response", "chosen"):
            if not isinstance(record.get(key), str):
                raise InputError(
                    f"field {key!r} must be a string (got {type(record.get(key)).__name__})",
                    file=source,
                    record=f"{record_ref(position)} (id={item_id!r})",
                )
        pairs.append(Pair(item_id, strip_assistant(record["response"]), record["chosen"]))
    return pairs


# ---------------------------------------------------------------- paper protocol


def upstream_round(mean: float) -> float:
    """``round(mean, 5) * 100``, exactly as ``get_score.py`` reports its metrics."""
    return round(mean, 5) * 100


def score_paper(pairs: Sequence[Pair], text: nlp.NltkSpec) -> ProtocolResult:
    """The upstream ``get_score.py`` metrics for ``pairs`` (see the module docstring)."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    nlp.use_data_dirs(text.data_dirs)
    nlp.require(nlp.required_resources(text, tokenize=True, lemmatize=True, tag=False), "protocol 'paper'")
    samples = []
    cider = CiderScorer(n=4, sigma=6.0)
    with _recursion_limit(100_000):  # upstream raises it too: rouge's LCS recursion on long texts
        for pair in pairs:
            samples.append(_paper_sample(pair, text))
            cider += (pair.response, [pair.reference])
    cider_scores = _cider(cider, len(pairs))
    for sample, value in zip(samples, cider_scores, strict=True):
        sample["cider"] = float(value)
    return ProtocolResult(_paper_aggregate(samples), samples, text.deviations())


def _paper_sample(pair: Pair, text: nlp.NltkSpec) -> dict[str, Any]:
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score

    ref = nlp.word_tokenize(pair.reference, text)
    hyp = nlp.word_tokenize(pair.response, text)
    with _quiet_nltk():  # one call, three weightings: the n-gram counts are computed once
        bleu4, bleu1, cumulative = sentence_bleu([ref], hyp, weights=BLEU_WEIGHTS)
    sample = {
        "id": pair.id,
        "bleu_4": float(bleu4),
        "bleu_1": float(bleu1),
        "cumulative_bleu_4": float(cumulative),
    }
    sample["meteor"] = float(meteor_score([ref], hyp))
    sample["rouge_l"], error = _rouge_l(pair.response, pair.reference)
    if error:
        sample["rouge_error"] = error
    sample["edit_distance"] = levenshtein(ref, hyp)
    return sample


@functools.lru_cache(maxsize=1)
def _rouge_scorer():  # noqa: ANN202 - rouge.Rouge, imported lazily
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])  # rouge-l alone gives the same value as the default triple


def _rouge_l(response: str, reference: str) -> tuple[float, str | None]:
    """Upstream ``rouge_func``: 0 for an empty response; the package's errors count as 0."""
    if not response:
        return 0.0, None
    try:
        return float(_rouge_scorer().get_scores(response, reference, avg=True)["rouge-l"]["f"]), None
    except (ValueError, AssertionError, ZeroDivisionError, RecursionError) as exc:
        return 0.0, f"{type(exc).__name__}: {exc}"


def _cider(scorer: CiderScorer, n: int) -> list[float]:
    if n == 0:
        return []
    _, scores = scorer.compute_score()
    return [float(s) for s in scores]


BLEU_WEIGHTS = [(0, 0, 0, 1), (1, 0, 0, 0), (0.25, 0.25, 0.25, 0.25)]
"""Upstream BLEU-4 (individual 4-gram), BLEU-1 and cumulative BLEU-4 weights."""
PAPER_KEYS = ("bleu_4", "meteor", "rouge_l", "cider", "bleu_1", "cumulative_bleu_4")


def _paper_aggregate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(samples)
    means = {k: (sum(s[k] for s in samples) / n if n else math.nan) for k in PAPER_KEYS}
    out: dict[str, Any] = {k: upstream_round(v) for k, v in means.items()}
    out["edit_distance"] = round(sum(s["edit_distance"] for s in samples) / n, 3) if n else math.nan
    out["num_samples"] = n
    out["rouge_errors"] = sum(1 for s in samples if "rouge_error" in s)
    out["unrounded"] = {k: v * 100 for k, v in means.items()}
    return out


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    """Edit distance between two token lists (insert, delete, substitute: cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@contextlib.contextmanager
def _recursion_limit(limit: int):  # noqa: ANN202 - context manager
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@contextlib.contextmanager
def _quiet_nltk():  # noqa: ANN202 - context manager
    """nltk warns on every zero-count BLEU; the value (0) is what upstream averages."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------- coco protocol


def _package_dir(sub: str) -> Path:
    """A folder of the pycocoevalcap distribution (a namespace package: no ``__file__``)."""
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("protocol 'coco' needs the pycocoevalcap package (pip install pycocoevalcap)")
    return Path(list(spec.submodule_search_locations)[0]) / sub


PTB_JAR = ("tokenizer", "stanford-corenlp-3.4.1.jar")
METEOR_JAR = ("meteor", "meteor-1.5.jar")
# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


class CocoSession:
    """The coco protocol's Java tools, started early so they overlap with other scoring work.

    ``start()`` launches the PTB tokenizer on every reference and response and the METEOR JVM;
    ``finish()`` collects the tokens, runs BLEU / METEOR / ROUGE-L / CIDEr-D and returns the result.
    """

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.pairs = list(pairs)
        self._tmp = tempfile.TemporaryDirectory(prefix="mcmdpo-ptb-")
        self._ptb: subprocess.Popen[bytes] | None = None
        self._meteor: subprocess.Popen[bytes] | None = None

    def start(self) -> CocoSession:
        _require_java()
        lines = [_LINE_BREAKS.sub(" ", p.reference) for p in self.pairs]
        lines += [_LINE_BREAKS.sub(" ", p.response) for p in self.pairs]
        src = Path(self._tmp.name) / "captions.txt"
        src.write_text("\n".join(lines), encoding="utf-8")
        jar = _package_dir(PTB_JAR[0]) / PTB_JAR[1]
        cmd = [
            "java",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
        ]
        self._ptb = subprocess.Popen([*cmd, str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        meteor_dir = _package_dir(METEOR_JAR[0])
        self._meteor = subprocess.Popen(
            # pycocoevalcap's command; -Xms2G (initial heap = its -Xmx) only shortens start-up
            ["java", "-Xms2G", "-jar", "-Xmx2G", METEOR_JAR[1], "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=meteor_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return self

    def finish(self) -> ProtocolResult:
        try:
            refs, hyps = self._tokens()
            return _coco_scores([p.id for p in self.pairs], refs, hyps, self._meteor_scores(refs, hyps))
        finally:
            self.close()

    def close(self) -> None:
        for proc in (self._ptb, self._meteor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self._tmp.cleanup()

    def _tokens(self) -> tuple[list[str], list[str]]:
        assert self._ptb is not None, "start() first"
        out, err = self._ptb.communicate()
        if self._ptb.returncode != 0:
            raise RuntimeError(f"PTBTokenizer failed ({self._ptb.returncode}): {err.decode()[-500:]}")
        lines = out.decode("utf-8").split("\n")
        n = len(self.pairs)
        if len(lines) < 2 * n:
            raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {2 * n} captions")
        tokens = [
            " ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS) for line in lines
        ]
        return tokens[:n], tokens[n : 2 * n]

    def _meteor_scores(
        self, refs: Sequence[str], hyps: Sequence[str]
    ) -> tuple[float, list[float], list[list[float]]]:
        """pycocoevalcap ``Meteor.compute_score``: SCORE lines -> stats, then one EVAL line.

        Returns the corpus score, the per-record scores and each record's statistics line as numbers
        (what the EVAL line pools; the report resamples them).
        """
        proc = self._meteor
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        lines = [
            " ||| ".join(("SCORE", ref, hyp.replace("|||", "").replace("  ", " ")))
            for ref, hyp in zip(refs, hyps, strict=True)
        ]
        stats = _pipelined(proc, lines)
        proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        proc.stdin.flush()
        per_sample = [float(proc.stdout.readline().strip()) for _ in stats]
        corpus = float(proc.stdout.readline().strip())
        return corpus, per_sample, [[float(x) for x in line.split()] for line in stats]


def _pipelined(proc: subprocess.Popen[bytes], lines: Sequence[str]) -> list[str]:
    """Write all lines from a thread while reading one reply per line (no pipe deadlock)."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def write() -> None:
        for line in lines:
            stdin.write(f"{line}\n".encode())
        stdin.flush()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    replies = []
    for _ in lines:
        reply = proc.stdout.readline()
        if not reply:
            err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
            raise RuntimeError(f"METEOR stopped after {len(replies)} of {len(lines)} lines: {err}")
        replies.append(reply.decode().strip())
    writer.join()
    return replies


def _coco_scores(
    ids: Sequence[Any],
    refs: Sequence[str],
    hyps: Sequence[str],
    meteor: tuple[float, list[float], list[list[float]]],
) -> ProtocolResult:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    n = len(ids)
    if n == 0:
        return ProtocolResult({"num_samples": 0}, [])
    gts = {i: [refs[i]] for i in range(n)}
    res = {i: [hyps[i]] for i in range(n)}
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 - BleuScorer prints
        bleu, bleu_samples = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_samples = Rouge().compute_score(gts, res)
    cider, cider_samples = Cider().compute_score(gts, res)
    samples = [
        {
            "id": ids[i],
            "bleu_4": float(bleu_samples[3][i]),
            "meteor": meteor[1][i],
            "rouge_l": float(rouge_samples[i]),
            "cider": float(cider_samples[i]),
            "bleu_counts": bleu_counts(hyps[i], refs[i]),
            "meteor_stats": meteor[2][i],
        }
        for i in range(n)
    ]
    aggregate = {
        "bleu_4": float(bleu[3]) * 100,
        "meteor": meteor[0] * 100,
        "rouge_l": float(rouge) * 100,
        "cider": float(cider) * 100,
        "bleu_1": float(bleu[0]) * 100,
        "num_samples": n,
    }
    return ProtocolResult(aggregate, samples)


def bleu_counts(hyp: str, ref: str) -> dict[str, Any]:
    """The n-gram statistics corpus BLEU sums over records (pycocoevalcap ``cook_test``, one reference).

    ``{"testlen", "reflen", "guess": [n=1..4], "correct": [n=1..4]}``: summing them over any subset of
    records and applying ``BleuScorer.compute_score``'s formula gives that subset's corpus BLEU (the
    report's bootstrap resamples these sums).
    """
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    comps = cook_test(hyp, cook_refs([ref]))
    (reflen,) = comps["reflen"]  # one reference: "closest" is its length
    counts = {"testlen": comps["testlen"], "reflen": reflen}
    return {**counts, "guess": comps["guess"], "correct": comps["correct"]}


def _require_java() -> None:
    import shutil

    if shutil.which("java") is None:
        raise RuntimeError(
            "protocol 'coco' needs Java (java on PATH) for pycocoevalcap's PTBTokenizer and METEOR 1.5; "
            "load a Java module or install a JRE (>= 8)"
        )


def score_coco(pairs: Sequence[Pair]) -> ProtocolResult:
    """The coco protocol for ``pairs`` (starts and finishes the Java tools)."""
    return CocoSession(pairs).start().finish()


# ---------------------------------------------------------------- files


def score_pairs(
    pairs: Sequence[Pair], protocols: Sequence[str], text: nlp.NltkSpec | None = None
) -> dict[str, ProtocolResult]:
    """Every requested protocol; the coco Java tools run while the paper metrics are computed."""
    text = text or nlp.NltkSpec()
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown alt-text protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    session = CocoSession(pairs).start() if "coco" in protocols else None
    try:
        results = {"paper": score_paper(pairs, text)} if "paper" in protocols else {}
        if session is not None:
            results["coco"] = session.finish()
    finally:
        if session is not None:
            session.close()
    return {p: results[p] for p in protocols}


def metrics_document(results: Mapping[str, ProtocolResult], **extra: Any) -> dict[str, Any]:
    """The metrics JSON: aggregates per protocol, deviations, package versions, ``extra`` fields."""
    return {
        **extra,
        "metrics": {name: r.aggregate for name, r in results.items()},
        "deviations": sorted({d for r in results.values() for d in r.deviations}),
        "versions": nlp.versions(),
    }


def sample_rows(results: Mapping[str, ProtocolResult]) -> list[dict[str, Any]]:
    """Per-sample scores, one row per record: ``{"id", "<protocol>": {...}, ...}``."""
    rows: list[dict[str, Any]] = []
    for name, result in results.items():
        for i, sample in enumerate(result.samples):
            if len(rows) <= i:
                rows.append({"id": sample["id"]})
            rows[i][name] = {k: v for k, v in sample.items() if k != "id"}
    return rows


def samples_path(out_path: Path) -> Path:
    """Where the per-sample scores of ``out_path`` (a metrics JSON) are written."""
    return out_path.with_name(out_path.stem + ".samples.jsonl")


def score_file(
    pred_path: Path | str,
    protocol: str | Sequence[str],
    out_path: Path | str,
    text: nlp.NltkSpec | None = None,
) -> dict[str, Any]:
    """Score a predictions JSONL (lines with ``response`` and ``chosen``); write metrics JSON.

    ``protocol`` is ``"paper"``, ``"coco"`` or a list of both; ``text`` the NLTK settings (data
    folders, tokenizer; default punkt). The per-sample scores go to ``<out stem>.samples.jsonl`` next
    to ``out_path``. Returns the metrics document. An empty file is a
    :class:`~mcmdpo.evaluation.metrics.predictions.PredictionError`.
    """
    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    pred_path, out_path = Path(pred_path), Path(out_path)
    records = read_predictions(pred_path, required=("response", "chosen"))
    if not records:
        raise PredictionError("no predictions in the file: nothing to score", file=pred_path)
    results = score_pairs(pairs_from_records(records, str(pred_path)), protocols, text)
    doc = metrics_document(results, predictions=str(pred_path), samples=samples_path(out_path).name)
    write_predictions(samples_path(out_path), sample_rows(results))
    write_json_atomic(out_path, doc)
    return doc
