"""MMHal-Bench (LLaVA-RLHF / RLAIF-V ``eval_gpt_mmhal.py``): 96 questions rated 0-6 by ``[score.judge]``.

Metrics: :mod:`mcmdpo.evaluation.metrics.mmhal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from mcmdpo.batch.errors import InputError, record_ref
from mcmdpo.batch.spec import EnvStr, Spec
from mcmdpo.evaluation import assets
from mcmdpo.evaluation.benchmarks.files import b64_image, is_json_list, read_json_list, read_jsonl, text_field
from mcmdpo.evaluation.benchmarks.registry import Benchmark, Item, ScoreEnv, register_benchmark

MMHAL_HOW = (
    "the MMHal-Bench release (https://huggingface.co/datasets/Shengcao1006/MMHal-Bench): the 96-question "
    "answer template JSON and its images folder"
)
MMHAL_FIELDS = (
    "question_type",
    "question_topic",
    "image_id",
    "image_src",
    "image_content",
    "question",
    "gt_answer",
)


class MMHalSource(Spec):
    """``[eval.mmhal]``: the 96-question template and its images; scored by ``[score.judge]``."""

    file: EnvStr = Field(
        description="mmhal-bench_answer_template.json, or a JSONL with base64 'image' per line"
    )
    images: EnvStr | None = Field(
        None, description="folder with the images (not needed when lines carry 'image')"
    )


def read_mmhal(source: Mapping[str, Any]) -> list[Item]:
    """The 96-question template (JSON list) or a JSONL with base64 images; id = position."""
    file = Path(source["file"])
    records = read_json_list(file) if is_json_list(file) else read_jsonl(file)
    images = Path(source["images"]) if source.get("images") else None
    items = []
    for position, raw in enumerate(records):
        where = f"{file}: {record_ref(position)}"
        for key in MMHAL_FIELDS:
            if key not in raw:
                raise InputError(f"missing field {key!r}", record=where)
        image = b64_image(raw, where) if "image" in raw else _image_file(raw, images, where)
        fields = {k: raw[k] for k in MMHAL_FIELDS}
        items.append(Item(position, text_field(raw, "question", where), image, fields))
    return items


def _image_file(raw: Mapping[str, Any], images: Path | None, where: str) -> Path:
    if images is None:
        raise InputError("no base64 'image' and eval.mmhal.images is not set", record=where)
    names = list(dict.fromkeys([str(raw["image_src"]).rstrip("/").split("/")[-1], f"{raw['image_id']}.jpg"]))
    for name in names:
        if name and "/" not in name and ".." not in name and (images / name).is_file():
            return images / name
    raise InputError(f"image not found in {images} (tried {', '.join(names)})", record=where)


def score_mmhal(records: Sequence[Mapping[str, Any]], env: ScoreEnv) -> tuple[Any, Any, list[str]]:
    from mcmdpo.evaluation.metrics import mmhal

    metrics, samples = mmhal.score_mmhal(records, env.judge_client())
    return metrics, samples, []


def mmhal_assets(name: str, section: MMHalSource, settings: Any, checksums: bool) -> list[assets.AssetStatus]:
    out = [assets.file_status("MMHal-Bench template", name, section.file, MMHAL_HOW, checksums)]
    if section.images:
        out.append(assets.folder_status("MMHal-Bench images", name, section.images, MMHAL_HOW))
    out.append(assets.judge_key_status(settings.judge, name))
    return out


register_benchmark(
    Benchmark(
        name="mmhal",
        kind="mmhal",
        source=MMHalSource,
        read=read_mmhal,
        score=score_mmhal,
        assets=mmhal_assets,
        description="MMHal-Bench (96 questions, LLM judge)",
        needs_judge=lambda settings: True,
    )
)
