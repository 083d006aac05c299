"""The NLTK WordNet folder the metric tests share (the ``nltk_data`` fixture of tests/conftest.py): built
with :func:`mcmdpo.evaluation.assets.install_wordnet` from Debian's ``wordnet-base`` +
``wordnet-sense-index`` files (``/usr/share/wordnet``, or ``$MCMDPO_WORDNET_SOURCE``), or an NLTK
WordNet already installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcmdpo.evaluation.assets import WORDNET_FILES, install_wordnet
from mcmdpo.evaluation.metrics import nlp
from mcmdpo.evaluation.metrics.nlp import NltkSpec

WORDNET_SOURCE = Path(os.environ.get("MCMDPO_WORDNET_SOURCE", "/usr/share/wordnet"))


def wordnet_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An NLTK data folder holding WordNet (built once per session); skips when none is available."""
    base = tmp_path_factory.getbasetemp() / "nltk_wordnet"
    if (base / "corpora" / "wordnet" / "lexnames").is_file():
        return str(base)
    if all((WORDNET_SOURCE / f).is_file() for f in WORDNET_FILES):
        install_wordnet(WORDNET_SOURCE, base)
        return str(base)
    found = nlp.find_resource(nlp.WORDNET)
    if found:  # an NLTK WordNet is installed already: use NLTK's own search path
        return str(Path(found).parents[1])
    message = (
        f"no WordNet: install Debian wordnet-base + wordnet-sense-index ({WORDNET_SOURCE}) or NLTK's "
        "wordnet package (python -m nltk.downloader wordnet); `make test` installs the Debian packages"
    )
    if os.environ.get("MCMDPO_REQUIRE_ASSETS"):
        pytest.fail(message)
    pytest.skip(message)


def text_config(data_dir: str) -> NltkSpec:
    """The metric tests' NLTK settings: Treebank tokenizer, WordNet tagger, ``data_dir`` only."""
    return NltkSpec(tokenizer="treebank", tagger="wordnet", data_dirs=(data_dir,))
