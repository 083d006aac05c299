"""Object HalBench: CHAIR with COCO 2014 ground truth (RLHF-V / RLAIF-V ``eval_gpt_obj_halbench.py``).

Ground truth per image = the classes of its COCO instance annotations (train2014 + val2014) mapped
through the synonym table, together with the COCO objects found in its five reference captions.
Object mentions in a response come from one of two extractors:

- ``nltk`` (upstream's judge-free path): ``word_tokenize(text.lower())``, WordNet-lemmatise every
  token, merge the two-word names (``"hot dog"``, ``"baby cat" -> cat``, ...), drop ``seat`` when
  ``toilet`` is present, keep the words in the synonym table;
- ``llm``: a chat model lists the objects of the response (upstream prompt, responses of at most
  three words give no objects); each listed object is reduced to COCO words as upstream does with
  spaCy (lemmas, two-word names, else runs of nouns). Without a spaCy model the nouns come from the
  configured tagger and the lemmas from WordNet (reported as a deviation).

Metrics (all rates x100):

- ``response_level`` = responses with >= 1 hallucinated object / responses mentioning >= 1 COCO
  object (``CHAIRs_refine``, printed as "Response Hall"): the paper's response-level rate;
- ``response_level_all`` = the same numerator / all responses (``CHAIRs``);
- ``mention_level`` = hallucinated mentions / all mentions, pooled (``CHAIRi``, "Object Hall");
- ``recall`` = correctly mentioned distinct classes per response, summed / ground-truth classes summed;
- ``mean_length`` = mean number of space-separated words per response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import content_hash, read_json, write_json_atomic
from mcmdpo.evaluation.metrics import nlp
from mcmdpo.evaluation.metrics.predictions import response_text

if TYPE_CHECKING:
    from spacy.language import Language

    from mcmdpo.evaluation.metrics.judge import JudgeClient

log = logging.getLogger(__name__)

COCO_FILES = (
    "instances_train2014.json",
    "instances_val2014.json",
    "captions_train2014.json",
    "captions_val2014.json",
)
ANIMAL_WORDS = (
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
)
VEHICLE_WORDS = ("jet", "train")

EXTRACT_PROMPT = """You are an expert in image objects extraction according to a question answer pair. We asked an examiner to answer a question about a picture.

[Start of Question]

<image> {question}

[End of Question]

[Start of Examiner's Answer]

{answer}

[End of Examiner's Answer]


Assume that the answer is correct, please identify all visible objects that are directly shown in the image. Please following the instructions in below:

1. You should only mention objects that are explicitly mentioned in the examiner's answer.
2. You should only extract the object names without the attributes of the objects.
3. You should not include the properties of the object, like the color, material, etc. as part of the object name in your result.
4. Make your answer precise. Present the results in a JSON list format: ["object_1", ..., "object_n"].
5. You should return an empty JSON list () if no visible objects can be found.
"""  # noqa: E501 - upstream's text as Python reads it (its source writes the quotes as \", i.e. plain quotes)


@dataclass(frozen=True)
class Synonyms:
    """The 80 COCO classes with synonyms, and upstream's two-word name table."""

    objects: frozenset[str]
    inverse: Mapping[str, str]
    double_words: Mapping[str, str]


def load_synonyms(path: Path) -> Synonyms:
    """Read ``synonyms_refine.txt``: one class per line, synonyms separated by ", "."""
    objects: list[str] = []
    inverse: dict[str, str] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        names = [s.strip() for s in line.strip().split(", ")]
        if not names or not names[0]:
            raise ValueError(f"{path}:{number}: empty synonym line")
        objects.extend(names)
        for name in names:
            inverse[name] = names[0]
    return Synonyms(frozenset(objects), inverse, _double_words(inverse))


def _double_words(inverse: Mapping[str, str]) -> dict[str, str]:
    doubles = [w for w in inverse if len(w.strip().split(" ")) >= 2] + ["home plate", "train track"]
    table = {w: w for w in doubles}
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"
    return table


def merge_double_words(words: Sequence[str], syn: Synonyms, keep_single: bool = True) -> list[str]:
    """Replace adjacent pairs found in the two-word table by their name (left to right)."""
    out, i = [], 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if pair in syn.double_words:
            out.append(syn.double_words[pair])
            i += 2
        else:
            if keep_single:
                out.append(words[i])
            i += 1
    return out


def coco_mentions(words: Sequence[str], syn: Synonyms) -> list[tuple[str, str]]:
    """(word, class) for every word in the synonym table; ``seat`` goes when ``toilet`` is there."""
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    return [(w, syn.inverse[w]) for w in words if w in syn.objects]


def caption_words(caption: str, syn: Synonyms, text: nlp.NltkSpec) -> list[str]:
    """Upstream ``caption_to_words`` before the class filter: tokens, lemmas, two-word names."""
    tokens = nlp.word_tokenize(caption.lower(), text)
    return merge_double_words([nlp.lemmatize(t) for t in tokens], syn)


# ---------------------------------------------------------------- ground truth


def ground_truth(
    image_ids: Iterable[int],
    coco_dir: Path,
    syn: Synonyms,
    text: nlp.NltkSpec,
    cache_dir: Path | None = None,
) -> dict[int, set[str]]:
    """COCO classes per image (instances + captions of train2014 and val2014), optionally cached.

    The four annotation files are large (~0.5 GB); the result for the benchmark's images is cached
    under ``cache_dir`` keyed by the files' sizes and times, the synonym table and the tokenizer.
    """
    ids = sorted({int(i) for i in image_ids})
    for name in COCO_FILES:
        if not (Path(coco_dir) / name).is_file():
            raise FileNotFoundError(
                f"{Path(coco_dir) / name}: COCO 2014 annotation file not found (see `mcmdpo assets check`)"
            )
    key = _gt_key(ids, coco_dir, syn, text)
    cache = Path(cache_dir) / f"objhal-gt-{key}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        return {int(k): set(v) for k, v in read_json(cache).items()}
    gt = _ground_truth(ids, Path(coco_dir), syn, text)
    if cache is not None:
        write_json_atomic(cache, {str(k): sorted(v) for k, v in gt.items()})
    return gt


def _gt_key(ids: Sequence[int], coco_dir: Path, syn: Synonyms, text: nlp.NltkSpec) -> str:
    stats = []
    for name in COCO_FILES:
        st = (Path(coco_dir) / name).stat()
        stats.append((name, st.st_size, int(st.st_mtime)))
    return content_hash(
        {"ids": ids, "files": stats, "syn": sorted(syn.inverse.items()), "tok": text.tokenizer}
    )


def _ground_truth(
    ids: Sequence[int], coco_dir: Path, syn: Synonyms, text: nlp.NltkSpec
) -> dict[int, set[str]]:
    wanted = set(ids)
    gt: dict[int, set[str]] = {i: set() for i in ids}
    for split in ("train", "val"):
        data = _load_coco(coco_dir / f"instances_{split}2014.json", ("annotations", "categories"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        for ann in data["annotations"]:
            if ann["image_id"] in wanted:
                gt[ann["image_id"]].add(syn.inverse[names[ann["category_id"]]])
    for split in ("train", "val"):
        data = _load_coco(coco_dir / f"captions_{split}2014.json", ("annotations",))
        for ann in data["annotations"]:
            if ann["image_id"] in wanted:
                gt[ann["image_id"]].update(
                    c for _, c in coco_mentions(caption_words(ann["caption"], syn, text), syn)
                )
    return gt


def _load_coco(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO 2014 annotation file not found (see `mcmdpo assets check`)")
    log.info("reading %s", path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO annotation file (no {', '.join(missing)})")
    return data


# ---------------------------------------------------------------- LLM extractor


def extraction_prompt(question: str, answer: str) -> str:
    """Upstream extraction prompt (sent as the single system message)."""
    return EXTRACT_PROMPT.replace("{question}", question).replace("{answer}", answer)


def parse_object_list(content: str) -> list[str] | None:
    """Upstream ``parse_object_list``: the JSON list in the reply (or its last line), else None."""
    for candidate in (content, content.strip().split("\n")[-1] if '["' in content else None):
        if candidate is None:
            continue
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            return [str(v) for v in value]
    return None


def refine_objects(
    objects: Sequence[str], syn: Synonyms, text: nlp.NltkSpec, spacy_nlp: Language | None = None
) -> list[str]:
    """Upstream ``get_pred_objs_match``: each extracted object -> two-word names, else noun runs."""
    refined: list[str] = []
    for obj in objects:
        tokens, lemmas, nouns = _analyse(f"a {obj}", text, spacy_nlp)
        doubles = merge_double_words(lemmas, syn, keep_single=False)
        refined += doubles if doubles else _noun_runs(lemmas, nouns)
    unique: list[str] = []
    for obj in refined:
        if obj not in unique:
            unique.append(obj)
    return unique


def llm_extract(
    records: Sequence[Mapping[str, Any]],
    client: JudgeClient,
    syn: Synonyms,
    text: nlp.NltkSpec,
    spacy_nlp: Language | None = None,
) -> dict[Any, list[str]]:
    """Objects per record id from the LLM extractor (upstream: answers of <= 3 words give none)."""
    extracted: dict[Any, list[str]] = {r["id"]: [] for r in records}
    asked = [r for r in records if len(response_text(r).strip().split()) > 3]
    prompts = [
        [{"role": "system", "content": extraction_prompt(r["question"], response_text(r))}] for r in asked
    ]
    for record, reply in zip(asked, client.complete_many(prompts), strict=True):
        objects = parse_object_list(reply.content)
        if objects is None:
            raise ValueError(
                f"objhal item {record['id']!r}: extractor reply is not a JSON list: {reply.content[:200]!r}"
            )
        extracted[record["id"]] = refine_objects(objects, syn, text, spacy_nlp)
    return extracted


def _analyse(
    phrase: str, text: nlp.NltkSpec, spacy_nlp: Language | None
) -> tuple[list[str], list[str], list[bool]]:
    """Tokens, lemmas and noun flags of ``phrase`` (spaCy when given, else NLTK + WordNet)."""
    if spacy_nlp is not None:
        doc = spacy_nlp(phrase)
        return (
            [t.text for t in doc],
            [t.lemma_ for t in doc],
            [t.tag_ in ("NNP", "NNPS", "NN", "NNS") for t in doc],
        )
    tokens = nlp.word_tokenize(phrase, text)
    noun_set = set(nlp.noun_tokens(tokens, text))
    return tokens, [nlp.lemmatize(t) for t in tokens], [t in noun_set for t in tokens]


def _noun_runs(lemmas: Sequence[str], nouns: Sequence[bool]) -> list[str]:
    runs, current = [], ""
    for lemma, is_noun in zip(lemmas, nouns, strict=True):
        if is_noun:
            current += f" {lemma}"
        elif current:
            runs.append(current.strip())
            current = ""
    if current:
        runs.append(current.strip())
    return runs


# ---------------------------------------------------------------- metrics


def score_chair(
    records: Sequence[Mapping[str, Any]],
    gt: Mapping[int, set[str]],
    syn: Synonyms,
    text: nlp.NltkSpec,
    extracted: Mapping[Any, list[str]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """CHAIR over ``records`` (``id``, ``image_id``, ``response``); ``extracted``: LLM objects by id."""
    samples = [_sample(r, gt, syn, text, extracted) for r in records]
    return _aggregate(samples), samples


def _sample(
    record: Mapping[str, Any],
    gt: Mapping[int, set[str]],
    syn: Synonyms,
    text: nlp.NltkSpec,
    extracted: Mapping[Any, list[str]] | None,
) -> dict[str, Any]:
    caption = response_text(record)
    if extracted is not None:
        mentions = coco_mentions(list(extracted[record["id"]]), syn)
    else:
        mentions = coco_mentions(caption_words(caption, syn, text), syn)
    truth = gt[int(record["image_id"])]
    hallucinated = [(w, c) for w, c in mentions if c not in truth]
    correct = {c for _, c in mentions if c in truth}
    return {
        "id": record["id"],
        "image_id": int(record["image_id"]),
        "mentions": [list(m) for m in mentions],
        "hallucinated": [list(m) for m in hallucinated],
        "ground_truth": sorted(truth),
        "correct_classes": len(correct),
        "words": len(caption.strip().split(" ")),
        "chair_i": len(hallucinated) / len(mentions) if mentions else 0.0,
    }


def _aggregate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(samples)
    with_objects = sum(1 for s in samples if s["mentions"])
    hallucinated_responses = sum(1 for s in samples if s["hallucinated"])
    mentions = sum(len(s["mentions"]) for s in samples)
    hallucinated_mentions = sum(len(s["hallucinated"]) for s in samples)
    gt_classes = sum(len(s["ground_truth"]) for s in samples)
    return {
        "response_level": _rate(hallucinated_responses, with_objects),
        "response_level_all": _rate(hallucinated_responses, n),
        "mention_level": _rate(hallucinated_mentions, mentions),
        "recall": _rate(sum(s["correct_classes"] for s in samples), gt_classes),
        "mean_length": sum(s["words"] for s in samples) / n if n else None,
        "num_samples": n,
        "responses_with_objects": with_objects,
        "hallucinated_responses": hallucinated_responses,
        "mentions": mentions,
        "hallucinated_mentions": hallucinated_mentions,
        "paper_response_level": "response_level (CHAIRs_refine: responses with >= 1 COCO object)",
    }


def _rate(numerator: float, denominator: float) -> float | None:
    return numerator / denominator * 100 if denominator else None
