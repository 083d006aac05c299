"""Object HalBench CHAIR on hand-made COCO 2014 files in their exact formats, checked by hand."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mcmdpo.evaluation.benchmarks import read_items
from mcmdpo.evaluation.metrics import chair, nlp
from tests.test_assets import nltk_data  # noqa: F401 - session fixture
from tests.test_judge import JudgeServer, client, completion

SYNONYMS = """person, girl, boy, man, woman, people, child
dog, puppy
cat, kitten
dining table, table
toilet
chair, seat
hot dog
car
"""
CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "animal", "id": 17, "name": "cat"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "furniture", "id": 67, "name": "dining table"},
]
# image 1: person + dog; image 2: cat (+ chair from its caption); image 3: table (+ hot dog from caption)
INSTANCES = {
    "train": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 1, "category_id": 18},
              {"id": 9, "image_id": 99, "category_id": 17}],
    "val": [{"id": 3, "image_id": 2, "category_id": 17}, {"id": 4, "image_id": 3, "category_id": 67}],
}  # fmt: skip
CAPTIONS = {
    "train": [{"id": 11, "image_id": 1, "caption": "A man walks his dog on a street."},
              {"id": 13, "image_id": 3, "caption": "Two hot dogs on a table."}],
    "val": [{"id": 12, "image_id": 2, "caption": "A kitten sleeps on a chair."}],
}  # fmt: skip
RESPONSES = [
    (1, "A man and a woman walk two dogs past a cat."),  # person x2, dog ok; cat hallucinated
    (2, "A kitten is sleeping."),  # cat ok
    (3, "The toilet seat is up."),  # "toilet seat" -> toilet: hallucinated
    (1, "Nothing here."),  # no COCO object
    (2, "Assistant: A puppy on a seat near people."),  # dog, person hallucinated; seat -> chair ok
]


def write_coco(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = {"info": {"description": "test"}, "licenses": [], "images": []}
    for split in ("train", "val"):
        inst = {**info, "categories": CATEGORIES, "annotations": INSTANCES[split]}
        (folder / f"instances_{split}2014.json").write_text(json.dumps(inst))
        (folder / f"captions_{split}2014.json").write_text(
            json.dumps({**info, "annotations": CAPTIONS[split]})
        )
    return folder


def png_b64(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def objhal(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "syn.txt").write_text(SYNONYMS)
    lines = [
        {
            "image_id": image_id,
            "question": "Describe this image in detail.",
            "image": png_b64((i * 40, 10, 10)),
        }
        for i, (image_id, _) in enumerate(RESPONSES)
    ]
    (tmp_path / "obj.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {
        "coco": write_coco(tmp_path / "coco"),
        "syn": tmp_path / "syn.txt",
        "file": tmp_path / "obj.jsonl",
    }


def predictions(objhal: dict[str, Path]) -> list[dict[str, Any]]:
    items = read_items("objhal", {"file": str(objhal["file"])})
    assert [it.fields["image_id"] for it in items] == [r[0] for r in RESPONSES]
    assert Image.open(io.BytesIO(items[0].image)).size == (8, 6)  # base64 decoded to image bytes
    return [
        {"id": it.id, **it.fields, "response": text} for it, (_, text) in zip(items, RESPONSES, strict=True)
    ]


def text_config(data_dir: str) -> nlp.NltkSpec:
    return nlp.NltkSpec(tokenizer="treebank", tagger="wordnet", data_dirs=(data_dir,))


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


def test_chair_nltk_extractor_matches_hand_computed_values(objhal, nltk_data, tmp_path):  # noqa: F811
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


def test_ground_truth_cache_skips_the_big_files(objhal, nltk_data, tmp_path):  # noqa: F811
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


def test_chair_llm_extractor_through_the_judge(objhal, nltk_data, tmp_path, monkeypatch):  # noqa: F811
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


def test_bad_extractor_reply_and_bad_files_are_named(objhal, nltk_data, tmp_path, monkeypatch):  # noqa: F811
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
