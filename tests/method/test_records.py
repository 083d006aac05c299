"""Upstream formats, record-level problems, image-path safety, the rejected-context draw."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from mcmdpo.method.data.records import (
    UnsafePath,
    check_context_pool,
    count_records,
    detect_format,
    load_records,
    rejected_context_position,
    resolve_image,
)
from tests.helpers.records import upstream_draw

SAMPLES = Path("/work/shared/data/altext-samples")
Q = "Given an image and context, generate alt-text for the image.\nContext:\n"


def texts(i: int) -> dict[str, str]:
    return {"question": f"{Q}post {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


def test_json_list_with_top_level_and_text_string_fields(tmp_path):
    records = [
        {"idx": 10, "image": {"path": "a.jpg"}, **texts(0)},  # Pinterest: top level (+ text)
        {"idx": 11, "image": {"path": "b.jpg"}, "text": json.dumps(texts(1))},  # Twitter: text only
        {"idx": 12, "image_path": "c.jpg", **texts(99), "text": json.dumps(texts(2))},  # text wins
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records, indent=2))
    got = load_records(path)
    assert detect_format(path) == "json" and count_records(path) == 3
    assert [(r.position, r.id, r.image, r.problem) for r in got] == [
        (0, 10, "a.jpg", None),
        (1, 11, "b.jpg", None),
        (2, 12, "c.jpg", None),
    ]
    assert [(r.question, r.chosen, r.rejected) for r in got] == [tuple(texts(i).values()) for i in range(3)]
    assert [r.text_disagrees for r in got] == [(), (), ("question", "chosen", "rejected")]


def test_jsonl_test_split_with_a_malformed_line(tmp_path):
    path = tmp_path / "test.json"  # upstream test files are JSONL named .json
    lines = [json.dumps({"image_path": "a.jpg", "question": "q", "chosen": "c", "idx": 1}), "{not json", ""]
    lines.append(json.dumps({"image_path": "b.jpg", "question": "q2", "chosen": "c2", "idx": 2}))
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "jsonl"
    got = load_records(path, split="test")
    assert [r.problem and r.problem[0] for r in got] == [None, "malformed_json", None]
    assert "line 2" in got[1].problem[1] and got[2].position == 2 and got[2].id == 2
    assert load_records(path, split="train")[0].problem == ("missing_field", "missing rejected")


def test_record_level_problems(tmp_path):
    raw = [
        {"idx": 1, "image": {"path": "a.jpg"}, **texts(1)},
        {"idx": 2, "image": {"path": "a.jpg"}, **{**texts(2), "chosen": "  "}},
        {"idx": 3, "image": {"path": "a.jpg"}, "question": "q", "chosen": "c"},
        {"idx": 4, "image": {"path": "a.jpg"}, "text": "{broken"},
        {"idx": 1, "image": {"path": "b.jpg"}, **texts(5)},
        {"image": {"path": "c.jpg"}, **texts(6)},
        {"idx": 7, **texts(7)},
        {"idx": 8, "image": {"path": "a.jpg"}, **{**texts(8), "rejected": 3}},
        ["not", "a", "record"],
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(raw))
    got = load_records(path)
    assert [r.problem and r.problem[0] for r in got] == [
        None,
        "empty_text",
        "missing_field",
        "malformed_json",
        "duplicate_id",
        None,
        "missing_field",
        "missing_field",
        "not_a_record",
    ]
    assert got[4].problem[1] == "id 1 first used by record 1"
    assert got[5].id == 5  # no idx: the position
    assert "image.path" in got[6].problem[1] and "rejected" in got[7].problem[1]


def test_parquet_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"idx": i, "image_path": f"{i}.jpg", **texts(i)} for i in range(4)]
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    got = load_records(path)
    assert detect_format(path) == "parquet" and count_records(path) == 4
    assert [(r.id, r.image, r.chosen, r.problem) for r in got] == [
        (i, f"{i}.jpg", f"good {i}", None) for i in range(4)
    ]
    assert not list(tmp_path.glob("**/cache-*.arrow"))  # nothing cached next to the source


def test_parquet_with_embedded_image_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"idx": 0, "image": {"bytes": b"\x89PNG fake", "path": "x.png"}, **texts(0)}]
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    (record,) = load_records(path)
    assert record.image_bytes == b"\x89PNG fake" and record.image == "x.png" and record.problem is None


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="upstream sample files not present")
@pytest.mark.parametrize("platform", ["twitter", "pinterest"])
def test_upstream_sample_files_parse_cleanly(platform):
    for split in ("train", "test"):
        path = SAMPLES / platform / f"{platform}_{split}.json"
        records = load_records(path, split=split)
        assert len(records) == 10 and all(r.problem is None for r in records), [r.problem for r in records]
        root = SAMPLES / platform / "image" / f"{platform}_{split}"
        assert all(resolve_image(root, r.image).is_file() for r in records)
        assert all("context:" in r.question.lower() for r in records)


def test_image_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "escape.jpg")
    os.symlink(root / "sub" / "a.jpg", root / "inside.jpg")
    os.symlink(root, tmp_path / "linked-root")
    assert resolve_image(root, "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()
    assert resolve_image(root, "inside.jpg") == (root / "sub" / "a.jpg").resolve()
    assert resolve_image(tmp_path / "linked-root", "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()
    assert resolve_image(root, "missing.jpg") == root.resolve() / "missing.jpg"  # missing: decoding says so
    for bad in (
        "../secret.jpg",
        "sub/../../secret.jpg",
        str(tmp_path / "secret.jpg"),
        "/etc/passwd",
        "escape.jpg",
        "",
    ):
        with pytest.raises(UnsafePath):
            resolve_image(root, bad)


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_rejected_context_reproduces_the_upstream_seeded_draw(n):
    state = random.getstate()
    got = [rejected_context_position(i, n) for i in range(min(n, 200))]
    assert random.getstate() == state  # the global state is untouched
    assert got == [upstream_draw(i, n) for i in range(min(n, 200))]
    assert all(j != i and 0 <= j < n for i, j in enumerate(got))


def test_rejected_context_skips_records_without_a_question():
    usable = [True] * 10
    usable[upstream_draw(4, 10)] = False
    j = rejected_context_position(4, 10, usable)
    assert usable[j] and j != 4
    check_context_pool([True, True])
    with pytest.raises(ValueError):
        check_context_pool([True, False, False])
    with pytest.raises(ValueError):
        rejected_context_position(0, 1)
