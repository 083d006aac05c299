"""Object HalBench's files, hand-made in their exact formats: COCO 2014 instances and captions, the
synonyms file, a JSONL of base64 images, and responses whose CHAIR values the tests compute by hand."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from mcmdpo.evaluation.benchmarks import read_items

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


def write_objhal(folder: Path) -> dict[str, Path]:
    """The COCO folder, the synonyms file and the benchmark file (one line per response) in ``folder``."""
    (folder / "syn.txt").write_text(SYNONYMS)
    lines = [
        {
            "image_id": image_id,
            "question": "Describe this image in detail.",
            "image": png_b64((i * 40, 10, 10)),
        }
        for i, (image_id, _) in enumerate(RESPONSES)
    ]
    (folder / "obj.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {
        "coco": write_coco(folder / "coco"),
        "syn": folder / "syn.txt",
        "file": folder / "obj.jsonl",
    }


def predictions(objhal: dict[str, Path]) -> list[dict[str, Any]]:
    """The benchmark file read back (checked) as prediction records answering with ``RESPONSES``."""
    items = read_items("objhal", {"file": str(objhal["file"])})
    assert [it.fields["image_id"] for it in items] == [r[0] for r in RESPONSES]
    assert Image.open(io.BytesIO(items[0].image)).size == (8, 6)  # base64 decoded to image bytes
    return [
        {"id": it.id, **it.fields, "response": text} for it, (_, text) in zip(items, RESPONSES, strict=True)
    ]
