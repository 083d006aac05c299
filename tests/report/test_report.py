"""The report: bootstrap intervals and p-values, statistics against the scorers, tables, figures, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.report import BENCHMARKS, make_run
from mcmdpo.report.collect import MetricsFile, TrainingLog, collect
from mcmdpo.report.compare import compare_files, compare_rows
from mcmdpo.report.estimators import corpus_bleu, corpus_meteor, find_metric, metric_defs
from mcmdpo.report.figures import write_figures
from mcmdpo.report.labels import point_label
from mcmdpo.report.layouts import Column, ColumnGroup
from mcmdpo.report.outputs import write_report
from mcmdpo.report.results import BootstrapConfig
from mcmdpo.report.spec import ReportSpec
from mcmdpo.report.stats import bootstrap_interval, paired_p_value, point_value
from mcmdpo.report.tables import Cell, ResultTable, TableRow, mark_best, render_latex, render_markdown
from tests.helpers.amber import RESPONSES as AMBER_RESPONSES
from tests.helpers.objhal import predictions
from tests.helpers.paths import REPO
from tests.helpers.wordnet import text_config


def mean_columns(values: np.ndarray) -> np.ndarray:
    return np.stack([values, np.ones_like(values)], axis=1)


def mean(sums: np.ndarray) -> np.ndarray:
    return sums[..., 0] / sums[..., 1]


# ---------------------------------------------------------------- bootstrap


def test_intervals_contain_the_estimate_shrink_with_n_and_are_seeded():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (100, 2000):
        values = rng.normal(5.0, 2.0, n)
        low, high = bootstrap_interval(mean_columns(values), mean, resamples=1000, seed=3)
        assert low < values.mean() < high
        widths[n] = high - low
        # independent check: the normal-theory 95% width of a mean, 2 * 1.96 * sd / sqrt(n), within 15%
        assert widths[n] == pytest.approx(2 * 1.96 * values.std(ddof=1) / math.sqrt(n), rel=0.15)
        again = bootstrap_interval(mean_columns(values), mean, resamples=1000, seed=3)
        assert again == (low, high) and bootstrap_interval(mean_columns(values), mean, 1000, seed=4) != again
    assert widths[2000] < 0.4 * widths[100]  # sqrt(20) = 4.5 times narrower in theory


def test_paired_p_value_formula():
    rng = np.random.default_rng(0)
    a = mean_columns(rng.random(300))
    assert paired_p_value(a, a.copy(), mean, 1000, 0) == (0.0, 1.0)
    better = a.copy()
    better[:, 0] += 0.2
    diff, p = paired_p_value(better, a, mean, 1000, 0)
    assert diff == pytest.approx(0.2) and p == pytest.approx(1 / 1001)
    # A differs from B by small item-level noise only: no evidence either way
    noisy = a.copy()
    noisy[:, 0] += rng.normal(0, 0.05, 300)
    assert paired_p_value(noisy, a, mean, 1000, 0)[1] > 0.05


def write_predictions(
    folder: Path, name: str, responses: list[str], references: list[str], nltk: str
) -> MetricsFile:
    """Predictions scored with the real paper-protocol scorer, as a metrics file the report reads."""
    from mcmdpo.evaluation.metrics import nlp
    from mcmdpo.evaluation.metrics.altext import score_file

    path = folder / f"{name}.jsonl"
    rows = [
        {"id": i, "response": r, "chosen": c}
        for i, (r, c) in enumerate(zip(responses, references, strict=True))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = nlp.NltkSpec(tokenizer="treebank", data_dirs=(nltk,))
    doc = score_file(path, "paper", folder / f"{name}.json", text)
    doc = {**doc, "model": name, "benchmark": "test", "kind": "altext"}
    return MetricsFile("r", folder, name, folder / f"{name}.json", doc, {}, name, 0)


SCENES = (
    ("bus parked", "near a shop", "morning"),
    ("dog running", "across a park", "evening"),
    ("boat floating", "on a lake", "afternoon"),
    ("kite flying", "over a beach", "summer"),
    ("car waiting", "at a crossing", "rain"),
    ("bird sitting", "on a fence", "snow"),
)
REFERENCES = [
    f"a {colour} {thing} {where} in the {time}"
    for colour in ("red", "blue", "green", "white", "black")
    for thing, where, time in SCENES
]


def test_paired_bootstrap_on_real_scores(tmp_path, nltk_data):
    close = [r.replace("the ", "") for r in REFERENCES]
    good = write_predictions(tmp_path, "good", close, REFERENCES, nltk_data)
    same = write_predictions(tmp_path, "same", close, REFERENCES, nltk_data)
    vague = [f"an image of a {r.split()[2]}" for r in REFERENCES]
    bad = write_predictions(tmp_path, "bad", vague, REFERENCES, nltk_data)
    config = BootstrapConfig(resamples=1000, seed=0)
    identical = compare_files(good, same, config)
    assert {c.metric for c in identical} >= {"bleu_4", "meteor", "rouge_l", "cider"}
    assert all(c.difference == 0 and c.p_value == 1.0 for c in identical)
    better = {c.metric: c for c in compare_files(good, bad, config)}
    for metric in ("bleu_4", "meteor", "rouge_l", "cider"):
        assert better[metric].difference > 0 and better[metric].p_value < 0.01, better[metric]
        assert better[metric].a_value == pytest.approx(good.doc["metrics"]["paper"]["unrounded"][metric])


# ---------------------------------------------------------------- statistics = the scorers' values


def test_corpus_bleu_of_summed_counts_equals_pycocoevalcap_on_any_multiset():
    from pycocoevalcap.bleu.bleu import Bleu

    from mcmdpo.evaluation.metrics.altext import bleu_counts

    refs = ["a man rides a horse on the beach", "two dogs play in the snow", "a red bus", "the cat sleeps"]
    hyps = [
        "a man riding a horse near the sea",
        "dogs play in snow",
        "a bus that is red",
        "cat sleeping on a bed",
    ]
    counts = [bleu_counts(h, r) for h, r in zip(hyps, refs, strict=True)]
    columns = np.array([[c["testlen"], c["reflen"], *c["guess"], *c["correct"]] for c in counts], dtype=float)
    for draw in ([0, 1, 2, 3], [0, 0, 2], [3, 3, 3, 1, 2]):  # bootstrap resamples repeat items
        gts = {k: [refs[i]] for k, i in enumerate(draw)}
        res = {k: [hyps[i]] for k, i in enumerate(draw)}
        upstream, _ = Bleu(4).compute_score(gts, res, verbose=0)
        weights = np.bincount(draw, minlength=4).astype(float)
        assert corpus_bleu(4)(weights @ columns) == pytest.approx(upstream[3] * 100, rel=1e-12)
        assert corpus_bleu(1)(weights @ columns) == pytest.approx(upstream[0] * 100, rel=1e-12)


@pytest.mark.skipif(shutil.which("java") is None, reason="the METEOR 1.5 jar needs Java")
def test_corpus_meteor_of_summed_statistics_equals_the_java_tool_on_any_multiset():
    """The Java tool's own EVAL of pooled statistics lines is the reference (one JVM)."""
    from mcmdpo.evaluation.metrics.altext import METEOR_JAR, _package_dir
    from mcmdpo.report.estimators import meteor_columns

    pairs = [("a man rides a horse on the beach", "a man riding a horse near the sea"),
             ("the cat sat on the mat", "a cat on a mat"), ("a red bus", "a red bus"),
             ("blue sky", "dog park"), ("the a of", "the a of"), ("dog dog dog", "dog")]  # fmt: skip
    lines = [f"SCORE ||| {ref} ||| {hyp}" for ref, hyp in pairs]
    cmd = ["java", "-Xmx2G", "-jar", METEOR_JAR[1], "-", "-", "-stdio", "-l", "en", "-norm"]
    draws = ([0, 1, 2, 3, 4, 5], [0, 0, 1], [2, 4, 4, 5], [1, 3])
    with subprocess.Popen(cmd, cwd=_package_dir(METEOR_JAR[0]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        stats = []
        for line in lines:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            stats.append(proc.stdout.readline().strip())
        java = []
        for draw in draws:
            proc.stdin.write("EVAL ||| " + " ||| ".join(stats[i] for i in draw) + "\n")
            proc.stdin.flush()
            java.append([float(proc.stdout.readline()) for _ in range(len(draw) + 1)][-1])
        proc.stdin.close()
    samples = [{"coco": {"meteor_stats": [float(x) for x in s.split()]}} for s in stats]
    columns = meteor_columns(samples, {})
    for draw, expected in zip(draws, java, strict=True):
        weights = np.bincount(draw, minlength=len(pairs)).astype(float)
        assert corpus_meteor()(weights @ columns) == pytest.approx(expected * 100, rel=1e-9)


def check_reproduces(kind: str, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    doc = {"kind": kind, "metrics": metrics}
    for metric in metric_defs(kind):
        if metric.value(doc) is not None:
            got = point_value(metric.columns(samples, doc), metric.reduce)
            assert got == pytest.approx(metric.unrounded(doc), rel=1e-9), metric.name


def test_hallucination_statistics_reproduce_the_scorers(objhal, amber_dir, nltk_data, tmp_path):
    from mcmdpo.evaluation.metrics import amber, chair, mmhal, nlp

    text = text_config(nltk_data)
    nlp.use_data_dirs(text.data_dirs)
    syn = chair.load_synonyms(objhal["syn"])
    records = predictions(objhal)
    gt = chair.ground_truth([r["image_id"] for r in records], objhal["coco"], syn, text, tmp_path / "cache")
    check_reproduces("objhal", *chair.score_chair(records, gt, syn, text))
    amber_records = [{"id": i, "response": r} for i, r in AMBER_RESPONSES.items()]
    metrics, samples = amber.score_amber(amber_records, amber.load_amber(amber_dir), text_config(nltk_data))
    check_reproduces("amber", metrics, samples)  # counters start at 0.001 denominators (metrics.txt)
    ratings = [6, 2, 4, 0, 3, 1, 5, 5]
    rows = [{"id": i, "question_type": "attribute", "rating": r, "parse_failed": False, "judge_model": "j"}
            for i, r in enumerate(ratings)]  # fmt: skip
    client = SimpleNamespace(
        config=SimpleNamespace(public=dict), stats={"requests": 8, "cached": 0, "retries": 0}
    )
    check_reproduces("mmhal", mmhal.aggregate(rows, client), rows)


# ---------------------------------------------------------------- tables


def table_of(rows: list[TableRow], columns: list[Column]) -> ResultTable:
    return ResultTable([ColumnGroup("G", tuple(columns))], rows, ["a note with 50% & an_underscore"])


def test_bold_marks_the_best_per_column_in_both_directions_with_ties():
    up = Column("palt", find_metric("altext", "paper", "bleu_4"))  # higher is better
    down = Column("objhal", find_metric("objhal", "", "response_level"))  # lower is better
    values = {"A": (39.541, 12.0), "B": (39.538, 10.004), "C": (20.0, 9.996), "D": (39.0, 30.0)}
    rows = [
        TableRow(k, k, "result", {up.key: Cell((a,)), down.key: Cell((b,))}) for k, (a, b) in values.items()
    ]
    reference = TableRow("paper", "p", "paper", {up.key: Cell((99.0,)), down.key: Cell((1.0,))})
    mark_best([*rows, reference], [up, down])
    assert {r.label for r in rows if up.key in r.best} == {"A", "B"}  # 39.54 = 39.54 at two decimals
    assert {r.label for r in rows if down.key in r.best} == {"B", "C"}  # 10.00 = 10.00, lower is better
    assert not reference.best  # published rows never compete
    md = render_markdown(table_of([*rows, reference], [up, down]))
    assert md.count("**39.54**") == 2 and md.count("**10.00**") == 2 and "| 39.00 | 30.00 |" in md
    seeds = TableRow("S", "s", "result", {up.key: Cell((1.0, 2.0, 3.0))})
    assert "2.00 ± 1.00" in render_markdown(table_of([seeds], [up]))  # sample std of 1, 2, 3


def test_latex_compiles_standalone(tmp_path):
    if shutil.which("pdflatex") is None:
        if os.environ.get("CI"):
            pytest.fail("pdflatex missing: run tools/install_test_deps.sh (texlive-latex-base/-recommended)")
        pytest.skip("pdflatex not installed (tools/install_test_deps.sh installs it)")
    up = Column("palt", find_metric("altext", "paper", "bleu_4"))
    rows = [
        TableRow("gamma = 0.2 & -L_Pair", "a", "result", {up.key: Cell((1.5, 2.5))}, best={up.key}),
        TableRow("+MCM-DPO (paper)", "p", "paper", {up.key: Cell((14.48,))}),
        TableRow("Δ vs paper", "d", "delta", {up.key: Cell((-1.2,))}),
    ]
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "table.tex").write_text(render_latex(table_of(rows, [up])))
    # a wide one: 24 columns, reference and delta rows, notes with underscores
    run = make_run(tmp_path, [("sft", {}), ("preference", {})], list(BENCHMARKS), 30)
    write_report([run], tmp_path / "wide", ReportSpec(resamples=50, figures=False, paper=True))
    for folder in (tmp_path / "small", tmp_path / "wide"):
        cmd = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"]
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]
        log = (folder / "table.log").read_text()
        assert (folder / "table.pdf").stat().st_size > 1000 and "booktabs.sty" in log
        assert "Overfull \\hbox" not in log, "the table is wider than its page"


def test_labels_from_sweep_points():
    assert point_label({"precompute.diffusion_step": 700}) == "T = 700"
    assert point_label({"preference.loss.gamma": 0.2}) == "gamma = 0.2"
    assert point_label({"preference.loss.drop": ["pair"]}) == "-L_Pair"
    assert point_label({"preference.loss.drop": ["pair+cpo"]}) == "-L_Pair -L_CPO"
    assert point_label({"preference.loss.kind": "dpo", "x.y": 3}) == "y = 3"


# ---------------------------------------------------------------- runs, figures, paper rows


def sweep_models(gammas: tuple[float, ...] = (0.2, 0.4)) -> list[tuple[str, dict[str, Any]]]:
    models = []
    for g in gammas:  # every sweep point scores base and sft again, as the score stage does
        point = {"preference.loss.gamma": g}
        models += [("base", point), ("sft", point), ("preference", point)]
    return models


def test_collect_merges_sweep_duplicates_and_seeds(tmp_path):
    run0 = make_run(tmp_path, sweep_models(), ["palt"], 50, seed=0, name="s0")
    run1 = make_run(tmp_path, sweep_models(), ["palt"], 50, seed=1, name="s1")
    one = collect([run0])
    assert [(f.model, f.point) for f in one.files] == [
        ("base", {}), ("sft", {}), ("preference", {"preference.loss.gamma": 0.2}),
        ("preference", {"preference.loss.gamma": 0.4}),
    ]  # fmt: skip
    out = write_report([run0, run1], tmp_path / "out", ReportSpec(resamples=200, figures=False))
    rows = [r for r in out.table.rows if r.kind == "result"]
    assert [r.label for r in rows] == ["LLaVA-1.6 (7B)", "+SFT", "gamma = 0.2", "gamma = 0.4"]
    cell = rows[0].cells[("palt", "paper", "bleu_4")]
    by_run = {f.run: f.doc["metrics"]["paper"]["bleu_4"] for f in rows[0].files}
    assert cell.values == (by_run["s0"], by_run["s1"]) and cell.ci is None
    assert f"{cell.mean:.2f} ± {cell.std:.2f}" in out.markdown and "seeds [0, 1]" in out.markdown
    with pytest.raises(ValueError, match=r"averages runs \['s0', 's1'\]; name one as <run>:\+SFT"):
        compare_rows(out.table.rows, "+SFT", "gamma = 0.2")
    paired = compare_rows(out.table.rows, "s1:+SFT", "s1:+SFT", BootstrapConfig(resamples=100))
    assert paired and all(c.p_value == 1.0 and c.n == 50 for c in paired)


def test_figures_are_real_pngs(tmp_path):
    from PIL import Image

    run = make_run(tmp_path, sweep_models((0.1, 0.2, 0.4)), ["palt", "amber"], 60)
    metrics = tmp_path / "metrics.jsonl"
    terms = ("rpo", "vpo", "cpo", "vrpo", "crpo", "vcpo", "mtppo")
    steps = [
        {"step": s, "loss": 2 / s, "lr": 1e-4 * min(1, s / 3)}
        | {f"{t}/margin": s * k for k, t in enumerate(terms)}
        | {f"{t}/accuracy": min(1.0, s / 20) for t in terms}
        for s in range(1, 21)
    ]
    metrics.write_text("".join(json.dumps(s) + "\n" for s in steps))
    out = write_report([run], tmp_path / "out", ReportSpec(resamples=100, figures=False))
    log = TrainingLog("bench", "preference", "t1", metrics, {}, {"preference.loss.gamma": 0.2})
    paths = write_figures(out.table, [log], tmp_path / "figures")
    names = sorted(p.name for p in paths)
    assert names == [
        "bars_amber.png",
        "bars_palt-coco.png",
        "bars_palt.png",
        "sweep_preference-loss-gamma.png",
        "train_preference_t1.png",
    ]
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[0] >= 250 and image.shape[1] >= 500, path.name
        inked = (image.min(axis=2) < 200).mean()  # share of non-background pixels
        assert 0.02 < inked < 0.6 and len(np.unique(image.reshape(-1, 3), axis=0)) > 30, path.name


def test_paper_reference_rows_and_deltas(tmp_path):
    palt = {"data": {"source": "files", "train_file": "/d/pinterest/pinterest_train.json"}}
    run = make_run(tmp_path, [("sft", {}), ("preference", {})], ["palt", "talt"], 40, sections=palt)
    out = write_report([run], tmp_path / "out", ReportSpec(resamples=0, figures=False, paper=True))
    labels = [r.label for r in out.table.rows]
    assert labels[:6] == ["+SFT", "LLaVA-1.6 (7B)+SFT (paper, Table 2)", "Δ vs paper",
                          "+MCM-DPO", "+MCM-DPO (paper, Table 2)", "Δ vs paper"]  # fmt: skip
    # published rows without a row of ours: the zero-shot models, the base, DPO, mDPO, MCM-DPO on TAlt
    assert labels[6] == "InstructBLIP (13B) (paper, Table 2)" and labels[-1] == "+MCM-DPO (paper, Table 2)"
    ours = out.table.rows[3].cells[("palt", "paper", "rouge_l")].mean
    assert out.table.rows[4].cells[("palt", "paper", "rouge_l")].mean == 39.54
    assert out.table.rows[5].cells[("palt", "paper", "rouge_l")].mean == pytest.approx(ours - 39.54)
    assert ("talt", "paper", "rouge_l") not in out.table.rows[4].cells  # trained on PAlt: no TAlt cells
    assert "No published counterpart for +MCM-DPO on TAlt: trained on PAlt" in out.markdown
    with open(tmp_path / "out" / "paper_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    tal = next(r for r in rows if (r["label"], r["benchmark"], r["metric"]) == ("+SFT", "talt", "cider"))
    assert float(tal["paper_value"]) == 144.64 and float(tal["delta"]) == pytest.approx(
        float(tal["value"]) - 144.64
    )
    assert tal["paper_table"] == "table2" and tal["paper_row"] == "LLaVA-1.6 (7B)+SFT"
    mcm = next(r for r in rows if (r["label"], r["benchmark"], r["metric"]) == ("+MCM-DPO", "talt", "cider"))
    assert mcm["paper_value"] == "" and mcm["note"].startswith("trained on PAlt")


# ---------------------------------------------------------------- the real pipeline, the stage and the CLI

RECIPE = """
[run]
name = "rep"
output_root = "{runs}"
[cluster]
executor = "debug"
[data]
source = "demo"
num_train = 4
num_test = 6
min_image_size = 32
max_image_size = 48
[model]
source = "tiny"
[eval]
benchmarks = ["test"]
batch_size = 3
max_new_tokens = 8
[score]
protocols = ["paper"]
[score.nltk]
tokenizer = "treebank"
data_dirs = ["{nltk}"]
[report]
resamples = 300
"""


def test_pipeline_report_stage_and_cli(tmp_path, nltk_data):
    from mcmdpo.batch.launch import submit
    from mcmdpo.batch.recipe import load_recipe

    (tmp_path / "r.toml").write_text(RECIPE.format(runs=tmp_path / "runs", nltk=nltk_data))
    recipe = load_recipe(tmp_path / "r.toml")
    report = submit(recipe)
    assert report.ok, report.blocked_by
    (task,) = report.plan.stage("report").tasks
    folder = recipe.run_dir / "report" / task.task_id
    done = json.loads((folder / "DONE").read_text())
    assert {"results.csv", "table.md", "table.tex", "figures/bars_test.png", "index.html"} <= set(
        done["outputs"]
    )
    assert len([o for o in done["outputs"] if o.startswith("cases/test/")]) == 6  # [report] html = true

    cli = [sys.executable, "-m", "mcmdpo", "report", str(recipe.run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run([*cli, "--out", str(tmp_path / "x"), "--compare", "base", "base"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "base vs base" in shown.stdout and "| Model |" not in shown.stdout  # table only without --out
    with open(tmp_path / "x" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["run", "model", "point", "benchmark", "protocol", "metric", "value",
                                      "ci_low", "ci_high", "n", "source"]  # fmt: skip
    for row in rows:  # every value is the number of the metrics JSON it cites
        doc = json.loads(Path(row["source"]).read_text())
        block = doc["metrics"][row["protocol"]] if row["protocol"] else doc["metrics"]
        assert float(row["value"]) == block[row["metric"]] and int(row["n"]) == 6
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
    compared = list(csv.DictReader(open(tmp_path / "x" / "compare.csv")))  # noqa: SIM115
    assert compared and all(float(r["p_value"]) == 1.0 for r in compared)  # identical predictions
    assert (tmp_path / "x" / "table.md").read_text() == (folder / "table.md").read_text()

    printed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and printed.stdout.startswith("| Model | Test ROUGE-L |"), printed.stderr
    assert (recipe.run_dir / "report" / "results.csv").is_file()


def test_cli_errors_are_one_line(tmp_path):
    from mcmdpo.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no plan here" in missing.output and "Traceback" not in missing.output
    run = make_run(tmp_path, [("sft", {})], ["palt"], 10)
    bad = runner.invoke(app, ["report", str(run), "--layout", "fancy", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "unknown layout 'fancy'" in bad.output
    rows = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "o"), "--compare", "+SFT", "+DPO"])
    assert rows.exit_code == 2 and "--compare '+DPO': no row" in rows.output
    with pytest.raises(ValueError, match="'table2', 'table3'"):  # Table 4 repeats 9: not a target
        ReportSpec(paper_table="table4")


def test_a_named_paper_table_lists_only_its_own_unmatched_rows(tmp_path):
    """A Table 8 run's +SFT row matches Table 2's; with paper_table = "table8" only Table 8's
    unmatched rows follow the table (without it, Table 2's are listed as well)."""
    palt = {"data": {"source": "files", "train_file": "/d/pinterest/pinterest_train.json"}}
    run = make_run(tmp_path, [("sft", {})], ["palt"], 20, sections=palt)
    spec = ReportSpec(resamples=0, figures=False, paper=True, paper_table="table8")
    named = [r.label for r in write_report([run], tmp_path / "named", spec).table.rows]
    assert named[:3] == ["+SFT", "LLaVA-1.6 (7B)+SFT (paper, Table 2)", "Δ vs paper"]
    assert named[3:] and all(label.endswith("(paper, Table 8)") for label in named[3:])
    spec = ReportSpec(resamples=0, figures=False, paper=True)
    every = [r.label for r in write_report([run], tmp_path / "every", spec).table.rows]
    assert "InstructBLIP (13B) (paper, Table 2)" in every and not any("Table 8" in x for x in every)
