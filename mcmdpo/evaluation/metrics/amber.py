"""AMBER generative metrics: CHAIR, Cover, Hal, Cog (``inference.py --evaluation_type g``).

Files of the AMBER repository's ``data/`` folder:

- ``annotations.json``: a list indexed by ``id - 1``; ids 1-1004 are ``"type": "generative"`` with
  ``truth`` (objects in the image) and ``hallu`` (hallucination-prone objects not in it);
- ``relation.json``: the association map ``{object: [related words]}``; its keys and values are the
  hallucination vocabulary, and an object's related words count as mentioning it;
- ``safe_words.txt``: words never counted as hallucinations;
- ``metrics.txt``: ``name=value`` counter initialisers (denominators start at 0.001, as upstream).

Per response (exactly as upstream): nouns = ``word_tokenize`` -> ``pos_tag`` ``NN*`` ->
``WordNetLemmatizer``; keep the nouns in the vocabulary; a kept noun that is a safe word is skipped,
one matching a truth object (or its related words) marks that object covered, one matching a
hallu object marks it "cognitively" mentioned; every kept noun that matched no truth object is a
hallucinated mention. With ``similarity = "spacy"`` a noun also matches a word whose spaCy vector
similarity exceeds the threshold (0.8, model ``en_core_web_lg``), as upstream always does;
``similarity = "exact"`` skips that step (a labelled deviation, for machines without the model).

- CHAIR = hallucinated mentions / kept nouns (pooled); Cover = covered truth objects / truth objects;
- Hal = share of responses with >= 1 hallucinated mention; Cog = mentioned hallu objects / hallu objects.

Reported like upstream as ``round(x * 100, 1)``; the unrounded values are kept too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcmdpo.evaluation.metrics import nlp

Similarity = Literal["spacy", "exact"]
COUNTERS = (
    "chair_score",
    "chair_num",
    "safe_cover_score",
    "safe_cover_num",
    "hallu_cover_score",
    "hallu_cover_num",
    "non_hallu_score",
    "non_hallu_num",
)


@dataclass(frozen=True)
class AmberData:
    """The annotation files, read and checked."""

    annotations: list[dict[str, Any]]
    association: dict[str, list[str]]
    vocabulary: frozenset[str]
    safe_words: tuple[str, ...]
    counters: dict[str, float]


def amber_files(data_dir: Path) -> dict[str, Path]:
    """The data files inside AMBER's ``data/`` folder."""
    data_dir = Path(data_dir)
    return {
        "annotations": data_dir / "annotations.json",
        "relation": data_dir / "relation.json",
        "safe_words": data_dir / "safe_words.txt",
        "metrics": data_dir / "metrics.txt",
    }


def load_amber(data_dir: Path) -> AmberData:
    """Read ``annotations.json``, ``relation.json``, ``safe_words.txt`` and ``metrics.txt``."""
    files = amber_files(data_dir)
    annotations = _read_json(files["annotations"], list)
    association = _read_json(files["relation"], dict)
    vocabulary = set(association)
    for related in association.values():
        vocabulary.update(related)
    safe = tuple(line.split("\n")[0] for line in files["safe_words"].read_text(encoding="utf-8").splitlines())
    return AmberData(annotations, association, frozenset(vocabulary), safe, read_counters(files["metrics"]))


def _read_json(path: Path, kind: type) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AMBER data file not found (see `mcmdpo assets check`)")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__}")
    return data


def read_counters(path: Path) -> dict[str, float]:
    """``metrics.txt``: ``name=value`` lines (upstream ``eval``s the value; numbers only here)."""
    counters = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.strip().split("=")
        if len(parts) != 2:
            continue
        try:
            counters[parts[0].strip()] = float(parts[1].strip())
        except ValueError:
            raise ValueError(f"{path}:{number}: counter value {parts[1].strip()!r} is not a number") from None
    missing = [c for c in COUNTERS if c not in counters]
    if missing:
        raise ValueError(f"{path}: missing counter(s) {', '.join(missing)}")
    return counters


def extract_nouns(response: str, text: nlp.NltkSpec) -> list[str]:
    """Upstream ``extract_nouns``: tokens tagged NN*, WordNet-lemmatised (case kept)."""
    return [nlp.lemmatize(w) for w in nlp.noun_tokens(nlp.word_tokenize(response, text), text)]


def spacy_similarity(model: str) -> Callable[[str, str], float]:
    """``nlp(a).similarity(nlp(b))`` with the spaCy model ``model`` (docs cached per word)."""
    import spacy

    pipeline = spacy.load(model)
    doc = functools.lru_cache(maxsize=100_000)(pipeline)

    def similarity(a: str, b: str) -> float:
        return float(doc(a).similarity(doc(b)))

    return similarity


def annotation(data: AmberData, item_id: int) -> dict[str, Any]:
    """``annotations[id - 1]``, checked to be the generative entry with that id."""
    if not isinstance(item_id, int) or not 1 <= item_id <= len(data.annotations):
        raise ValueError(f"AMBER id {item_id!r} is outside 1..{len(data.annotations)}")
    entry = data.annotations[item_id - 1]
    if entry.get("id", item_id) != item_id or entry.get("type") != "generative":
        raise ValueError(f"AMBER id {item_id}: annotations[{item_id - 1}] is not its generative entry")
    return entry


def score_amber(
    records: Sequence[Mapping[str, Any]],
    data: AmberData,
    text: nlp.NltkSpec,
    similarity: Callable[[str, str], float] | None = None,
    threshold: float = 0.8,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generative AMBER metrics over ``records`` (``id``, ``response``); (aggregate, per-sample)."""
    counters = {k: data.counters[k] for k in COUNTERS}
    samples = []
    for record in records:
        sample = _score_one(record, data, text, similarity, threshold)
        for key in COUNTERS:
            counters[key] += sample["counters"][key]
        samples.append(sample)
    return _aggregate(counters, len(records)), samples


def _score_one(
    record: Mapping[str, Any],
    data: AmberData,
    text: nlp.NltkSpec,
    similarity: Callable[[str, str], float] | None,
    threshold: float,
) -> dict[str, Any]:
    truth_entry = annotation(data, record["id"])
    nouns = [n for n in extract_nouns(str(record["response"]), text) if n in data.vocabulary]
    safe = _Targets(truth_entry["truth"], data.association, record["id"], "truth")
    hallu = _Targets(truth_entry["hallu"], data.association, record["id"], "hallu")
    flags = [0] * len(nouns)
    for idx, noun in enumerate(nouns):
        if noun in data.safe_words:
            continue
        if safe.mark_exact(noun):
            continue
        hallu.mark_exact(noun)
        if similarity is not None:
            hallu.mark_similar(noun, similarity, threshold)
            if safe.mark_similar(noun, similarity, threshold):
                continue
        flags[idx] = 1
    counts = {
        "chair_score": sum(flags),
        "chair_num": len(flags),
        "safe_cover_score": sum(safe.covered()),
        "safe_cover_num": len(safe.covered()),
        "hallu_cover_score": sum(hallu.covered()),
        "hallu_cover_num": len(hallu.covered()),
        "non_hallu_score": 1 if sum(flags) == 0 else 0,
        "non_hallu_num": 1,
    }
    return {
        "id": record["id"],
        "nouns": nouns,
        "hallucinated": [n for n, f in zip(nouns, flags, strict=True) if f],
        "counters": counts,
    }


class _Targets:
    """Upstream's ``safe_list`` / ``ha_list`` bookkeeping for the truth or hallu objects of one image.

    ``words`` = every object's related words, then the objects themselves; a match on a related
    word marks the object it belongs to, a match on an object marks that object (first match only).
    """

    def __init__(self, objects: Sequence[str], association: Mapping[str, list[str]], item: Any, kind: str):
        self.words: list[str] = []
        self.owner: list[int] = []
        for idx, obj in enumerate(objects):
            if obj not in association:
                raise ValueError(f"AMBER id {item}: {kind} object {obj!r} is not in relation.json")
            self.words += association[obj]
            self.owner += [idx] * len(association[obj])
        self.n_related = len(self.words)
        self.words += list(objects)
        self.flags = self.owner + [0] * len(objects)  # upstream reuses one list for both roles

    def _mark(self, j: int) -> None:
        if j < self.n_related:
            self.flags[self.flags[j] + self.n_related] = 1  # upstream: safe_list[safe_list[j] + len - n]
        else:
            self.flags[j] = 1

    def mark_exact(self, noun: str) -> bool:
        if noun not in self.words:
            return False
        self._mark(self.words.index(noun))
        return True

    def mark_similar(self, noun: str, similarity: Callable[[str, str], float], threshold: float) -> bool:
        for j, word in enumerate(self.words):
            if similarity(noun, word) > threshold:
                self._mark(j)
                return True
        return False

    def covered(self) -> list[int]:
        """Upstream ``list[-len(objects):]`` (the whole list when there are no objects)."""
        n_objects = len(self.words) - self.n_related
        return self.flags[-n_objects:] if n_objects else self.flags[:]


def _aggregate(c: Mapping[str, float], n: int) -> dict[str, Any]:
    raw = {
        "chair": c["chair_score"] / c["chair_num"] * 100,
        "cover": c["safe_cover_score"] / c["safe_cover_num"] * 100,
        "hal": 100 - c["non_hallu_score"] / c["non_hallu_num"] * 100,
        "cog": c["hallu_cover_score"] / c["hallu_cover_num"] * 100,
    }
    return {
        **{k: round(v, 1) for k, v in raw.items()},
        "num_samples": n,
        "unrounded": raw,
        "counters": dict(c),
    }
