"""Curation library: filters, signatures, clustering, prompts/parsers, the split, the LLM steps.

Expected values come from independent computations (explicit DCT sums, Python-set Jaccard, an
all-pairs comparison, hashlib) or from the test's own data (tests/helpers/curate.py).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mcmdpo.curate import dedupe, filters, prompts, signatures
from mcmdpo.curate.duplicates import find_duplicates
from mcmdpo.curate.pipeline import split_of
from mcmdpo.curate.raw import count_raw, read_shard, shard_range
from mcmdpo.curate.scan import Scanner, write_scan
from mcmdpo.curate.spec import CurateSpec, SplitSpec
from mcmdpo.method.data.records import BadRecord
from tests.helpers import curate as fx


def spec(raw: Path, images: Path | None, **kw) -> CurateSpec:
    llm = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": ""}
    return CurateSpec.model_validate(
        {"raw_file": str(raw), "images": images and str(images), "llm": llm, **kw}
    )


def test_text_filters():
    assert filters.has_hashtag("a dog #cute") and filters.has_hashtag("#tbt a photo")
    assert not filters.has_hashtag("written in C# and F#") and not filters.has_hashtag("it&#39;s a cat")
    assert filters.word_count("  two   words ") == 2
    english, german = fx.CONTEXTS[0], "Wir sind heute mit dem Fahrrad zum See gefahren und haben gebadet."
    assert filters.language_prob(english, "en") > 0.9 > filters.language_prob(german, "en")
    rules = CurateSpec.model_fields["filters"].default
    assert filters.text_filter(english, "A sunny beach #summer and palm trees", rules) == "hashtag"
    assert filters.text_filter(english, "Red bowl on table", rules) == "min_words"
    assert filters.text_filter(german, fx.ALTS[0], rules) == "language"
    assert filters.text_filter(english, fx.ALTS[0], rules) is None


@pytest.mark.parametrize(("fmt", "animated"), [("GIF", True), ("PNG", True), ("WEBP", True), ("PNG", False)])
def test_non_static_images(fmt, animated):
    frames = [fx.pattern(1, 32), fx.pattern(2, 32)]
    out = io.BytesIO()
    extra = {"save_all": True, "append_images": frames[1:], "duration": 50} if animated else {}
    frames[0].save(out, format=fmt, **extra)
    assert filters.is_non_static(out.getvalue()) == (animated, fmt)


def test_phash_matches_explicit_dct_and_is_stable_under_brightness():
    image = fx.pattern(5)
    pixels = signatures.phash_pixels(image)
    n = np.arange(32)
    ref = np.empty((8, 8))
    for u in range(8):  # the DCT-II as a double sum, written out
        for v in range(8):
            cu = np.cos(np.pi * u * (2 * n + 1) / 64)[:, None]
            cv = np.cos(np.pi * v * (2 * n + 1) / 64)[None, :]
            ref[u, v] = (pixels * cu * cv).sum()
    bits = "".join("1" if b else "0" for b in (ref > np.median(ref)).ravel())
    assert signatures.phash(image) == int(bits, 2)
    bright = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + 8, 0, 255).astype(np.uint8))
    assert bin(signatures.phash(image) ^ signatures.phash(bright)).count("1") <= 2


def test_minhash_estimates_jaccard_of_char_shingles():
    a = "The quick brown fox jumps over the lazy dog near the river bank this morning"
    b = "The quick brown fox jumps over the lazy cat near the river bank this morning!"

    def shingles(text: str) -> set[str]:
        t = " ".join(text.lower().split())
        return {t[i : i + 5] for i in range(len(t) - 4)}

    truth = len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))
    estimate = (signatures.minhash(a) == signatures.minhash(b)).mean()
    assert abs(estimate - truth) < 3 * np.sqrt(truth * (1 - truth) / signatures.NUM_PERM) + 0.02


def test_bucketed_clusters_equal_all_pairs():
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2)
    for _ in range(300):  # plant near copies at later positions, 0..5 bits flipped
        src, dst = sorted(rng.choice(3000, 2, replace=False))
        flips = rng.choice(64, rng.integers(0, 6), replace=False)
        hashes[dst] = hashes[src] ^ np.uint64(sum(1 << int(f) for f in flips))
    for threshold in (0, 3, 4):
        fast = dedupe.cluster_hashes(hashes, threshold)
        slow = dedupe.cluster_all_pairs(hashes, threshold)
        assert np.array_equal(fast.label, slow.label) and len(fast.duplicates) > 0
        assert all(kept < min(dropped) for kept, dropped in fast.groups())  # the first record is kept


def test_text_clusters_keep_the_first_post():
    texts = [fx.CONTEXTS[i] for i in range(6)] + [fx.CONTEXTS[2] + "!!", fx.CONTEXTS[4].upper()]
    found = dedupe.cluster_minhashes(np.stack([signatures.minhash(t) for t in texts]), 0.8)
    assert found.groups() == [(2, [6]), (4, [7])]


PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "docs" / "paper.md"


def appendix_prompts() -> tuple[str, str]:
    """The two prompts of the paper's appendix B, as in ``shared/docs/paper.md`` (markdown line breaks
    (two trailing spaces) are the prompts' newlines; ``{alt\\_text}`` is an escaped underscore)."""
    if not PAPER_MD.is_file():
        pytest.skip(f"the paper's text is not at {PAPER_MD} (shared/docs/paper.md beside the repository)")
    text = PAPER_MD.read_text().split("## B Prompt for Data Construction", 1)[1].split("## C ", 1)[0]
    blocks = [b for b in text.split("\n\n") if "  \n" in b]
    grammar, rejected = ("\n".join(line.rstrip() for line in b.splitlines()) for b in blocks)
    return grammar, rejected.replace("\\_", "_")


def test_prompts_are_the_papers_verbatim():
    grammar, rejected = appendix_prompts()
    assert grammar == prompts.GRAMMAR_PROMPT.format(text="{alt-text}")
    assert rejected == prompts.REJECTED_PROMPT
    assert prompts.grammar_messages("teh dog")[0]["content"] == grammar.replace("{alt-text}", "teh dog")


GRAMMAR_REPLIES = {  # reply -> (text, errors, parsed) for the original "t"
    "False": ("t", False, True),
    "False.": ("t", False, True),
    "'False'": ("t", False, True),
    "**False**": ("t", False, True),
    "Answer: false": ("t", False, True),
    "(1) False": ("t", False, True),
    'True\n"Corrected text."': ("Corrected text.", True, True),  # the paper's format
    'True\n"the fixed text"': ("the fixed text", True, True),
    "**True**\nfixed": ("fixed", True, True),
    'True. "Fixed."': ("Fixed.", True, True),
    "'True'\n“Fixed.”": ("Fixed.", True, True),
    "  True  \n\n  Fixed text  ": ("Fixed text", True, True),
    'Answer: True\nCorrected text: "Fixed."': ("Fixed.", True, True),
    '(1) True\n(2) "Fixed."': ("Fixed.", True, True),
    'Final judgment: True, "Fixed."': ("Fixed.", True, True),
    'True\n"He said "hi"."\nI added the article.': ('He said "hi".', True, True),
    "True": ("t", False, False),  # no corrected text: keep the original, unparsed
    "Maybe?": ("t", False, False),
    "Truely so": ("t", False, False),
}


def test_parsers_read_the_papers_reply_format_and_its_variants():
    for reply, expected in GRAMMAR_REPLIES.items():
        assert prompts.parse_grammar(reply, "t") == prompts.GrammarVerdict(*expected), reply
    lines = prompts.verify_messages("ctx", "one\ntwo", "three")[0]["content"].splitlines()
    assert "Alt-text A: one two" in lines and "Alt-text B: three" in lines
    choices = ["A", "B.", "Answer: B", "Alt-text A is better", "(B)", "ABBA", "Both", "a"]
    assert [prompts.parse_choice(c) for c in choices] == ["A", "B", "B", "A", "B", None, None, None]
    assert prompts.parse_rejected('"Suboptimal alt-text: a dog"') == "a dog"


def test_split_is_hashed_deterministic_and_follows_fractions():
    split = SplitSpec(sft=0.7, preference=0.2, test=0.1)
    ids = [f"post-{i}" for i in range(20000)] + list(range(2000))
    got = [split_of(i, split) for i in ids]
    assert got == [fx.split_by_hash(i, "", (0.7, 0.2, 0.1)) for i in ids]
    share = Counter(got)
    assert abs(share["sft"] / len(ids) - 0.7) < 0.01 and abs(share["test"] / len(ids) - 0.1) < 0.01
    salted = SplitSpec(sft=0.7, preference=0.2, test=0.1, salt="x")
    assert sum(split_of(i, salted) != g for i, g in zip(ids, got, strict=True)) > 1000
    with pytest.raises(ValueError, match="must be 1"):
        SplitSpec(sft=0.5, preference=0.2, test=0.1)


def _scan_all(raw: Path, images: Path, out: Path, shards: int, **kw) -> tuple[list[Path], CurateSpec]:
    s = spec(raw, images, on_bad_record="skip", shards=shards, **kw)
    dirs = []
    for k in range(shards):
        positions = shard_range(count_raw(raw), k, shards)
        folder = out / f"scan{shards}-{k}"
        folder.mkdir(parents=True)
        write_scan(Scanner(s, folder).scan(positions), folder, positions)
        dirs.append(folder)
    return dirs, s


def test_scan_counts_and_dedupe_is_exact_across_shards(tmp_path):
    raw, images, good = fx.make_raw(tmp_path)
    one, s = _scan_all(raw, images, tmp_path, 1)
    three, _ = _scan_all(raw, images, tmp_path, 3)
    report = json.loads((one[0] / "scan.json").read_text())
    assert report["input"] == count_raw(raw) == 28
    assert report["dropped"] == {k: fx.EXPECTED_STEPS[k] for k in report["dropped"]}
    assert report["bad_reasons"] == {
        "malformed_json": 1,
        "missing_field": 1,
        "truncated_image": 1,
        "missing_image": 1,
        "unsafe_path": 1,
    }
    merged = [json.loads((d / "scan.json").read_text()) for d in three]
    assert sum(sum(m["dropped"].values()) for m in merged) == sum(report["dropped"].values())
    a, b = find_duplicates(one, s), find_duplicates(three, s)
    assert a == b and a["counts"] == {k: fx.EXPECTED_STEPS[k] for k in a["counts"]}
    positions = {r["id"]: i for i, r in enumerate(good)}
    assert a["clusters"]["image"] == [
        {"kept": {"position": 6, "id": good[6]["id"]}, "dropped": [{"position": 26, "id": "near-image"}]}
    ]
    assert a["clusters"]["text"][0]["kept"]["position"] == 7 and positions[good[7]["id"]] == 7
    assert s.dedupe.text_on == "alt_text+context"  # the re-post of record 7: post text and alt-text
    with pytest.raises(BadRecord, match=r"raw.jsonl: record 21 \(id='x-20'\): truncated_image"):
        Scanner(spec(raw, images), tmp_path / "fail").scan(range(28))


def test_text_duplicates_compare_what_makes_a_sample(tmp_path):
    """Same post text, different image and alt-text: kept by default (the paper clusters by image),
    dropped when only the post text is compared; the same alt-text alone: dropped with text_on =
    "alt_text"."""
    images = tmp_path / "images"
    images.mkdir()
    rows = [(fx.CONTEXTS[0], fx.ALTS[0]), (fx.CONTEXTS[0], fx.ALTS[1]), (fx.CONTEXTS[2], fx.ALTS[0])]
    for i in range(len(rows)):
        fx.pattern(10 + 30 * i).save(images / f"{i}.png")
    lines = [
        json.dumps({"id": i, "image": f"{i}.png", "context": c, "alt_text": a})
        for i, (c, a) in enumerate(rows)
    ]
    (tmp_path / "raw.jsonl").write_text("\n".join(lines) + "\n")
    dropped = {}
    for key in ("alt_text+context", "context", "alt_text"):
        s = spec(tmp_path / "raw.jsonl", images, dedupe={"text_on": key})
        folder = tmp_path / key
        write_scan(Scanner(s, folder).scan(range(3)), folder, range(3))
        dropped[key] = find_duplicates([folder], s)["dropped"]
    assert dropped == {"alt_text+context": [], "context": [1], "alt_text": [2]}


def test_parquet_with_image_bytes_in_row_groups(tmp_path):
    rows = []
    for i in range(5):
        data = io.BytesIO()
        fx.pattern(i).save(data, format="PNG")
        rows.append(
            {
                "id": i,
                "image": {"bytes": data.getvalue(), "path": None},
                "context": fx.CONTEXTS[i],
                "alt_text": fx.ALTS[i],
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "raw.parquet", row_group_size=2)
    assert count_raw(tmp_path / "raw.parquet") == 5
    assert [r.id for r in read_shard(tmp_path / "raw.parquet", range(1, 4))] == [1, 2, 3]
    result = Scanner(spec(tmp_path / "raw.parquet", None), tmp_path / "out").scan(range(1, 4))
    assert [r["image"] for r in result.records] == [
        {"root": "scan", "path": f"images/{p:09d}.png"} for p in (1, 2, 3)
    ]
    assert (tmp_path / "out" / "images" / "000000002.png").read_bytes() == rows[2]["image"]["bytes"]


def test_reply_cache_shared_by_processes_torn_lines_ignored(tmp_path):
    from mcmdpo.llm import ReplyCache

    first, second = ReplyCache(tmp_path, "m/x"), ReplyCache(tmp_path, "m/x")  # two writers, one folder
    first.put("a" * 32, {"content": "one", "model": "served"})
    second.put("b" * 32, {"content": "two", "model": "served"})
    assert first.get("b" * 32) is None  # seen only after a refresh (at most every refresh_s on a miss)
    first.refresh()
    assert first.get("b" * 32)["content"] == "two" and second.get("a" * 32) is None
    files = sorted((tmp_path / "m_x").glob("*.jsonl"))
    assert len(files) == 2 and all(len(f.read_text().splitlines()) == 1 for f in files)
    with open(files[0], "a") as f:  # a writer killed mid-line
        f.write("c" * 32 + ' {"content": "torn')
    fresh = ReplyCache(tmp_path, "m/x")
    assert len(fresh) == 2 and fresh.get("c" * 32) is None and fresh.get("a" * 32)["content"] == "one"


def test_curate_recipe_validates_with_defaults_and_clear_errors(write_recipe, tmp_path):
    from mcmdpo.batch.plan import build_plan
    from mcmdpo.batch.recipe import RecipeError, load_recipe

    body = f"""
        [run]
        name = "c"
        output_root = "@RUNS@"
        [curate]
        raw_file = "{tmp_path}/raw.jsonl"
        shards = 3
        [curate.llm]
        model = "m"
        """
    plan = build_plan(load_recipe(write_recipe(body)))
    assert [(s.name, len(s.tasks)) for s in plan.stages] == [
        ("curate_scan", 3),
        ("curate_dedupe", 1),
        ("curate", 3),
        ("curate_split", 1),
    ]
    bad = body.replace(
        'model = "m"', 'model = "m"\n[curate.dedupe]\nclip_threshold = 0.9\n[curate.split]\nsft = 0.5'
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(bad.replace("shards = 3", "shard = 3")))
    text = str(err.value)
    assert "curate.shard" in text and "did you mean 'shards'" in text
    assert "clip_threshold" in text and "not implemented" in text and "must be 1" in text
