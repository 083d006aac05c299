"""Stage ``data``: the source files of a run, generated (``demo``), checked (``files``) or curated.

Output: ``data.json``, a manifest that later stages read instead of the recipe::

    {"source": "demo" | "files" | "curate",
     "splits": {"train": {"file": ..., "images": ..., "format": "json", "num_records": 64,
                          "sha256": ..., "size": ...},
                "test": {...}}}

Paths in the manifest are relative to the task folder for ``demo`` (generated under ``demo/``),
absolute for ``files`` and ``curate`` (``curate_split``'s ``preference.json`` as train, ``test.jsonl``
as test, with its ``images/``). Relative recipe paths start at the directory ``mcmdpo submit`` ran in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mcmdpo.batch.artifacts import write_json_atomic
from mcmdpo.batch.errors import MissingInput
from mcmdpo.batch.resumable import pause_for_tests
from mcmdpo.batch.spec import EnvStr, existing_path
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.handoff import DATA_MANIFEST as MANIFEST
from mcmdpo.handoff import curated_files

DEMO_DIR = "demo"


class DataSpec(StageSpec):
    """``[data]``: where the preference (train) and test records come from."""

    source: Literal["demo", "files", "curate"] = Field(
        "demo",
        description="demo: generate the synthetic dataset; files: use existing upstream-format files; "
        "curate: the outputs of the [curate] stages",
    )
    num_train: int = Field(64, ge=2, description="demo: number of preference (train) records")
    num_test: int = Field(16, ge=0, description="demo: number of test records")
    seed: int = Field(0, ge=0, description="demo: seed of the scene generator")
    min_image_size: int = Field(256, ge=16, description="demo: smallest image side in pixels")
    max_image_size: int = Field(512, ge=16, description="demo: largest image side in pixels")
    train_file: EnvStr | None = Field(None, description="files: preference records (JSON, JSONL, parquet)")
    train_images: EnvStr | None = Field(None, description="files: folder train image paths start at")
    test_file: EnvStr | None = Field(None, description="files: test records (JSONL, JSON list, parquet)")
    test_images: EnvStr | None = Field(None, description="files: folder the test image paths are relative to")

    @field_validator("train_file", "test_file", "train_images", "test_images")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked when the recipe is validated: a missing file fails at submit, not in a job."""
        if value is None:
            return None
        return existing_path(value, "dir" if info.field_name.endswith("images") else "file")

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.min_image_size > self.max_image_size:
            raise ValueError(f"min_image_size {self.min_image_size} > max_image_size {self.max_image_size}")
        if self.source == "files":
            if not (self.train_file or self.test_file):
                raise ValueError("source = 'files' needs train_file and/or test_file")
            for split in ("train", "test"):
                if getattr(self, f"{split}_file") and not getattr(self, f"{split}_images"):
                    raise ValueError(f"{split}_file needs {split}_images (the image root)")
        return self


def run_data(ctx: TaskContext) -> list[str]:
    """Generate or check the source files; write ``data.json``."""
    spec: DataSpec = ctx.spec
    from mcmdpo.method.data import manifest as data_manifest

    if spec.source == "demo":
        manifest = data_manifest.demo_manifest(spec, ctx.out_dir / DEMO_DIR, DEMO_DIR)
        outputs = [MANIFEST, DEMO_DIR]
    elif spec.source == "files":
        manifest = data_manifest.files_manifest(spec, data_manifest.bad_record_policy(ctx.recipe))
        outputs = [MANIFEST]
    else:
        if not ctx.inputs.get("curate_split"):
            raise MissingInput("'curate' needs the [curate] stages in the recipe", field="data.source")
        manifest = data_manifest.curated_manifest(curated_files(ctx.inputs["curate_split"][0]))
        outputs = [MANIFEST]
    pause_for_tests(ctx)  # the test hook, as every stage has it (a kill can land before the manifest)
    write_json_atomic(ctx.out_dir / MANIFEST, manifest)
    ctx.summary.update({s: info["num_records"] for s, info in manifest["splits"].items()})
    return outputs


def data_tasks(spec: DataSpec, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task; ``files`` are checked record by record right now, at validation (before queueing)."""
    if spec.source == "files":
        from mcmdpo.method.data import manifest as data_manifest

        data_manifest.check_files(spec, data_manifest.bad_record_policy(doc))
    return [{}]


def data_stale(task_dir: Path, manifest: Mapping[str, Any]) -> str | None:
    from mcmdpo.method.data.manifest import changed_split

    return changed_split(task_dir, MANIFEST)


def data_uses(spec: DataSpec, doc: Mapping[str, Any]) -> tuple[str, ...]:
    return ("curate_split",) if spec.source == "curate" else ()


STAGE = register(
    Stage(
        name="data",
        spec=DataSpec,
        run=run_data,
        after=("curate_split",),
        uses=data_uses,
        tasks=data_tasks,
        stale=data_stale,
    )
)
