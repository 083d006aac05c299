"""Recipe fields of ``[precompute]`` (:class:`PrecomputeSpec`) and the ``strategy = "auto"`` rule.

Pydantic only (the stage module imports this at import time; ``mcmdpo status`` must stay fast).

``strategy = "auto"`` (the default) is resolved from the whole recipe when it is validated
(:func:`resolve_precompute`, the precompute stage's ``resolve`` hook): ``mdpo_crop`` when the recipe
trains mDPO (``[preference.loss] kind = "mdpo"``), else ``diffusion``. The resolved name is what the
recipe, ``plan.json``, the task ids and the shards carry, so a sweep over ``preference.loss.kind``
makes one precompute instance per resolved strategy. A recipe that names a strategy keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mcmdpo.batch.spec import EnvStr, existing_path
from mcmdpo.batch.stage import StageSpec


class PrecomputeSpec(StageSpec):
    """``[precompute]``: how preference records become HDF5 shards."""

    split: Literal["train", "test"] = Field(
        "train", description="which split of the data stage; test records have no rejected text"
    )
    strategy: Literal["auto", "diffusion", "black", "black_rgb", "crop", "rotate", "random", "mdpo_crop"] = (
        Field(
            "auto",
            description="rejected image m_l (paper Table 5; black: zeros after normalisation as the authors' "
            "code, black_rgb: an RGB-black image as the paper's text; mdpo_crop: mDPO's crop; see "
            "mcmdpo.method.noise); auto: mdpo_crop when [preference.loss] kind = 'mdpo', else diffusion",
        )
    )
    diffusion_step: int = Field(
        700, ge=0, le=1000, description="diffusion: step t (0-999 as upstream; 1000 = the last step, 999)"
    )
    schedule: Literal["upstream_sigmoid", "linear_ddpm"] = Field(
        "upstream_sigmoid", description="diffusion: beta schedule (upstream sigmoid, or standard linear DDPM)"
    )
    crop_window: Literal["upstream", "documented"] = Field(
        "upstream",
        description="crop: upstream = at most 240 wide x 320 tall (the authors' code); documented = at "
        "most 320 wide x 240 tall",
    )
    random_source: Literal["context", "independent"] = Field(
        "context",
        description="random: context = the image of the rejected-context record (upstream); independent "
        "= a separate uniform draw",
    )
    mode: Literal["pad", "anyres"] = Field(
        "pad", description="pad: expand to square + one SxS tensor (upstream); anyres: LLaVA-NeXT tiling"
    )
    num_shards: int | None = Field(None, ge=1, description="number of shards = array tasks (default 1)")
    samples_per_shard: int | None = Field(
        None, ge=1, description="instead of num_shards: records per shard (count known at planning)"
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="storage dtype of pixel tensors")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop at the first bad record; skip: leave it out and list it in the report"
    )
    non_rgb: Literal["convert", "bad"] = Field(
        "convert", description="non-RGB images (L, P, CMYK, RGBA, ...): convert('RGB') as upstream, or bad"
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="decompression-bomb limit: larger images are bad records"
    )
    seed_offset: int = Field(0, ge=0, description="added to run.seed for the rejected-image draws")
    processor_path: EnvStr | None = Field(
        None, description="image processor folder when the recipe has no [model] stage (else built-in)"
    )
    data_file: EnvStr | None = Field(None, description="source file when the recipe has no [data] stage")
    image_root: EnvStr | None = Field(None, description="image folder of data_file (no [data] stage)")

    @field_validator("data_file", "image_root", "processor_path")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked when the recipe is validated: a missing file fails at submit, not in a job."""
        if value is None:
            return None
        return existing_path(value, "file" if info.field_name == "data_file" else "dir")

    @model_validator(mode="after")
    def _check(self) -> PrecomputeSpec:
        if self.num_shards is not None and self.samples_per_shard is not None:
            raise ValueError("set num_shards or samples_per_shard, not both")
        if self.data_file and not self.image_root:
            raise ValueError("data_file needs image_root")
        return self


def resolve_strategy(strategy: str, doc: Mapping[str, Any]) -> str:
    """``auto`` -> ``mdpo_crop`` when ``doc`` (the resolved recipe) trains mDPO, else ``diffusion``.

    mDPO's image-conditional pair uses a random crop covering <= 20% of the image (mDPO paper;
    luka-group/mDPO ``crop_images``), not MCM-DPO's diffusion image. Other names are returned as given.
    """
    if strategy != "auto":
        return strategy
    preference = doc.get("preference")
    loss = preference.get("loss") if isinstance(preference, Mapping) else None
    kind = loss.get("kind") if isinstance(loss, Mapping) else None
    return "mdpo_crop" if kind == "mdpo" else "diffusion"


def resolve_precompute(spec: PrecomputeSpec, doc: Mapping[str, Any]) -> PrecomputeSpec:
    """The precompute stage's ``resolve`` hook: ``strategy`` resolved against the whole recipe."""
    strategy = resolve_strategy(spec.strategy, doc)
    return spec if strategy == spec.strategy else spec.model_copy(update={"strategy": strategy})
