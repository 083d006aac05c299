"""`mcmdpo assets check`: every external resource of the recipe's benchmarks, present or how to get it.

The NLTK WordNet folder the metric tests share is the ``nltk_data`` fixture (tests/conftest.py,
built by :func:`tests.helpers.wordnet.wordnet_data`).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from mcmdpo.batch.recipe import load_recipe
from mcmdpo.evaluation.assets import WORDNET_FILES, AssetsMissing, format_assets, install_wordnet
from mcmdpo.evaluation.readiness import check_recipe, require_assets


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.toml"
    head = f'[run]\nname = "a"\noutput_root = "{tmp_path / "runs"}"\n[data]\n[model]\n'
    path.write_text(head + textwrap.dedent(body))
    return path


def test_install_wordnet_fixes_crlf_and_writes_lexnames(tmp_path, nltk_data):
    source = tmp_path / "dict"
    source.mkdir()
    for name in WORDNET_FILES:
        (source / name).write_bytes(b"line one\r\nline two\r\n")
    corpus = install_wordnet(source, tmp_path / "nltk")
    assert (corpus / "data.noun").read_bytes() == b"line one\nline two\n"
    lexnames = (corpus / "lexnames").read_text().splitlines()
    assert lexnames[0] == "00\tadj.all\t3" and lexnames[-1] == "44\tadj.ppl\t3" and len(lexnames) == 45
    (source / "index.sense").unlink()
    with pytest.raises(FileNotFoundError, match="index.sense"):
        install_wordnet(source, tmp_path / "nltk2")


def test_wordnet_built_offline_loads_in_nltk(nltk_data):
    from nltk.stem import WordNetLemmatizer

    from mcmdpo.evaluation.metrics import nlp

    nlp.use_data_dirs([nltk_data])
    assert nlp.find_resource(nlp.WORDNET) is not None
    assert WordNetLemmatizer().lemmatize("dogs") == "dog"
    assert WordNetLemmatizer().lemmatize("glasses") == "glass"


def test_check_recipe_lists_every_resource_and_how_to_get_it(tmp_path, nltk_data):
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "instances_val2014.json").write_text("{}")
    talt = tmp_path / "talt.json"
    talt.write_text("")
    (tmp_path / "timg").mkdir()
    body = f"""
    [eval]
    benchmarks = ["test", "talt", "objhal", "mmhal", "amber"]
    [eval.talt]
    file = "{talt}"
    images = "{tmp_path / "timg"}"
    [eval.objhal]
    file = "{tmp_path / "objhal.jsonl"}"
    coco_dir = "{coco}"
    synonyms = "{tmp_path / "syn.txt"}"
    [eval.mmhal]
    file = "{tmp_path / "mmhal.json"}"
    images = "{tmp_path / "mmimg"}"
    [eval.amber]
    data_dir = "{tmp_path / "amber"}"
    images = "{tmp_path / "aimg"}"
    [score]
    protocols = ["paper", "coco"]
    [score.nltk]
    data_dirs = ["{nltk_data}"]
    tokenizer = "treebank"
    tagger = "wordnet"
    [score.amber]
    similarity = "exact"
    [score.judge]
    base_url = "http://127.0.0.1:9/v1"
    api_key_env = "MCMDPO_TEST_ASSETS_KEY"
    """
    recipe = load_recipe(_recipe(tmp_path, body))
    statuses = check_recipe(recipe)
    by_name = {s.name: s for s in statuses}
    assert by_name["talt test file"].present and by_name["talt images"].present
    assert by_name["COCO 2014 instances_val2014.json"].present
    assert not by_name["COCO 2014 captions_train2014.json"].present
    assert "annotations_trainval2014.zip" in by_name["COCO 2014 captions_train2014.json"].how_to_obtain
    assert (
        not by_name["AMBER annotations.json"].present
        and "junyangwang0410/AMBER" in by_name["AMBER annotations.json"].how_to_obtain
    )
    assert by_name["NLTK WordNet"].present and "amber" in by_name["NLTK WordNet"].needed_by
    assert "NLTK punkt_tab (word_tokenize)" not in by_name  # treebank mode needs no punkt
    assert "NLTK averaged_perceptron_tagger_eng" not in by_name  # wordnet tagger fallback
    assert not any(s.name.startswith("spaCy") for s in statuses)  # similarity = exact
    key = by_name["judge API key $MCMDPO_TEST_ASSETS_KEY"]
    assert not key.present and "export MCMDPO_TEST_ASSETS_KEY" in key.how_to_obtain
    assert by_name["Java runtime"].present == (os.system("command -v java >/dev/null") == 0)
    text = format_assets(statuses)
    assert "[MISSING] COCO 2014 captions_val2014.json" in text and "obtain: wget" in text
    assert "[ok] talt test file" in text and f"{sum(s.missing for s in statuses)} missing" in text
    with pytest.raises(AssetsMissing) as err:
        require_assets(recipe.stages["eval"], recipe.stages["score"])
    assert "COCO 2014 captions_val2014.json" in str(err.value) and "[ok]" not in str(err.value)
    assert require_assets(recipe.stages["eval"], recipe.stages["score"], ["talt"])  # talt: all present


def test_missing_nltk_data_names_the_downloader_and_the_fallback(tmp_path):
    from mcmdpo.evaluation.metrics import nlp

    if nlp.find_resource(nlp.PUNKT) is not None:
        pytest.skip("punkt_tab is installed here: the missing-data message cannot be shown")
    body = """
    [eval]
    [score]
    protocols = ["paper"]
    """
    statuses = check_recipe(load_recipe(_recipe(tmp_path, body)))
    punkt = next(s for s in statuses if s.name == "NLTK punkt_tab (word_tokenize)")
    assert not punkt.present
    assert "python -m nltk.downloader -d DIR punkt_tab" in punkt.how_to_obtain
    assert "tokenizer = 'treebank'" in punkt.how_to_obtain


def test_recipe_without_eval_needs_nothing(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, ""))
    assert check_recipe(recipe) == []
    assert "no external resources" in format_assets([])


def test_spacy_model_is_listed_for_amber_similarity(tmp_path, nltk_data):
    body = f"""
    [eval]
    benchmarks = ["amber"]
    [eval.amber]
    data_dir = "{tmp_path}"
    images = "{tmp_path}"
    [score.nltk]
    data_dirs = ["{nltk_data}"]
    """
    statuses = check_recipe(load_recipe(_recipe(tmp_path, body)))
    model = next(s for s in statuses if s.name == "spaCy model en_core_web_lg")
    assert "python -m spacy download en_core_web_lg" in model.how_to_obtain
    assert any(s.name == "NLTK averaged_perceptron_tagger_eng" for s in statuses)  # upstream tagger default
