"""``[report]``: the recipe section of the report stage (also the options of ``mcmdpo report``).

Kept free of heavy imports: ``mcmdpo validate`` and ``mcmdpo status`` import it through the stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mcmdpo.batch.stage import StageSpec

LAYOUT_NAMES = ("auto", "all", "altext", "altext-coco", "hallucination")
PaperTableId = Literal["table2", "table3", "table5", "table6", "table7", "table8", "table9"]
"""The published tables a run can reproduce (``paper_results.toml``; Table 1 holds sizes, Table 4 = 9)."""


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
    paper_table: PaperTableId | None = Field(
        None,
        description="the published table this run reproduces: its rows are preferred when matching (None: "
        "the most specific published row; see docs/paper-comparison.md)",
    )
    figures: bool = Field(True, description="write figures/*.png (matplotlib)")
    html: bool = Field(
        True,
        description="write index.html: tables, figures, human evaluation and a per-item cases view "
        "(static, self-contained; case thumbnails under cases/)",
    )
    representations: bool = Field(
        False,
        description="paper Fig. 7: add the [represent] stage (its defaults unless the recipe has the "
        "section) and put its figure and distances in the report",
    )

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        if value not in LAYOUT_NAMES:
            raise ValueError(f"unknown layout {value!r}; choose from {', '.join(LAYOUT_NAMES)}")
        return value
