"""AMBER generative metrics on hand-made files in AMBER's formats, checked by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mcmdpo.evaluation.benchmarks import read_items
from mcmdpo.evaluation.metrics import amber, nlp
from tests.helpers.amber import RESPONSES
from tests.helpers.wordnet import text_config


def test_amber_matches_hand_computed_values(amber_dir, nltk_data):
    text = text_config(nltk_data)
    nlp.use_data_dirs(text.data_dirs)
    data = amber.load_amber(amber_dir)
    assert data.safe_words == ("orange", "light") and data.counters["chair_num"] == 0.001
    records = [{"id": i, "response": r} for i, r in RESPONSES.items()]
    metrics, samples = amber.score_amber(records, data, text)
    assert samples[0]["nouns"] == ["puppy", "ground", "cat", "orange", "light"]
    assert samples[0]["hallucinated"] == ["cat"] and samples[1]["hallucinated"] == ["car"]
    assert samples[2]["nouns"] == ["sky"] and samples[2]["hallucinated"] == []
    # counters start at metrics.txt's values (denominators 0.001), as upstream
    chair = 2 / (9 + 0.001) * 100  # hallucinated / kept nouns: (1 + 1 + 0) / (5 + 3 + 1)
    cover = 5 / (5 + 0.001) * 100  # truth objects covered: 2/2, 2/2, 1/1
    hal = 100 - 1 / (3 + 0.001) * 100  # responses without hallucination: only the third
    cog = 2 / (5 + 0.001) * 100  # hallu objects mentioned: cat, car (of 2 + 2 + 1)
    assert metrics["unrounded"] == pytest.approx({"chair": chair, "cover": cover, "hal": hal, "cog": cog})
    assert (metrics["chair"], metrics["cover"], metrics["hal"], metrics["cog"]) == (
        round(chair, 1), round(cover, 1), round(hal, 1), round(cog, 1)
    )  # fmt: skip


def test_similarity_matching_path(amber_dir, nltk_data):
    """Upstream's similarity step with a fixed similarity function (spaCy supplies it in real runs)."""
    text = text_config(nltk_data)
    nlp.use_data_dirs(text.data_dirs)
    data = amber.load_amber(amber_dir)
    records = [{"id": 3, "response": "A car under the sky."}]
    exact, _ = amber.score_amber(records, data, text)
    assert exact["counters"]["chair_score"] == 1  # car: not in the truth words
    similar = {("car", "sky"): 0.9, ("car", "dog"): 0.85}

    def similarity(a: str, b: str) -> float:
        return 1.0 if a == b else similar.get((a, b), 0.1)

    fuzzy, samples = amber.score_amber(records, data, text, similarity, threshold=0.8)
    assert fuzzy["counters"]["chair_score"] == 0 and samples[0]["hallucinated"] == []
    assert fuzzy["counters"]["hallu_cover_score"] == 1  # car ~ dog marks the hallu object as mentioned
    strict, _ = amber.score_amber(records, data, text, similarity, threshold=0.95)
    assert strict["counters"]["chair_score"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None or importlib.util.find_spec("en_core_web_lg") is None,
    reason="spaCy with en_core_web_lg is not installed (python -m spacy download en_core_web_lg)",
)
def test_spacy_similarity(amber_dir, nltk_data):
    similarity = amber.spacy_similarity("en_core_web_lg")
    assert similarity("dog", "dog") > 0.99 and similarity("dog", "puppy") > similarity("dog", "carpet")


def test_bad_ids_and_annotations_are_named(amber_dir, nltk_data):
    text = text_config(nltk_data)
    data = amber.load_amber(amber_dir)
    with pytest.raises(ValueError, match="AMBER id 4: annotations\\[3\\] is not its generative entry"):
        amber.score_amber([{"id": 4, "response": "x"}], data, text)
    with pytest.raises(ValueError, match="AMBER id 9 is outside 1..4"):
        amber.score_amber([{"id": 9, "response": "x"}], data, text)
    (amber_dir / "relation.json").write_text(json.dumps({"dog": []}))
    with pytest.raises(ValueError, match="AMBER id 1: truth object 'grass' is not in relation.json"):
        amber.score_amber([{"id": 1, "response": "A dog."}], amber.load_amber(amber_dir), text)
    (amber_dir / "metrics.txt").write_text("chair_num=abc\n")
    with pytest.raises(ValueError, match="metrics.txt:1: counter value 'abc' is not a number"):
        amber.load_amber(amber_dir)


def test_generative_queries_only(amber_dir):
    items = read_items("amber", {"queries": str(amber_dir / "query" / "query_all.json"), "images": "/imgs"})
    assert [it.id for it in items] == [1, 2, 3]  # id 1005 is discriminative (upstream skips > 1004)
    assert items[0].image == Path("/imgs/AMBER_1.jpg") and items[0].question == "Describe this image."
