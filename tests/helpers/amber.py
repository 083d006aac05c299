"""AMBER's files, hand-made in its formats (annotations, relation words, safe words, upstream
metrics.txt counters, queries), and responses whose metrics the tests compute by hand."""

from __future__ import annotations

import json
from pathlib import Path

RELATION = {
    "dog": ["puppy"], "grass": ["ground"], "person": ["man", "woman", "people"], "cat": [], "ball": [],
    "tree": ["forest"], "sky": [], "car": [], "orange": [], "light": [],
}  # fmt: skip
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "ball"]},
    {"id": 2, "type": "generative", "truth": ["person", "tree"], "hallu": ["car", "sky"]},
    {"id": 3, "type": "generative", "truth": ["sky"], "hallu": ["dog"]},
    {"id": 4, "type": "discriminative-hallucination", "truth": "no"},
]
# upstream data/metrics.txt (its generative counters, plus one discriminative line)
METRICS_TXT = """chair_num=0.001
chair_score=0
safe_cover_num=0.001
safe_cover_score=0
hallu_cover_num=0.001
hallu_cover_score=0
non_hallu_score=0
non_hallu_num=0.001
qa_correct_score=0
qa_correct_num=0.001"""
RESPONSES = {
    1: "A puppy plays on the ground with a cat and an orange light.",  # dog, grass covered; cat hallucinated
    2: "Two people stand under a tree near a car.",  # person, tree covered; car hallucinated
    3: "The sky is blue.",  # sky covered
}


def write_amber(data: Path) -> Path:
    """AMBER's ``data`` folder: annotations, relation.json, safe words, metrics.txt, query_all.json."""
    (data / "query").mkdir(parents=True)
    (data / "annotations.json").write_text(json.dumps(ANNOTATIONS, indent=4))
    (data / "relation.json").write_text(json.dumps(RELATION, indent=4))
    (data / "safe_words.txt").write_text("orange\nlight")
    (data / "metrics.txt").write_text(METRICS_TXT)
    queries = [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in (1, 2, 3)]
    queries.append({"id": 1005, "image": "AMBER_1005.jpg", "query": "Is there a cat in this image?"})
    (data / "query" / "query_all.json").write_text(json.dumps(queries, indent=4))
    return data
