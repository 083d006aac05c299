"""``[report]``: the recipe section of the report stage (also the options of ``mcmdpo report``).

Kept free of heavy imports: ``mcmdpo validate`` and ``mcmdpo status`` import it through the stage.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from mcmdpo.batch.stage import StageSpec

LAYOUT_NAMES = ("auto", "all", "altext", "altext-coco", "hallucination")


class ReportSpec(StageSpec):
    """``[report]`` (optional: implied by ``[score]``; a demo recipe lists it to get the report)."""

    layout: str = Field(
        "auto",
        description="table columns: auto / all (every group with values), altext (paper Table 2), "
        "altext-coco, hallucination",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="row labels: keys base, sft, dpo, mdpo, mcmdpo (model labels), a baseline's name, "
        "or a row key '<model>@<key>=<value>;...' (e.g. 'preference@preference.loss.gamma=0.2')",
    )
    resamples: int = Field(
        1000,
        ge=0,
        le=20000,
        description="bootstrap resamples per interval (0: no intervals; memory: x items x 8 B)",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="coverage of the percentile intervals")
    seed: int = Field(0, ge=0, description="seed of the bootstrap draws")
    paper: bool = Field(False, description="add the paper's published numbers as reference rows + deltas")
    figures: bool = Field(True, description="write figures/*.png (matplotlib)")
    html: bool = Field(
        True,
        description="write index.html: tables, figures, human evaluation and a per-item cases view "
        "(static, self-contained; case thumbnails under cases/)",
    )
    representations: bool = Field(
        False, description="paper Fig. 7 representation plot (not implemented yet; must stay false)"
    )

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        if value not in LAYOUT_NAMES:
            raise ValueError(f"unknown layout {value!r}; choose from {', '.join(LAYOUT_NAMES)}")
        return value

    @field_validator("representations")
    @classmethod
    def _no_representations(cls, value: bool) -> bool:
        if value:
            raise ValueError("representations = true (paper Fig. 7) is not implemented yet; leave it false")
        return value
