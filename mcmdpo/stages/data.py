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

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mcmdpo.artifacts import file_hash, write_json_atomic
from mcmdpo.errors import MissingInput
from mcmdpo.handoff import DATA_MANIFEST as MANIFEST
from mcmdpo.spec import EnvStr
from mcmdpo.stage import Stage, StageSpec, TaskContext, register

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
    if spec.source == "demo":
        manifest = _demo(spec, ctx.out_dir)
        outputs = [MANIFEST, DEMO_DIR]
    else:
        manifest = _files(spec) if spec.source == "files" else _curated(ctx)
        outputs = [MANIFEST]
    write_json_atomic(ctx.out_dir / MANIFEST, manifest)
    ctx.summary.update({s: info["num_records"] for s, info in manifest["splits"].items()})
    return outputs


def _demo(spec: DataSpec, out_dir: Path) -> dict[str, Any]:
    from mcmdpo.data.demo import make_demo_dataset

    folder = out_dir / DEMO_DIR
    made = make_demo_dataset(
        folder, spec.num_train, spec.num_test, spec.seed, spec.min_image_size, spec.max_image_size
    )
    splits = {}
    for split in ("train", "test"):
        if made[split]["num_records"] == 0:
            continue
        file = folder / made[split]["file"]
        splits[split] = {
            "file": f"{DEMO_DIR}/{made[split]['file']}",
            "images": f"{DEMO_DIR}/{made[split]['images']}",
            **_describe(file, made[split]["num_records"]),
        }
    return {"source": "demo", "splits": splits}


def _files(spec: DataSpec) -> dict[str, Any]:
    from mcmdpo.data.records import count_records, detect_format

    splits = {}
    for split in ("train", "test"):
        name, images = getattr(spec, f"{split}_file"), getattr(spec, f"{split}_images")
        if not name:
            continue
        file, root = Path(name).absolute(), Path(images).absolute()
        if not file.is_file():
            raise MissingInput(f"no such file {file}", field=f"data.{split}_file")
        if not root.is_dir():
            raise MissingInput(f"no such folder {root}", field=f"data.{split}_images")
        splits[split] = {
            "file": str(file),
            "images": str(root),
            "format": detect_format(file),
            **_describe(file, count_records(file)),
        }
    return {"source": "files", "splits": splits}


def _curated(ctx: TaskContext) -> dict[str, Any]:
    """The ``curate_split`` outputs as the train (preference.json) and test (test.jsonl) splits."""
    from mcmdpo.data.records import count_records
    from mcmdpo.handoff import curated_files

    if not ctx.inputs.get("curate_split"):
        raise MissingInput("source = 'curate' needs the [curate] stages in the recipe", field="data.source")
    files = curated_files(ctx.inputs["curate_split"][0])
    splits = {
        s: {"file": str(f), "images": str(files["images"]), **_describe(f, count_records(f))}
        for s, f in (("train", files["preference"]), ("test", files["test"]))
    }
    return {"source": "curate", "splits": splits}


def _describe(file: Path, num_records: int) -> dict[str, Any]:
    from mcmdpo.data.records import detect_format

    size = file.stat().st_size
    return {
        "format": detect_format(file),
        "num_records": num_records,
        "sha256": file_hash(file),
        "size": size,
    }


def data_uses(spec: DataSpec, doc: Any) -> tuple[str, ...]:
    return ("curate_split",) if spec.source == "curate" else ()


STAGE = register(Stage(name="data", spec=DataSpec, run=run_data, after=("curate_split",), uses=data_uses))
