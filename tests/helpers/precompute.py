"""Small real inputs of the precompute stage made here (JPEGs in a JSON list, a tiny LLaVA-NeXT
image processor) and running every shard task of a spec in this process."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mcmdpo.batch.stage import TaskContext
from mcmdpo.method.data.images import CLIP_MEAN, CLIP_STD
from mcmdpo.stages.precompute import PrecomputeSpec, run_precompute

S = 28
Q = "Given an image and context, generate alt-text for the image.\nContext:\n"


def save_processor(path: Path, size: int = S) -> Path:
    from transformers import LlavaNextImageProcessorPil

    pins = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pins,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(path))
    return path


def picture(seed: int, width: int, height: int) -> Image.Image:
    """Blocky random colours: stable under JPEG, different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.NEAREST)


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


SIZES = [(64, 48), (40, 60), (500, 300), (56, 56), (90, 30), (30, 70), (72, 54)]


def make_dataset(
    root: Path, n: int = 7, overrides: dict[int, dict[str, Any]] | None = None
) -> tuple[Path, Path]:
    """n JPEGs + a JSON list (alternating top-level / `text` records); ``overrides`` per position.

    An override may set ``bytes`` (the image file's content) or ``record`` (fields to replace).
    """
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        override = (overrides or {}).get(i, {})
        name = override.get("name", f"{i:03d}.jpg")
        w, h = SIZES[i % len(SIZES)]
        data = override.get("bytes", encoded(picture(i, w, h)))
        if data is not None:
            (images / name).write_bytes(data)
        texts = {"question": f"{Q}post number {i}", "chosen": f"chosen {i}", "rejected": f"rejected {i}"}
        record: dict[str, Any] = {"ds_name": "t", "image": {"path": name}, "idx": 100 + i, "image_path": name}
        record.update(texts) if i % 2 == 0 else record.update(text=json.dumps(texts))
        record.update(override.get("record", {}))
        records.append(record)
    train = root / "train.json"
    train.write_text(json.dumps(records, indent=1))
    return train, images


def context(out: Path, spec: PrecomputeSpec, shard: int = 0, num_shards: int = 1, **kw: Any) -> TaskContext:
    return TaskContext(
        stage="precompute",
        task_id=f"t{shard}",
        index=shard,
        params={"shard": shard, "num_shards": num_shards},
        spec=spec,
        recipe=kw.pop("recipe", {"run": {"name": "t"}}),
        seed=kw.pop("seed", 0),
        run_dir=out,
        out_dir=out / f"shard{shard}",
        work_dir=out / f"shard{shard}" / ".work",
        **kw,
    )


def precompute(out: Path, train: Path, images: Path, processor: Path | None, **fields: Any) -> list[Path]:
    """Run every shard task of a spec (in reverse order, to show order does not matter)."""
    num_shards = fields.pop("num_shards", 1)
    seed = fields.pop("seed", 0)
    spec = PrecomputeSpec(
        data_file=str(train),
        image_root=str(images),
        processor_path=str(processor) if processor else None,
        num_shards=num_shards,
        **fields,
    )
    paths = []
    for k in reversed(range(num_shards)):
        ctx = context(out, spec, k, num_shards, seed=seed)
        outputs = run_precompute(ctx)
        assert outputs == [
            f"shard-{k:05d}-of-{num_shards:05d}.h5",
            f"shard-{k:05d}-of-{num_shards:05d}.report.json",
        ]
        paths.append(ctx.out_dir / outputs[0])
    return paths[::-1]


def report_of(shard: Path) -> dict[str, Any]:
    return json.loads(shard.with_name(shard.name.replace(".h5", ".report.json")).read_text())
