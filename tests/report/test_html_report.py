"""The HTML report (index.html, cases) and the human evaluation's files, statistics and errors (no browser:
tests/report/test_browser.py drives Chromium)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mcmdpo.report.annotation import prepare_study
from mcmdpo.report.humaneval import EXPORT_FORMAT, KEY, PAGES, StudyError
from mcmdpo.report.humaneval_results import collect_study, read_summary
from mcmdpo.report.outputs import write_report
from mcmdpo.report.pages import DATA_ID, embed_json
from mcmdpo.report.spec import ReportSpec
from mcmdpo.report.stats import fleiss_kappa
from tests.helpers.cases import LABELS, XSS, make_case_run

PAIRS = ["+MCM-DPO:+DPO", "+MCM-DPO:+SFT"]


def page_data(html: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{DATA_ID}">(.*?)</script>', html, re.S)
    assert match, "no data element"
    return json.loads(match.group(1))


def test_embedded_json_cannot_end_its_script_element():
    value = {"text": XSS + "<!-- & \u2028 </SCRIPT >", "nan": float("nan"), "list": [1.5, float("inf")]}
    text = embed_json(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == {"text": value["text"], "nan": None, "list": [1.5, None]}


def test_report_writes_a_self_contained_index_with_cases(tmp_path):
    run = make_case_run(tmp_path, n=12, special={(2, 3): XSS})
    out = write_report([run], tmp_path / "report", ReportSpec(resamples=100))
    html = (tmp_path / "report" / "index.html").read_text()
    assert (
        "index.html" in out.relative() and "<h2>Tables</h2>" in html and 'src="figures/bars_palt.png"' in html
    )
    assert not re.search(r'(src|href)="(https?:)?//', html), "nothing may load from the network"
    assert "<script>window" not in html and '<img src="x"' not in html  # the payload is inert JSON text
    (case,) = page_data(html)["cases"]
    assert [m["label"] for m in case["models"]] == LABELS and len(case["items"]) == 12
    assert case["metric"] == "paper.rouge_l" and "coco.cider" in case["metrics"]
    item = case["items"][3]
    assert item["outputs"][2]["text"] == XSS and item["context"] == "Post 3: look!"
    assert (tmp_path / "report" / item["image"]).is_file() and item["image"].startswith("cases/palt/")
    # the raw record comes back whole: fields shared by a file's records once per model, by the models'
    # records of an item once per item, the rest per output
    model = case["models"][2]
    raw = json.loads(Path(model["source"]).read_text().splitlines()[3])
    assert {**model["common"], **item["shared"], **item["outputs"][2]["record"]} == raw
    assert "question" in item["shared"] and "question" not in item["outputs"][2]["record"]
    samples = [
        json.loads(line) for line in (run / "score/t002palt/metrics/preference/palt.samples.jsonl").open()
    ]
    assert item["outputs"][2]["scores"]["paper.rouge_l"] == samples[3]["paper"]["rouge_l"]


def test_html_off_in_the_spec_and_on_the_command_line(tmp_path):
    from mcmdpo.cli import app

    run = make_case_run(tmp_path, n=4)
    write_report([run], tmp_path / "a", ReportSpec(resamples=0, figures=False, html=False))
    assert not (tmp_path / "a" / "index.html").exists()
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "b"), "--no-html"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "table.md").is_file() and not (tmp_path / "b" / "index.html").exists()


def naive_fleiss(ratings: list[list[int]], categories: int) -> float:
    """Fleiss' kappa from the per-rater labels, written out step by step (an independent formula)."""
    n = len(ratings[0])
    total = len(ratings) * n
    p_j = [sum(r.count(j) for r in ratings) / total for j in range(categories)]
    p_i = []
    for r in ratings:
        agreeing_pairs = sum(1 for x, y in itertools.permutations(range(n), 2) if r[x] == r[y])
        p_i.append(agreeing_pairs / (n * (n - 1)))
    chance = sum(p * p for p in p_j)
    return (sum(p_i) / len(p_i) - chance) / (1 - chance)


def test_fleiss_kappa_against_the_worked_example_and_an_independent_formula():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip
    assert fleiss_kappa(np.array(table)) == pytest.approx(0.20993, abs=1e-4)
    rng = np.random.default_rng(0)
    for raters in (2, 3, 5):
        ratings = rng.integers(0, 3, size=(40, raters)).tolist()
        counts = np.array([[r.count(j) for j in range(3)] for r in ratings])
        assert fleiss_kappa(counts) == pytest.approx(naive_fleiss(ratings, 3))
    assert fleiss_kappa(np.array([[3, 0, 0], [0, 3, 0]])) == pytest.approx(1.0)
    assert np.isnan(fleiss_kappa(np.array([[2, 0, 0], [2, 0, 0]])))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[2, 0, 0], [1, 0, 0]]))


def test_prepare_writes_blind_seeded_pages_and_a_key(tmp_path):
    run = make_case_run(tmp_path, n=12)
    study = prepare_study(run, PAIRS, items=6, annotators=3, seed=0)
    key = json.loads(study.key.read_text())
    assert study.out_dir == run / "humaneval" and len(study.pages) == 3 and study.questions == 12
    assert [p["a"] for p in key["pairs"]] == ["+MCM-DPO", "+MCM-DPO"] and len(key["items"]) == 6
    for qs in key["annotators"].values():  # A on the left in exactly half of each annotator's questions
        assert sorted(q["left"] for q in qs) == ["a"] * 6 + ["b"] * 6
    orders = [[(q["pair"], q["item"]) for q in qs] for qs in key["annotators"].values()]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])  # same questions, own order
    for page in study.pages:
        html = page.read_text()
        data = page_data(html)
        for secret in [*LABELS, "MCM-DPO", "preference@", "sft", "key.json"]:
            assert secret not in html, f"{page.name} shows {secret!r}"
        assert {k for q in data["questions"] for k in q} == {"question", "image", "context", "left", "right"}
        assert all((page.parent / q["image"]).is_file() for q in data["questions"])
    again = prepare_study(run, PAIRS, items=6, annotators=3, seed=0)  # same study: idempotent
    assert again.fingerprint == study.fingerprint
    with pytest.raises(StudyError, match="another study's key"):
        prepare_study(run, PAIRS, items=6, annotators=3, seed=1)
    other = prepare_study(run, PAIRS, items=6, annotators=3, seed=1, out_dir=tmp_path / "s1")
    assert other.fingerprint != study.fingerprint


def answer(key: dict, annotator: str, want: dict[int, str]) -> list[dict]:
    """Judgements that give pair p the outcome ``want[p]`` (win / tie / lose of model A), blind-side."""
    out = []
    for q in key["annotators"][annotator]:
        outcome = want[q["pair"]]
        a_side = "left" if q["left"] == "a" else "right"
        b_side = "right" if a_side == "left" else "left"
        out.append(
            {"question": q["question"], "choice": {"win": a_side, "tie": "tie", "lose": b_side}[outcome]}
        )
    return out


def export(path: Path, key: dict, annotator: str, judgements: list[dict], study: str | None = None) -> Path:
    doc = {"format": EXPORT_FORMAT, "study": study or key["fingerprint"], "run": key["run"],
           "annotator": annotator, "judgements": judgements}  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_collect_unblinds_counts_agreement_and_the_report_includes_it(tmp_path):
    run = make_case_run(tmp_path, n=12)
    study = prepare_study(run, PAIRS, items=6, annotators=3, seed=0)
    key = json.loads(study.key.read_text())
    files = [
        export(tmp_path / "a1.json", key, "a1", answer(key, "a1", {0: "win", 1: "tie"})),
        export(tmp_path / "a2.json", key, "a2", answer(key, "a2", {0: "win", 1: "lose"})),
        export(tmp_path / "a3.json", key, "a3", answer(key, "a3", {0: "win", 1: "tie"})),
    ]
    result = collect_study(files, study.out_dir)
    first, second = result.summary.pairs
    assert (first.a, first.b, first.items, first.annotators, first.judgements) == (
        "+MCM-DPO",
        "+DPO",
        6,
        3,
        18,
    )
    assert first.shares == {"win": 1.0, "tie": 0.0, "lose": 0.0} and first.intervals["win"] == (1.0, 1.0)
    assert second.shares == pytest.approx({"win": 0.0, "tie": 2 / 3, "lose": 1 / 3})
    assert first.kappa is None  # every judgement one category: kappa is undefined
    assert second.kappa == pytest.approx(fleiss_kappa(np.array([[0, 2, 1]] * 6)))
    names = {p.name for p in result.files}
    assert names == {"judgements.csv", "humaneval.json", "humaneval.csv", "humaneval.md", "humaneval.png"}
    assert read_summary(study.out_dir) == result.summary
    assert (
        "| +MCM-DPO vs +DPO | 100.0% (100.0%–100.0%) | 0.0%" in (study.out_dir / "humaneval.md").read_text()
    )
    check_png(study.out_dir / "humaneval.png")

    report = write_report([run], tmp_path / "report", ReportSpec(resamples=0))
    assert {"humaneval.csv", "humaneval.md", "figures/humaneval.png"} <= set(report.relative())
    html = (tmp_path / "report" / "index.html").read_text()
    assert 'id="humaneval"' in html and 'src="figures/humaneval.png"' in html and "Fleiss" in html
    assert "Human evaluation" in report.markdown


def check_png(path: Path) -> None:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] >= 150 and image.shape[1] >= 500
    inked = (image.min(axis=2) < 200).mean()
    assert 0.05 < inked < 0.7


def test_collect_reports_every_problem_on_one_line_each(tmp_path):
    from mcmdpo.cli import app

    run = make_case_run(tmp_path, n=12)
    study = prepare_study(run, PAIRS, items=6, annotators=2, seed=0)
    key = json.loads(study.key.read_text())
    full = answer(key, "a1", {0: "win", 1: "tie"})
    wrong_run = export(
        tmp_path / "w.json", key, "a2", answer(key, "a2", {0: "tie", 1: "tie"}), study="0" * 16
    )
    missing = export(tmp_path / "m.json", key, "a1", full[:-3])
    twice = export(tmp_path / "d.json", key, "a1", full)
    with pytest.raises(StudyError) as info:
        collect_study([wrong_run, missing, twice], study.out_dir)
    problems = info.value.problems
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    assert "wrong run or study folder" in problems[0] and "3 of 12 questions not judged" in problems[1]
    assert "annotator 'a1' again" in problems[2]
    garbage = tmp_path / "g.json"
    entries = [{"question": "q0001", "choice": "left"}, "q0002"]
    garbage.write_text(json.dumps({"format": EXPORT_FORMAT, "study": key["fingerprint"], "annotator": "a2",
                                   "judgements": entries}))  # fmt: skip
    not_json = tmp_path / "n.json"
    not_json.write_text("{")
    with pytest.raises(StudyError) as info:
        collect_study([garbage, not_json, tmp_path / "absent.json"], study.out_dir)
    assert [p.split(": ", 1)[1][:24] for p in info.value.problems] == [
        "'judgements' is not a li", "cannot read the judgemen", "cannot read the judgemen",
    ]  # fmt: skip
    result = CliRunner().invoke(
        app, ["humaneval", "collect", str(wrong_run), str(missing), "--out", str(study.out_dir)]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in result.output and not (study.out_dir / "humaneval.json").exists()


def test_prepare_errors_and_the_two_spellings_of_pairs(tmp_path):
    from mcmdpo.cli import app

    run = make_case_run(tmp_path, n=12)
    runner = CliRunner()
    base = ["humaneval", "prepare", str(run), "--items", "4", "--annotators", "1"]
    ok = runner.invoke(app, [*base, "--pairs", PAIRS[0], PAIRS[1], "--out", str(tmp_path / "s")])
    assert ok.exit_code == 0, ok.output
    assert len(json.loads((tmp_path / "s" / KEY).read_text())["pairs"]) == 2
    assert (tmp_path / "s" / PAGES / "annotator-a1.html").is_file()
    bad = runner.invoke(app, [*base, "--pairs", "+MCM-DPO:+GPT", "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "no split into two rows" in bad.output and len(bad.output.splitlines()) == 1
    many = runner.invoke(app, [*base[:3], "--pairs", PAIRS[0], "--items", "13", "--out", str(tmp_path / "t")])
    assert many.exit_code == 2 and "only 12 items" in many.output
