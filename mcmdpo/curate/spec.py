"""The ``[curate]`` recipe section, shared by the four curation stages (they all read it).

Only pydantic here: ``mcmdpo validate`` imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mcmdpo.batch.spec import EnvStr, Spec
from mcmdpo.llm import LLMSpec

INSTRUCTION = "Given an image and context, generate alt-text for the image."
"""The upstream instruction; ``question`` = instruction + "\\nContext:\\n" + context."""


class _Section(Spec):
    """Frozen, unknown keys are errors, sub-specs asked what the environment lacks (``Spec``)."""


class FilterSpec(_Section):
    """``[curate.filters]``: per-record filters of the scan stage (each one counted in the funnel)."""

    drop_non_static: bool = Field(True, description="drop GIF files and animated WebP / APNG images")
    drop_hashtags: bool = Field(True, description="drop records whose alt-text contains a #hashtag")
    min_words: int = Field(5, ge=0, description="drop alt-texts with fewer whitespace-separated words")
    language: str = Field("en", description="language both the context and the alt-text must be in")
    min_language_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="py3langid probability (normalised over its 97 languages) of `language` a text needs; "
        "0 turns the language filter off",
    )


TextKey = Literal["alt_text+context", "alt_text", "context"]


class DedupeSpec(_Section):
    """``[curate.dedupe]``: near-duplicate images and texts (the first record of a cluster is kept).

    The paper de-duplicates with CLIP on "post-text or image embeddings" and forms its clusters by
    "pixel overlap" (Sec. 4.2): the image is what makes two samples the same. The text step therefore
    compares what a sample *is* besides its image, its target: by default a record is a text duplicate
    only when both its alt-text and its post text are near-identical to an earlier record's (a re-post
    of the same sample). Posts that merely share a caption (a shop's boilerplate, a thread's repeated
    text) but show different images with different alt-texts are kept; ``text_on = "context"`` restores
    the post-text-only comparison, which drops them.
    """

    image_threshold: int | None = Field(
        4, ge=0, le=12, description="64-bit pHash Hamming distance <= this is a duplicate (None: off)"
    )
    text_threshold: float | None = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard (char 5-grams) >= this is a duplicate (None: off)"
    )
    text_on: TextKey = Field(
        "alt_text+context",
        description="which texts must all be near-identical for a text duplicate: alt_text+context (both; "
        "the default), alt_text, or context (the post text alone)",
    )
    clip_threshold: float | None = Field(
        None, description="CLIP image-embedding cosine threshold: not implemented (needs a GPU); keep unset"
    )

    @model_validator(mode="after")
    def _check(self) -> DedupeSpec:
        if self.clip_threshold is not None:
            raise ValueError(
                "clip_threshold: CLIP-embedding de-duplication (the model's vision tower on a GPU) is not "
                "implemented yet; use image_threshold (pHash)"
            )
        return self


class NamesSpec(_Section):
    """``[curate.names]``: person names -> a placeholder, in the context and the alt-text."""

    method: Literal["auto", "spacy", "llm", "off"] = Field(
        "auto",
        description="auto: spaCy NER when installed with its model, else the LLM; the choice is recorded",
    )
    spacy_model: str = Field("en_core_web_sm", description="spaCy pipeline with an NER component")
    replacement: str = Field(
        "[person]", description="what a name becomes (the released PAlt files show a bare 'person')"
    )


class SplitSpec(_Section):
    """``[curate.split]``: output fractions, assigned by a hash of each record's id (deterministic)."""

    sft: float = Field(0.9, ge=0, le=1, description="share of records in sft.json")
    preference: float = Field(0.08, ge=0, le=1, description="share in preference.json (rejected generated)")
    test: float = Field(0.02, ge=0, le=1, description="share in test.jsonl")
    salt: str = Field("", description="changes the assignment while keeping the fractions")

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if abs(self.sft + self.preference + self.test - 1.0) > 1e-6:
            raise ValueError(
                f"sft + preference + test must be 1 (got {self.sft + self.preference + self.test})"
            )
        return self


class CurateSpec(_Section):
    """``[curate]``: raw (context, image, alt-text) triples -> sft.json, preference.json, test.jsonl."""

    raw_file: EnvStr = Field(description="raw triples: JSONL or parquet with id, image, context, alt_text")
    images: EnvStr | None = Field(
        None, description="folder the `image` paths are relative to (None: bytes only)"
    )
    shards: int = Field(1, ge=1, description="array tasks of curate_scan and curate (shards of raw_file)")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop at the first bad record; skip: drop it and count it by reason"
    )
    max_image_pixels: int = Field(89_478_485, ge=1, description="larger images are bad records (huge_image)")
    llm: LLMSpec = Field(description="the OpenAI-compatible endpoint for names, grammar, rejected, judge")
    rejected_temperature: float = Field(1.0, ge=0, le=2, description="sampling temperature of rejected texts")
    max_attempts: int = Field(3, ge=1, description="rejected generations per record before it is dropped")
    grammar: bool = Field(True, description="grammar-correct context and alt-text with the paper's prompt")
    instruction: str = Field(INSTRUCTION, description="instruction in front of the context in `question`")
    ds_name: str = Field("curated", description="`ds_name` of every preference.json record")
    filters: FilterSpec = Field(FilterSpec(), description="per-record filters")
    dedupe: DedupeSpec = Field(DedupeSpec(), description="near-duplicate removal")
    names: NamesSpec = Field(NamesSpec(), description="person-name replacement")
    split: SplitSpec = Field(SplitSpec(), description="output split fractions")


def curate_spec(recipe: dict) -> CurateSpec:
    """The ``[curate]`` section of a resolved recipe (what the implied curation stages read)."""
    if "curate" not in recipe:
        raise ValueError("the curation stages need a [curate] section")
    return CurateSpec.model_validate(recipe["curate"])


def shard_tasks(spec: CurateSpec) -> list[dict[str, int]]:
    """One array task per shard of the raw file: ``{"shard": k, "num_shards": N}``."""
    return [{"shard": k, "num_shards": spec.shards} for k in range(spec.shards)]
