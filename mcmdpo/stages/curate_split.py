"""Stage ``curate_split``: merge the curated shards, split, write the outputs (one task).

Implied by ``[curate]``. Writes ``sft.json``, ``preference.json``, ``test.jsonl``, ``images/``
(:mod:`mcmdpo.curate.outputs`), ``funnel.json`` (counts after every step), ``duplicates.json`` (the
clusters of ``curate_dedupe``) and ``curate.json`` (LLM settings, served model ids, prompts).
The split of each record was decided by a hash of its id in the ``curate`` stage.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register

if TYPE_CHECKING:
    from mcmdpo.curate.spec import CurateSpec

DUPLICATES, MANIFEST = "duplicates.json", "curate.json"


class CurateSplitSpec(StageSpec):
    """``[curate_split]`` (optional: implied by ``[curate]``, whose section holds the settings)."""


def run_curate_split(ctx: TaskContext) -> list[str]:
    """Merge every shard in file order and write the outputs."""
    from mcmdpo.batch.artifacts import read_json, write_json_atomic
    from mcmdpo.curate import outputs, prompts
    from mcmdpo.curate.scan import REPORT
    from mcmdpo.curate.spec import curate_spec
    from mcmdpo.evaluation.metrics.predictions import read_predictions
    from mcmdpo.handoff import CURATE_DEDUPE as DEDUPE
    from mcmdpo.handoff import CURATE_REPORT, CURATED

    spec = curate_spec(dict(ctx.recipe))
    scans = [read_json(d / REPORT) for d in ctx.input_dirs("curate_scan")]
    dedupe = read_json(ctx.input_dirs("curate_dedupe")[0] / DEDUPE)
    records = [r for d in ctx.input_dirs("curate") for r in read_predictions(d / CURATED)]
    counts = outputs.write_outputs(spec, records, ctx.out_dir)
    funnel = outputs.build_funnel(scans, dedupe, records)
    outputs.write_funnel(ctx.out_dir, funnel)
    write_json_atomic(
        ctx.out_dir / DUPLICATES, {"clusters": dedupe["clusters"], "ids": dedupe["duplicate_ids"]}
    )
    reports = [read_json(d / CURATE_REPORT) for d in ctx.input_dirs("curate")]
    write_json_atomic(ctx.out_dir / MANIFEST, _manifest(spec, reports, prompts))
    ctx.summary.update(counts)
    ctx.summary.update({s["step"]: s["dropped"] for s in funnel["steps"] if "dropped" in s})
    return [
        outputs.SFT,
        outputs.PREFERENCE,
        outputs.TEST,
        outputs.IMAGES,
        outputs.FUNNEL,
        DUPLICATES,
        MANIFEST,
    ]


def _manifest(spec: CurateSpec, reports: list[dict[str, Any]], prompts: ModuleType) -> dict[str, Any]:
    return {
        "llm": spec.llm.public(),
        "served_models": sorted({m for r in reports for m in r["served_models"]}),
        "names_methods": sorted({r["names_method"] for r in reports}),
        "rejected_temperature": spec.rejected_temperature,
        "max_attempts": spec.max_attempts,
        "split": spec.split.model_dump(mode="json"),
        "prompts": {
            "grammar": prompts.GRAMMAR_PROMPT,
            "rejected": prompts.REJECTED_PROMPT,
            "verify": prompts.VERIFY_PROMPT,
            "names": prompts.NAMES_PROMPT,
        },
    }


STAGE = register(
    Stage(
        name="curate_split",
        spec=CurateSplitSpec,
        run=run_curate_split,
        after=("curate_scan", "curate_dedupe", "curate"),
        reads=("curate",),
        implied_by=("curate",),
    )
)
