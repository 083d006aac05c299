"""paper_results.toml against the paper's tables, and how rows of ours find their published row.

The paper's text is ``shared/docs/paper.md`` next to the repository (``../shared/docs/paper.md`` from
its root); it is not shipped, so the comparison with it skips (saying so) where the file is absent.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from mcmdpo.report.collect import MetricsFile
from mcmdpo.report.paper import PaperResults, load_paper_results
from mcmdpo.report.spec import PaperTableId

REPO = Path(__file__).resolve().parents[2]
PAPER_MD = REPO.parent / "shared" / "docs" / "paper.md"
VISION = {"×": "frozen", "✓": "trained"}


def paper_tables(text: str) -> dict[str, list[list[str]]]:
    """``table<N>`` -> the tab-separated lines after the caption ``**Table N: ...``, split into cells."""
    lines, out = text.splitlines(), {}
    for i, line in enumerate(lines):
        found = re.match(r"\*\*Table (\d+):", line.strip())
        if found:
            j = i + 1
            while j < len(lines) and "\t" not in lines[j]:
                j += 1
            block = []
            while j < len(lines) and "\t" in lines[j]:
                block.append(lines[j].split("\t"))
                j += 1
            out[f"table{found.group(1)}"] = block
    return out


def number(cell: str) -> float:
    cell = re.sub(r"</?b>", "", cell).strip()
    return math.nan if cell == "-" else float(cell.replace(",", ""))


def printed_label(cell: str) -> str:
    """A row label without citations, LaTeX and spaces: ``$-\\mathcal{L}_{\\text{Pair}}$`` -> ``-L_Pair``."""
    cell = re.sub(r"\s*\[\d+\]$", "", cell)
    cell = re.sub(r"\\mathcal\{L\}_\{\\text\{([^}]*)\}\}", r"L_\1", cell).replace("$", "")
    return cell.replace(" ", "")


def data_rows(table_id: str, block: list[list[str]]) -> list[list[str]]:
    """The rows with numbers (headers dropped); Tables 3's ViT cells kept, empty trailing cells dropped."""
    headers = 1 if table_id in ("table1", "table5", "table6", "table7", "table8") else 2
    return [
        [c for c in row if c != ""] if table_id in ("table4", "table9") else row for row in block[headers:]
    ]


@pytest.fixture(scope="module")
def published() -> dict[str, list[list[str]]]:
    if not PAPER_MD.is_file():
        pytest.skip(f"the paper's text is not at {PAPER_MD} (shared/docs/paper.md beside the repository)")
    return paper_tables(PAPER_MD.read_text())


def test_every_published_number_is_the_papers(published):
    paper, count = load_paper_results(), 0
    assert [t.id for t in paper.tables] == [f"table{n}" for n in range(1, 10)] == sorted(published)
    for table in paper.tables:
        rows = data_rows(table.id, published[table.id])
        assert len(rows) == len(table.rows), table.id
        units = {"table4": 100.0, "table9": 100.0}
        for ours, theirs in zip(table.rows, rows, strict=True):
            first = 3 if table.id == "table3" else 1
            assert printed_label(theirs[0]) in ours.label.replace(" ", ""), (table.id, ours.label)
            cells = [number(c) for c in theirs[first:]]
            values = list(ours.values.values())
            if table.id in units:  # MMHal's rate is stored as a share, printed in percent
                values[3] *= units[table.id]
            assert len(values) == len(cells), (table.id, ours.label)
            for value, cell in zip(values, cells, strict=True):
                assert value == pytest.approx(cell, abs=1e-9) or (math.isnan(value) and math.isnan(cell))
                count += not math.isnan(cell)
            if table.id == "table3":  # the paradigm: x frozen, check trained, - not applicable
                wanted = {
                    k: VISION[c]
                    for k, c in zip(("sft", "preference"), theirs[1:3], strict=True)
                    if c in VISION
                }
                assert {k.split(".")[0]: v for k, v in ours.settings.items()} == wanted
            if table.id in ("table6", "table8"):  # T and gamma: the row's setting is its first cell
                assert list(ours.settings.values()) == [pytest.approx(float(theirs[0]))]
    assert count == 348  # 6 + 104 + 88 + 31 + 20 + 20 + 24 + 24 + 31 (Table 4 repeats Table 9)


def test_table1_sizes_are_the_recipes_expected_records():
    from mcmdpo.batch.recipe.toml import load_toml

    sizes = load_paper_results().sizes()
    names = {"PAlt": "pinterest", "TAlt": "twitter"}
    files = {"training": "sft", "preference": "train", "test": "test"}
    for recipe in sorted((REPO / "recipes" / "paper").glob("table[2-8].toml")):
        expected = load_toml(recipe)[0]["run"]["expected_records"]
        for dataset, counts in sizes.items():
            for column, split in files.items():
                name = f"{names[dataset]}_{split}.json"
                assert expected.get(name, counts[column]) == counts[column], (recipe.name, name)


def test_report_tables_name_the_comparable_tables():
    paper = load_paper_results()
    comparable = [t.id for t in paper.tables if t.comparable]
    assert list(PaperTableId.__args__) == comparable == [f"table{n}" for n in (2, 3, 5, 6, 7, 8, 9)]
    assert paper.table("table4").duplicate_of == "table9"
    assert [str(r.values) for r in paper.table("table4").rows] == [
        str(r.values) for r in paper.table("table9").rows
    ]


# ---------------------------------------------------------------- matching

RECIPE = {
    "data": {"source": "files", "train_file": "/d/pinterest/pinterest_train.json"},
    "sft": {"vision_tower": "trained"},
    "precompute": {"strategy": "diffusion", "diffusion_step": 700},
    "preference": {"vision_tower": "trained", "loss": {"kind": "mcmdpo", "gamma": 0.2, "drop": []}},
}


def row_file(model: str, point: dict[str, Any] | None = None, **changes: Any) -> MetricsFile:
    """A metrics file of ``model`` (base / sft / dpo / mdpo / mcmdpo) at ``point``; ``changes``:
    dotted recipe keys with '__' for '.' (``precompute__strategy="black"``)."""
    import copy

    recipe = copy.deepcopy(RECIPE)
    for key, value in {**(point or {}), **{k.replace("__", "."): v for k, v in changes.items()}}.items():
        if key == "data":
            recipe["data"] = value
            continue
        *parents, last = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    stage = {"base": "model", "sft": "sft"}.get(model, "preference")
    recipe["preference"]["loss"]["kind"] = model if stage == "preference" else "mcmdpo"
    doc = {"model": {"model": "base"}.get(stage, stage), "model_stage": stage, "benchmark": "palt",
           "model_spec": {"loss": {"kind": model}} if stage == "preference" else {}}  # fmt: skip
    return MetricsFile("r", Path("/r"), "t", Path("/r/m.json"), doc, point or {}, "g", 0, recipe)


@pytest.fixture(scope="module")
def paper() -> PaperResults:
    return load_paper_results()


def matched(paper: PaperResults, file: MetricsFile, dataset: str = "palt", target: str | None = None):
    found = paper.match(file, dataset, target)
    return (found.row.table, found.row.label) if found.row else found.reason


TALT = {"source": "files", "train_file": "/d/twitter/twitter_train.json"}


def test_table2_rows_get_the_cells_of_their_training_data(paper):
    dpo_palt = row_file("dpo", {"preference.loss.kind": "dpo", "data": RECIPE["data"]})
    assert matched(paper, dpo_palt, "palt", "table2") == ("table2", "+DPO")
    assert matched(paper, dpo_palt, "talt", "table2").startswith("trained on PAlt; the paper's TAlt cells")
    dpo_talt = row_file("dpo", {"preference.loss.kind": "dpo", "data": TALT})
    assert matched(paper, dpo_talt, "talt", "table2") == ("table2", "+DPO")
    assert matched(paper, row_file("mdpo", precompute__strategy="mdpo_crop")) == ("table2", "+mDPO")
    assert matched(paper, row_file("base"), "talt") == ("table2", "LLaVA-1.6 (7B)")
    assert matched(paper, row_file("sft"), "talt") == ("table2", "LLaVA-1.6 (7B)+SFT")


def test_sweep_rows_get_the_row_of_the_table_that_sweeps_them(paper):
    gamma = row_file("mcmdpo", {"preference.loss.gamma": 0.2})
    assert matched(paper, gamma) == matched(paper, gamma, target="table8") == ("table8", "gamma = 0.2")
    assert matched(paper, row_file("mcmdpo", {"preference.loss.gamma": 1})) == ("table8", "gamma = 1")
    assert matched(paper, row_file("mcmdpo", {"precompute.diffusion_step": 700})) == ("table6", "T = 700")
    for drop, label in (
        ([], "MCM-DPO"),
        (["single", "pair"], "-L_Single+Pair"),
        (["pair+cpo"], "-L_Pair-L_CPO"),
    ):
        assert matched(paper, row_file("mcmdpo", {"preference.loss.drop": drop})) == ("table7", label)
    for strategy in ("black", "black_rgb"):  # the authors' code and the paper's words: one published row
        assert matched(paper, row_file("mcmdpo", {"precompute.strategy": strategy})) == (
            "table5",
            "Blackness",
        )
    p1 = {"sft.vision_tower": "frozen", "preference.vision_tower": "frozen", "preference.loss.kind": "dpo"}
    assert matched(paper, row_file("dpo", p1)) == ("table3", "+DPO (P1: frozen / frozen)")
    assert matched(paper, row_file("sft", {"sft.vision_tower": "frozen"})) == ("table3", "+SFT (ViT frozen)")
    # no sweep: the first table, unless the recipe names its own
    assert matched(paper, row_file("mcmdpo")) == ("table2", "+MCM-DPO")
    assert matched(paper, row_file("mcmdpo"), target="table7") == ("table7", "MCM-DPO")
    assert matched(paper, row_file("base"), target="table8") == ("table2", "LLaVA-1.6 (7B)")  # not in Table 8


def test_rows_without_a_published_row_say_why(paper):
    assert matched(paper, row_file("mcmdpo", {"preference.loss.gamma": 0.3})) == (
        "the paper publishes no row with gamma = 0.3"
    )
    assert matched(paper, row_file("mcmdpo", {"preference.loss.beta": 0.5})) == (
        "the paper publishes no row with beta = 0.5"
    )
    assert (
        matched(paper, row_file("mdpo"), "objhal")
        == "the paper publishes no Object HalBench results of this model"
    )
    hallucination = row_file(
        "mcmdpo", data={"source": "files", "train_file": "/d/rlhf-v/RLHF-V-Dataset.parquet"}
    )
    assert matched(paper, hallucination, "amber") == ("table9", "+MCM-DPO")
    assert matched(paper, row_file("mcmdpo"), "amber").startswith("trained on PAlt; the paper's AMBER cells")
