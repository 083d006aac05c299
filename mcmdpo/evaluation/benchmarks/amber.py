"""AMBER generative (``inference.py --evaluation_type g``): CHAIR / Cover / Hal / Cog over 1004 queries.

Files are ``[eval.amber]``; the noun-matching settings (spaCy similarity or exact) are
``[score.amber]``. Metrics: :mod:`mcmdpo.evaluation.metrics.amber`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mcmdpo.batch.errors import InputError, record_ref
from mcmdpo.batch.spec import EnvStr, Spec
from mcmdpo.evaluation import assets
from mcmdpo.evaluation.benchmarks.files import read_json_list, text_field
from mcmdpo.evaluation.benchmarks.registry import Benchmark, Item, ScoreEnv, register_benchmark

AMBER_GENERATIVE_MAX_ID = 1004
"""AMBER ids 1..1004 are the generative queries (upstream inference skips the others)."""
AMBER_HOW = (
    "git clone https://github.com/junyangwang0410/AMBER (data/ folder); the images come from the archive "
    "linked in its README"
)


class AmberSource(Spec):
    """``[eval.amber]``: AMBER's data folder, generative queries and images."""

    data_dir: EnvStr = Field(
        description="AMBER data/ folder: annotations.json, relation.json, safe_words.txt, metrics.txt"
    )
    images: EnvStr = Field(description="folder with AMBER_<id>.jpg")
    queries: EnvStr | None = Field(
        None, description="generative queries JSON (default <data_dir>/query/query_generative.json)"
    )

    def query_file(self) -> Path:
        return Path(self.queries) if self.queries else Path(self.data_dir) / "query" / "query_generative.json"

    def source_paths(self) -> dict[str, str]:
        """Absolute paths of the queries, the images and the data folder."""
        paths = {"queries": self.query_file(), "images": Path(self.images), "data_dir": Path(self.data_dir)}
        return {k: str(v.absolute()) for k, v in paths.items()}


class AmberScoring(Spec):
    """``[score.amber]``: how extracted nouns are matched to AMBER's objects."""

    similarity: Literal["spacy", "exact"] = Field(
        "spacy", description="spacy: upstream synonym matching by vector similarity; exact: string match only"
    )
    spacy_model: str = Field("en_core_web_lg", description="spaCy model with word vectors for similarity")
    threshold: float = Field(0.8, gt=0, lt=1, description="similarity above which two words match")


def read_amber(source: Mapping[str, Any]) -> list[Item]:
    """AMBER generative queries (ids 1..1004) with their image files."""
    file, images = Path(source["queries"]), Path(source["images"])
    items = []
    for position, raw in enumerate(read_json_list(file)):
        where = f"{file}: {record_ref(position)}"
        item_id = raw.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise InputError(f"id must be an integer (got {item_id!r})", record=where)
        if item_id > AMBER_GENERATIVE_MAX_ID:
            continue
        name = text_field(raw, "image", where)
        if "/" in name or ".." in name:
            raise InputError(f"image {name!r} must be a plain file name", record=where)
        question = text_field(raw, "query", where)
        items.append(Item(item_id, question, images / name, {"image": name, "question": question}))
    return items


def score_amber(records: Sequence[Mapping[str, Any]], env: ScoreEnv) -> tuple[Any, Any, list[str]]:
    from mcmdpo.evaluation.metrics import amber, nlp

    text, scoring = env.settings.nltk, env.settings.amber
    nlp.use_data_dirs(text.data_dirs)
    data = amber.load_amber(Path(env.source["data_dir"]))
    similarity, deviations = None, text.deviations(uses_tagger=True)
    if scoring.similarity == "spacy":
        similarity = amber.spacy_similarity(scoring.spacy_model)
    else:
        deviations.append("amber similarity=exact: no spaCy vector similarity when matching nouns to objects")
    metrics, samples = amber.score_amber(records, data, text, similarity, scoring.threshold)
    metrics["similarity"] = scoring.similarity
    return metrics, samples, deviations


def amber_assets(name: str, section: AmberSource, settings: Any, checksums: bool) -> list[assets.AssetStatus]:
    from mcmdpo.evaluation.metrics.amber import amber_files

    files = amber_files(Path(section.data_dir)).values()
    out = [assets.file_status(f"AMBER {p.name}", name, p, AMBER_HOW, checksums) for p in files]
    out.append(
        assets.file_status("AMBER generative queries", name, section.query_file(), AMBER_HOW, checksums)
    )
    out.append(assets.folder_status("AMBER images", name, section.images, AMBER_HOW))
    out += assets.text_assets(settings.nltk, name, tokenize=True, lemmatize=True, tag=True)
    if settings.amber.similarity == "spacy":
        needed_by = f"{name} (similarity = 'spacy'; 'exact' needs none)"
        out += assets.spacy_model_status(settings.amber.spacy_model, needed_by, optional=False)
    return out


register_benchmark(
    Benchmark(
        name="amber",
        kind="amber",
        source=AmberSource,
        read=read_amber,
        score=score_amber,
        assets=amber_assets,
        description="AMBER generative (1004 descriptions)",
    )
)
