"""NLTK resources and the text-processing modes shared by the metrics.

The upstream scoring scripts call ``nltk.word_tokenize`` (Punkt sentence splitting + the Treebank
word tokenizer), ``nltk.pos_tag`` (averaged perceptron tagger) and ``WordNetLemmatizer``. Their data
packages (``punkt_tab``, ``averaged_perceptron_tagger_eng``, ``wordnet``) are explicit assets (see
:mod:`mcmdpo.evaluation.assets`); nothing is downloaded at run time. Where a package cannot be installed, a
recipe may choose a named fallback mode, which the metrics JSON then lists as a deviation:

- ``tokenizer = "treebank"``: ``word_tokenize(text, preserve_line=True)``, i.e. no Punkt sentence
  split first. Differs from ``punkt`` only at sentence ends inside a text ("dog. The" keeps
  "dog." as one token; the text's final period is still split off).
- ``tagger = "wordnet"``: instead of POS tags, a token counts as a noun when WordNet has a noun
  sense for it and it is not a closed-class word (determiner, pronoun, preposition, conjunction,
  auxiliary or modal verb). Over-counts words used as verbs or adjectives ("people watch").
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import Field

from mcmdpo.batch.errors import McmdpoError
from mcmdpo.batch.spec import EnvStr, Spec

Tokenizer = Literal["punkt", "treebank"]
Tagger = Literal["perceptron", "wordnet"]

PUNKT = "tokenizers/punkt_tab/english/"
TAGGER = "taggers/averaged_perceptron_tagger_eng/"
WORDNET = "corpora/wordnet"

DOWNLOAD_HINT = (
    "on a machine with internet: python -m nltk.downloader -d DIR punkt_tab wordnet "
    "averaged_perceptron_tagger_eng; copy DIR to the cluster and list it in score.nltk.data_dirs "
    "(mcmdpo score: --nltk-data DIR; or export NLTK_DATA=DIR). Without punkt_tab: tokenizer = "
    "'treebank' (mcmdpo score --tokenizer treebank), a listed deviation"
)

# Closed-class words that have (rare) WordNet noun senses: "a" (vitamin A), "in" (inch), "can",
# "will", "it" (information technology), ... The tagger fallback never calls these nouns.
_CLOSED_CLASS_WORDS = """a an the this that these those some any each every either neither no another such
    i you he she it we they me him her us them my your his its our their mine yours hers ours theirs
    myself yourself himself herself itself ourselves themselves who whom whose which what whatever
    in on at by for with about against between into through during before after above below to from
    up down out off over under again further then once here there when where why how all both few
    more most other own same so than too very just of as until while near beside behind inside
    outside onto upon within without across along around among beneath toward towards via per
    and but or nor yet if because although though unless whether
    is are was were be been being am do does did done doing have has had having
    can could may might must shall should will would ought
    not also only even still already perhaps maybe"""
CLOSED_CLASS = frozenset(_CLOSED_CLASS_WORDS.split())


class MissingResource(McmdpoError, RuntimeError):
    """An NLTK data package is not installed; the message says how to install it."""


class NltkSpec(Spec):
    """``[score.nltk]``: NLTK data location and the tokenizer / tagger modes (fallbacks are deviations)."""

    data_dirs: tuple[EnvStr, ...] = Field(
        (), description="extra NLTK data folders, searched first (or NLTK_DATA)"
    )
    tokenizer: Tokenizer = Field(
        "punkt", description="punkt: nltk.word_tokenize (upstream); treebank: no sentence split (deviation)"
    )
    tagger: Tagger = Field(
        "perceptron",
        description="AMBER nouns: perceptron = nltk.pos_tag (upstream); wordnet = noun-lexicon fallback",
    )

    def deviations(self, uses_tagger: bool = False) -> list[str]:
        """Human-readable deviations from the upstream scripts caused by this configuration."""
        out = []
        if self.tokenizer == "treebank":
            out.append(
                "tokenizer=treebank: word_tokenize without Punkt sentence splitting "
                "(sentence-internal periods stay attached to the preceding word)"
            )
        if uses_tagger and self.tagger == "wordnet":
            out.append(
                "tagger=wordnet: nouns = tokens with a WordNet noun sense that are not closed-class "
                "words, instead of nltk.pos_tag NN* tags"
            )
        return out


def use_data_dirs(dirs: Iterable[str]) -> None:
    """Put ``dirs`` first on NLTK's data search path (idempotent; ``~`` is expanded)."""
    import nltk

    for folder in reversed([os.path.expanduser(str(d)) for d in dirs]):
        if folder in nltk.data.path:
            nltk.data.path.remove(folder)
        nltk.data.path.insert(0, folder)


def find_resource(name: str) -> str | None:
    """Where NLTK finds resource ``name`` (e.g. :data:`PUNKT`), or None."""
    import nltk

    try:
        return str(nltk.data.find(name))
    except LookupError:
        return None


def require(names: Sequence[str], purpose: str) -> None:
    """Raise :class:`MissingResource` unless every NLTK resource in ``names`` is installed."""
    import nltk

    missing = [n for n in names if find_resource(n) is None]
    if missing:
        raise MissingResource(
            f"{purpose} needs NLTK data {', '.join(missing)}, not found in {list(nltk.data.path)}; "
            + DOWNLOAD_HINT
        )


def required_resources(config: NltkSpec, *, tokenize: bool, lemmatize: bool, tag: bool) -> list[str]:
    """The NLTK resources a metric needs under ``config``."""
    names = []
    if tokenize and config.tokenizer == "punkt":
        names.append(PUNKT)
    if lemmatize or (tag and config.tagger == "wordnet"):
        names.append(WORDNET)
    if tag and config.tagger == "perceptron":
        names.append(TAGGER)
    return names


def word_tokenize(text: str, config: NltkSpec) -> list[str]:
    """``nltk.word_tokenize`` (punkt) or its no-sentence-split variant (treebank)."""
    from nltk.tokenize import word_tokenize as nltk_word_tokenize

    return list(nltk_word_tokenize(text, preserve_line=config.tokenizer == "treebank"))


@functools.lru_cache(maxsize=1)
def lemmatizer():  # noqa: ANN201 - nltk.stem.WordNetLemmatizer, imported lazily
    """A shared WordNet lemmatizer."""
    from nltk.stem import WordNetLemmatizer

    return WordNetLemmatizer()


@functools.lru_cache(maxsize=200_000)
def lemmatize(word: str) -> str:
    """``WordNetLemmatizer().lemmatize(word)`` (noun POS, as upstream), cached."""
    return lemmatizer().lemmatize(word)


def noun_tokens(tokens: Sequence[str], config: NltkSpec) -> list[str]:
    """Tokens tagged as nouns (``NN*``), in order: nltk.pos_tag or the WordNet fallback."""
    if config.tagger == "perceptron":
        import nltk

        return [word for word, tag in nltk.pos_tag(list(tokens)) if tag.startswith("NN")]
    return [t for t in tokens if is_wordnet_noun(t)]


_WORD = re.compile(r"^[A-Za-z][A-Za-z'\-]*$")


@functools.lru_cache(maxsize=200_000)
def is_wordnet_noun(token: str) -> bool:
    """Fallback noun test: an alphabetic token with a WordNet noun sense, not a closed-class word."""
    if not _WORD.match(token) or token.lower() in CLOSED_CLASS:
        return False
    from nltk.corpus import wordnet

    return bool(wordnet.synsets(token, pos="n"))


def versions() -> dict[str, str]:
    """Installed versions of the text packages that change metric values."""
    from importlib import metadata

    out = {}
    for name in ("nltk", "rouge", "pycocoevalcap", "spacy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
