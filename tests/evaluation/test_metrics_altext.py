"""Alt-text metrics: the `paper` protocol against hand-computed values, `coco` against pycocoevalcap."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from mcmdpo.evaluation.metrics import altext, nlp

SAMPLES = Path("/work/shared/data/altext-samples")

# Three records with disjoint vocabularies (so every CIDEr n-gram has document frequency <= 1).
RECORDS = [
    {"idx": 10, "chosen": "a red bus waits near town", "response": "a red bus waits today"},
    {
        "idx": 11,
        "chosen": "two green kites fly over hills",
        "response": "Assistant: two green kites fly over hills",
    },
    {"idx": 12, "chosen": "one small boat sails home", "response": "  "},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def treebank(data_dir: str) -> nlp.NltkSpec:
    return nlp.NltkSpec(tokenizer="treebank", data_dirs=(data_dir,))


def hand_values() -> dict[str, list[float]]:
    """Per-record values computed from the metric definitions (see the comments)."""
    bp = math.exp(1 - 6 / 5)  # brevity penalty: hypothesis 5 tokens, reference 6
    # record 10: 4-gram precision 1/2, unigram 4/5; cumulative: geometric mean of 4/5, 3/4, 2/3, 1/2
    bleu4 = [0.5 * bp, 1.0, 0.0]
    bleu1 = [0.8 * bp, 1.0, 0.0]
    cumulative = [(0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25 * bp, 1.0, 0.0]
    # METEOR (alpha 0.9, beta 3, gamma 0.5): m matches in one chunk -> penalty 0.5 / m^3
    p, r = 4 / 5, 4 / 6
    meteor = [p * r / (0.9 * p + 0.1 * r) * (1 - 0.5 / 4**3), 1 - 0.5 / 6**3, 0.0]
    # ROUGE-L F of the rouge package: 2 P R / (P + R + 1e-8) with LCS 4
    rouge = [2 * p * r / (p + r + 1e-8), 2 / (2 + 1e-8), 0.0]  # empty response: 0 (upstream rule)
    # CIDEr-D: uniform idf, cos per n = common / sqrt(h * r), Gaussian penalty on the bigram-count
    # difference (4 vs 5 bigrams -> delta -1, sigma 6), mean over n = 1..4, x10
    cos = [4 / math.sqrt(5 * 6), 3 / math.sqrt(4 * 5), 2 / math.sqrt(3 * 4), 1 / math.sqrt(2 * 3)]
    cider = [10 * sum(cos) / 4 * math.exp(-1 / 72), 10.0, 0.0]
    edit = [2, 0, 5]
    return {"bleu_4": bleu4, "bleu_1": bleu1, "cumulative_bleu_4": cumulative, "meteor": meteor,
            "rouge_l": rouge, "cider": cider, "edit_distance": edit}  # fmt: skip


def test_paper_protocol_matches_hand_computed_values(tmp_path, nltk_data):
    pred = write_jsonl(tmp_path / "pred.jsonl", RECORDS)
    doc = altext.score_file(pred, "paper", tmp_path / "m.json", treebank(nltk_data))
    expected = hand_values()
    rows = [json.loads(line) for line in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [10, 11, 12]
    for key, values in expected.items():
        got = [r["paper"][key] for r in rows]
        assert got == pytest.approx(values, abs=1e-9), key
    paper = doc["metrics"]["paper"]
    for key in ("bleu_4", "bleu_1", "cumulative_bleu_4", "meteor", "rouge_l", "cider"):
        mean = sum(expected[key]) / 3
        assert paper[key] == round(mean, 5) * 100, key  # upstream: round(mean, 5) * 100
        assert paper["unrounded"][key] == pytest.approx(mean * 100, abs=1e-9)
    assert paper["edit_distance"] == round(7 / 3, 3) and paper["num_samples"] == 3
    assert doc["deviations"] == [nlp.NltkSpec(tokenizer="treebank").deviations()[0]]
    assert json.loads((tmp_path / "m.json").read_text()) == doc
    assert doc["versions"]["nltk"] and doc["samples"] == "m.samples.jsonl"


def test_rouge_package_errors_count_as_zero_like_upstream(tmp_path, nltk_data):
    records = [
        {"id": 1, "chosen": "a dog runs", "response": "..."},
        {"id": 2, "chosen": "x y", "response": "x y"},
    ]
    result = altext.score_paper(altext.pairs_from_records(records), treebank(nltk_data))
    assert result.samples[0]["rouge_l"] == 0.0 and "at least 1 sentence" in result.samples[0]["rouge_error"]
    assert result.aggregate["rouge_errors"] == 1 and result.aggregate["num_samples"] == 2


def test_treebank_mode_differs_only_at_sentence_ends(nltk_data):
    text = "A dog runs. The cat sleeps."
    assert nlp.word_tokenize(text, nlp.NltkSpec(tokenizer="treebank")) == [
        "A", "dog", "runs.", "The", "cat", "sleeps", "."
    ]  # fmt: skip
    if nlp.find_resource(nlp.PUNKT) is None:
        pytest.skip("punkt_tab not installed: the punkt tokenizer path cannot run here")
    assert nlp.word_tokenize(text, nlp.NltkSpec()) == ["A", "dog", "runs", ".", "The", "cat", "sleeps", "."]


def test_paper_protocol_with_real_punkt(tmp_path, nltk_data):
    nlp.use_data_dirs([nltk_data])
    if nlp.find_resource(nlp.PUNKT) is None:
        pytest.skip("NLTK punkt_tab is not installed (python -m nltk.downloader punkt_tab)")
    pred = write_jsonl(tmp_path / "pred.jsonl", RECORDS)
    doc = altext.score_file(pred, "paper", tmp_path / "m.json", nlp.NltkSpec(data_dirs=(nltk_data,)))
    assert doc["deviations"] == []
    assert doc["metrics"]["paper"]["bleu_4"] == round(sum(hand_values()["bleu_4"]) / 3, 5) * 100


def test_missing_punkt_is_a_clear_error(tmp_path, nltk_data):
    if nlp.find_resource(nlp.PUNKT) is not None:
        pytest.skip("punkt_tab is installed here")
    pred = write_jsonl(tmp_path / "pred.jsonl", RECORDS)
    with pytest.raises(nlp.MissingResource, match="punkt_tab.*python -m nltk.downloader"):
        altext.score_file(pred, "paper", tmp_path / "m.json", nlp.NltkSpec(data_dirs=(nltk_data,)))
    assert not (tmp_path / "m.json").exists()


def test_bad_predictions_name_file_and_line(tmp_path):
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"idx": 1, "chosen": "a"}])
    with pytest.raises(ValueError, match=r"pred.jsonl:1: missing field\(s\) response"):
        altext.score_file(pred, "paper", tmp_path / "m.json")
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"idx": 1, "chosen": "a", "response": None}])
    with pytest.raises(ValueError, match=r"record 1 \(id=1\): field 'response' must be a string"):
        altext.score_file(pred, "paper", tmp_path / "m.json")
    with pytest.raises(ValueError, match="unknown alt-text protocol"):
        altext.score_pairs([], ["bleu"])


@pytest.mark.skipif(shutil.which("java") is None, reason="the coco protocol needs Java")
def test_coco_protocol_equals_pycocoevalcap_called_directly(tmp_path):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    records = list(RECORDS)
    for platform in ("pinterest", "twitter"):
        for i, line in enumerate((SAMPLES / platform / f"{platform}_test.json").read_text().splitlines()):
            rec = json.loads(line)
            words = rec["chosen"].split()
            rec["response"] = " ".join(words[: max(1, len(words) - i % 4)]) + (", Really!" if i % 3 else "")
            records.append(rec)
    pred = write_jsonl(tmp_path / "pred.jsonl", records)
    doc = altext.score_file(pred, "coco", tmp_path / "m.json")
    ours = doc["metrics"]["coco"]
    gts = {i: [{"caption": r["chosen"]}] for i, r in enumerate(records)}
    res = {i: [{"caption": altext.strip_assistant(r["response"])}] for i, r in enumerate(records)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, meteor_each = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    assert ours["num_samples"] == len(records)
    assert ours["bleu_4"] == pytest.approx(bleu[3] * 100, abs=1e-9)
    assert ours["meteor"] == pytest.approx(meteor * 100, abs=1e-9)
    assert ours["rouge_l"] == pytest.approx(rouge * 100, abs=1e-9)
    assert ours["cider"] == pytest.approx(cider * 100, abs=1e-9)
    rows = [json.loads(line) for line in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    assert [r["coco"]["meteor"] for r in rows] == pytest.approx(meteor_each, abs=1e-12)
    assert [r["coco"]["cider"] for r in rows] == pytest.approx(list(cider_each), abs=1e-12)
    assert rows[1]["coco"]["cider"] == pytest.approx(10.0)  # identical after "Assistant:" is stripped
