"""Object HalBench (RLAIF-V ``eval/eval_gpt_obj_halbench.py``): CHAIR against COCO 2014 annotations.

Files are ``[eval.objhal]``; the object extractor (``nltk`` or ``llm``, the latter through
``[score.judge]``) is ``[score.objhal]``. Metrics: :mod:`mcmdpo.evaluation.metrics.chair`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mcmdpo.batch.errors import InputError
from mcmdpo.batch.spec import EnvStr, Spec
from mcmdpo.evaluation import assets
from mcmdpo.evaluation.benchmarks.files import b64_image, read_jsonl, text_field
from mcmdpo.evaluation.benchmarks.registry import Benchmark, Item, ScoreEnv, register_benchmark

if TYPE_CHECKING:
    from mcmdpo.evaluation.metrics.chair import Synonyms
    from mcmdpo.evaluation.metrics.nlp import NltkSpec

COCO_HOW = (
    "wget http://images.cocodataset.org/annotations/annotations_trainval2014.zip && unzip it; "
    "point eval.objhal.coco_dir at its annotations/ folder"
)
RLAIFV_HOW = "git clone https://github.com/RLHF-V/RLAIF-V (files under eval/data/)"


class ObjHalSource(Spec):
    """``[eval.objhal]``: Object HalBench questions, COCO 2014 annotations, synonym table."""

    file: EnvStr = Field(description="obj_halbench_300_with_image.jsonl (base64 image, image_id, question)")
    coco_dir: EnvStr = Field(
        description="folder with instances_{train,val}2014.json + captions_{train,val}2014.json"
    )
    synonyms: EnvStr = Field(description="synonyms_refine.txt (80 COCO classes, synonyms comma-separated)")


class ObjHalScoring(Spec):
    """``[score.objhal]``: how object mentions are extracted from responses."""

    extractor: Literal["nltk", "llm"] = Field(
        "nltk",
        description="object mentions: nltk = tokenise + lemmatise (no judge); llm = the judge lists them",
    )
    spacy_model: str | None = Field(
        None, description="llm extractor: spaCy model for lemmas/tags of objects (upstream en_core_web_trf)"
    )


def read_objhal(source: Mapping[str, Any]) -> list[Item]:
    """``obj_halbench_300_with_image.jsonl``: id = ``question_id`` if present, else the line index."""
    file = Path(source["file"])
    items = []
    for position, raw in enumerate(read_jsonl(file)):
        where = f"{file}: line {position + 1}"
        question = text_field(raw, "question", where)
        image_id = raw.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or not str(image_id).isdigit():
            raise InputError(f"image_id must be a COCO image id (got {image_id!r})", record=where)
        item_id = raw.get("question_id", position)
        fields = {"image_id": int(image_id), "question": question}
        items.append(Item(item_id, question, b64_image(raw, where), fields))
    return items


def score_objhal(records: Sequence[Mapping[str, Any]], env: ScoreEnv) -> tuple[Any, Any, list[str]]:
    from mcmdpo.evaluation.metrics import chair, nlp

    text, scoring = env.settings.nltk, env.settings.objhal
    nlp.use_data_dirs(text.data_dirs)
    syn = chair.load_synonyms(Path(env.source["synonyms"]))
    ids = [r["image_id"] for r in records]
    gt = chair.ground_truth(ids, Path(env.source["coco_dir"]), syn, text, env.cache_dir)
    extracted, deviations = None, text.deviations()
    if scoring.extractor == "llm":
        extracted, extra = _llm_objects(records, env, syn, text)
        deviations += extra
    metrics, samples = chair.score_chair(records, gt, syn, text, extracted)
    metrics["extractor"] = scoring.extractor
    return metrics, samples, deviations


def _llm_objects(
    records: Sequence[Mapping[str, Any]], env: ScoreEnv, syn: Synonyms, text: NltkSpec
) -> tuple[dict[Any, list[str]], list[str]]:
    from mcmdpo.evaluation.metrics import chair

    spacy_nlp, deviations = None, []
    if env.settings.objhal.spacy_model:
        import spacy

        spacy_nlp = spacy.load(env.settings.objhal.spacy_model)
    else:
        deviations.append(
            "objhal llm extractor: extracted objects reduced with NLTK/WordNet instead of spaCy"
        )
        deviations += text.deviations(uses_tagger=True)
    return chair.llm_extract(records, env.judge_client(), syn, text, spacy_nlp), deviations


def objhal_assets(
    name: str, section: ObjHalSource, settings: Any, checksums: bool
) -> list[assets.AssetStatus]:
    from mcmdpo.evaluation.metrics.chair import COCO_FILES

    scoring = settings.objhal
    out = [
        assets.file_status("obj_halbench_300_with_image.jsonl", name, section.file, RLAIFV_HOW, checksums),
        assets.file_status("synonyms_refine.txt", name, section.synonyms, RLAIFV_HOW, checksums),
    ]
    out += [
        assets.file_status(f"COCO 2014 {f}", name, Path(section.coco_dir) / f, COCO_HOW, checksums)
        for f in COCO_FILES
    ]
    tag = scoring.extractor == "llm" and not scoring.spacy_model
    out += assets.text_assets(settings.nltk, name, tokenize=True, lemmatize=True, tag=tag)
    if scoring.extractor == "llm":
        out.append(assets.judge_key_status(settings.judge, f"{name} (llm extractor)"))
        if scoring.spacy_model:
            out += assets.spacy_model_status(scoring.spacy_model, f"{name} (llm extractor)", optional=False)
    return out


register_benchmark(
    Benchmark(
        name="objhal",
        kind="objhal",
        source=ObjHalSource,
        read=read_objhal,
        score=score_objhal,
        assets=objhal_assets,
        description="Object HalBench (300 COCO val2014 images)",
        needs_judge=lambda settings: settings.objhal.extractor == "llm",
    )
)
