"""Object HalBench CHAIR on hand-made COCO 2014 files in their exact formats, checked by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcmdpo.evaluation.benchmarks import read_items
from mcmdpo.evaluation.metrics import chair, nlp
from tests.helpers.judge import JudgeServer, client, completion
from tests.helpers.objhal import png_b64, predictions
from tests.helpers.wordnet import text_config


def check_hand_values(metrics: dict[str, Any]) -> None:
    # responses with objects: 1, 2, 3, 5; hallucinating: 1, 3, 5
    assert metrics["response_level"] == pytest.approx(3 / 4 * 100)  # paper: CHAIRs_refine
    assert metrics["response_level_all"] == pytest.approx(3 / 5 * 100)
    # mentions 4 + 1 + 1 + 0 + 3 = 9, hallucinated 1 + 0 + 1 + 0 + 2 = 4
    assert metrics["mention_level"] == pytest.approx(4 / 9 * 100)
    # correct classes 2 + 1 + 0 + 0 + 1 over ground-truth classes 2 per image
    assert metrics["recall"] == pytest.approx(4 / 10 * 100)
    assert metrics["mean_length"] == pytest.approx((11 + 4 + 5 + 2 + 7) / 5)
    assert (metrics["mentions"], metrics["hallucinated_mentions"], metrics["responses_with_objects"]) == (
        9,
        4,
        4,
    )


def test_chair_nltk_extractor_matches_hand_computed_values(objhal, nltk_data, tmp_path):
    text = text_config(nltk_data)
    nlp.use_data_dirs(text.data_dirs)
    syn = chair.load_synonyms(objhal["syn"])
    records = predictions(objhal)
    gt = chair.ground_truth([r["image_id"] for r in records], objhal["coco"], syn, text, tmp_path / "cache")
    assert gt == {1: {"person", "dog"}, 2: {"cat", "chair"}, 3: {"dining table", "hot dog"}}
    metrics, samples = chair.score_chair(records, gt, syn, text)
    check_hand_values(metrics)
    assert samples[0]["hallucinated"] == [["cat", "cat"]]
    assert samples[2]["mentions"] == [["toilet", "toilet"]]
    assert samples[4]["mentions"] == [["puppy", "dog"], ["seat", "chair"], ["people", "person"]]
    for name in chair.COCO_FILES:  # the second call reads the cached ground truth
        (objhal["coco"] / name).write_text(json.dumps({"annotations": [], "categories": []}))
    assert chair.ground_truth([1, 2, 3], objhal["coco"], syn, text, tmp_path / "cache") != gt  # files changed


def test_ground_truth_cache_skips_the_big_files(objhal, nltk_data, tmp_path):
    text = text_config(nltk_data)
    nlp.use_data_dirs(text.data_dirs)
    syn = chair.load_synonyms(objhal["syn"])
    first = chair.ground_truth([1, 2], objhal["coco"], syn, text, tmp_path / "cache")
    (cache,) = (tmp_path / "cache").iterdir()
    cache.write_text(json.dumps({"1": ["marker"], "2": []}))  # proves the cache is what gets read
    assert chair.ground_truth([2, 1], objhal["coco"], syn, text, tmp_path / "cache") == {
        1: {"marker"},
        2: set(),
    }
    assert first[1] == {"person", "dog"}


def test_chair_llm_extractor_through_the_judge(objhal, nltk_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MCMDPO_TEST_JUDGE_KEY", "k")
    objects = {
        "A man and a woman walk two dogs past a cat.": '["man", "woman", "dogs", "cat"]',
        "A kitten is sleeping.": 'Objects:\n["kitten"]',
        "The toilet seat is up.": '["toilet seat"]',
        "A puppy on a seat near people.": '["fluffy puppy", "seat", "people"]',
    }

    def behave(body: dict[str, Any], attempt: int) -> Any:
        assert body["messages"][0]["role"] == "system"
        answer = (
            body["messages"][0]["content"].split("[Start of Examiner's Answer]\n\n")[1].split("\n\n[End")[0]
        )
        return 200, {}, completion(objects[answer]), 0

    text = text_config(nltk_data)
    nlp.use_data_dirs(text.data_dirs)
    syn = chair.load_synonyms(objhal["syn"])
    records = predictions(objhal)
    with JudgeServer(behave) as server:
        extracted = chair.llm_extract(records, client(server.url, None), syn, text)
        assert len(server.requests) == 4  # "Nothing here." has <= 3 words: not asked (upstream)
    assert extracted[3] == [] and extracted[0] == ["man", "woman", "dog", "cat"]
    assert extracted[4] == ["puppy", "seat", "people"]  # "fluffy" has no WordNet noun sense
    gt = chair.ground_truth([1, 2, 3], objhal["coco"], syn, text)
    metrics, _ = chair.score_chair(records, gt, syn, text, extracted)
    check_hand_values({**metrics, "mean_length": (11 + 4 + 5 + 2 + 7) / 5})


def test_bad_extractor_reply_and_bad_files_are_named(objhal, nltk_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MCMDPO_TEST_JUDGE_KEY", "k")
    syn = chair.load_synonyms(objhal["syn"])
    records = predictions(objhal)[:1]
    reply = completion("I see a man.")
    with (
        JudgeServer(lambda body, attempt: (200, {}, reply, 0)) as server,
        pytest.raises(ValueError, match="objhal item 0: extractor reply is not a JSON list"),
    ):
        chair.llm_extract(records, client(server.url, None), syn, text_config(nltk_data))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image_id": "x1", "question": "q", "image": png_b64((0, 0, 0))}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 1: image_id must be a COCO image id"):
        read_items("objhal", {"file": str(bad)})
    with pytest.raises(
        FileNotFoundError, match="instances_train2014.json: COCO 2014 annotation file not found"
    ):
        chair.ground_truth([1], tmp_path, syn, text_config(nltk_data))
