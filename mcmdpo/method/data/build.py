"""Building one HDF5 preference shard: records -> decoded, preprocessed images + rejected parts -> file.

Every shard task reads the whole source file (texts only) so that record-level checks (duplicates,
the rejected-context draw, the ``random`` strategy's other image, ``text`` vs top-level disagreements)
are global and the same in every task; it then decodes, preprocesses and writes only its own
contiguous range of record positions (:func:`mcmdpo.method.data.shards.shard_range`). Decoding and
preprocessing run on the calling thread; noise, the float16 cast and the HDF5 writes on one writer
thread (:class:`Background`), so the two overlap when the task has two cores. :func:`provenance`
computes the file attributes and the ``fingerprint`` that decides reuse.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import content_hash, package_versions
from mcmdpo.batch.errors import InputError
from mcmdpo.method.noise import RejectedImages

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image
    from transformers import BaseImageProcessor

    from mcmdpo.batch.stage import TaskContext
    from mcmdpo.method.data.shards import Sample
    from mcmdpo.method.data.spec import PrecomputeSpec

PACKAGES = ("numpy", "torch", "h5py", "pillow", "transformers", "datasets")


@dataclass(frozen=True)
class Source:
    """A split's record file, its image root, its sha256 and its format."""

    file: Path
    images: Path
    sha256: str
    format: str

    @classmethod
    def from_split(cls, info: Mapping[str, Any]) -> Source:
        """From a ``data`` manifest split (:func:`mcmdpo.handoff.split_source`), checked unchanged."""
        from mcmdpo.batch.artifacts import file_hash

        file = Path(info["file"])
        size = file.stat().st_size
        change = f"{info['size']} -> {size} bytes" if size != info["size"] else ""
        if not change and file_hash(file) != info["sha256"]:
            change = "same size, different sha256"
        if change:
            raise InputError(
                f"changed since the data stage recorded it ({change}); "
                "to use the new version: mcmdpo submit <recipe> --rerun data",
                file=file,
            )
        return cls(file, Path(info["images"]), info["sha256"], info["format"])

    @classmethod
    def from_file(cls, file: str | Path, images: str | Path | None) -> Source:
        from mcmdpo.batch.artifacts import file_hash
        from mcmdpo.method.data.records import detect_format

        path = Path(file).absolute()
        return cls(path, Path(images or ".").absolute(), file_hash(path), detect_format(path))


@dataclass
class ShardReport:
    skipped: list[dict[str, Any]] = field(default_factory=list)
    converted: Counter[str] = field(default_factory=Counter)


@dataclass
class Prepared:
    """A sample between the image work (main thread) and the tensor work (writer thread)."""

    position: int
    chosen: Any
    rng: Any
    context: int = -1
    rejected: Any = None
    other: int = -1


class ShardBuilder:
    """Turns record positions into :class:`~mcmdpo.method.data.shards.Sample` objects for one shard."""

    def __init__(
        self,
        spec: PrecomputeSpec,
        source: Source,
        processor: BaseImageProcessor,
        rejected: RejectedImages,
        auditor: Any = None,
    ):
        from mcmdpo.method.data.images import ImagePreprocessor
        from mcmdpo.method.data.records import check_context_pool, load_records

        self.spec, self.source, self.rejected = spec, source, rejected
        self.records = load_records(source.file, spec.split, source.format)
        self.usable = [bool(r.question.strip()) for r in self.records]
        try:
            check_context_pool(self.usable)
        except ValueError as exc:
            raise InputError(str(exc), file=source.file) from None
        self.pre = ImagePreprocessor(processor, spec.mode)
        self.real_root = Path(os.path.realpath(source.images))
        self.report = ShardReport()
        self.auditor = auditor
        """A :class:`mcmdpo.method.data.audit.LengthAuditor` (None: lengths not audited)."""

    def bad(self, position: int, code: str, detail: str) -> Exception:
        from mcmdpo.method.data.records import BadRecord

        return BadRecord(self.source.file, position, self.records[position].id, code, detail)

    def load(self, position: int, count_mode: bool = True) -> Image.Image:
        """The decoded RGB image of a record, or BadRecord."""
        from mcmdpo.method.data.images import ImageError, load_image
        from mcmdpo.method.data.records import UnsafePath, resolve_image

        record = self.records[position]
        if record.problem is not None:
            raise self.bad(position, *record.problem)
        try:
            src = record.image_bytes or resolve_image(self.source.images, record.image or "", self.real_root)
            image, mode = load_image(src, self.spec.max_image_pixels, self.spec.non_rgb)
        except UnsafePath as exc:
            raise self.bad(position, "unsafe_path", str(exc)) from None
        except ImageError as exc:
            raise self.bad(position, exc.code, str(exc)) from None
        if mode != "RGB" and count_mode:
            self.report.converted[mode] += 1
        return image

    def prepare(self, position: int) -> Prepared:
        """The image work of one sample (decode, preprocess, PIL-level rejected image), then the
        length audit (a sample too long for ``max_length`` is a bad record ``too_long``)."""
        prepared = self._prepare(position)
        if self.auditor is not None:
            texts = self.records[position]
            other = self.records[prepared.context].question
            sizes = (prepared.chosen.size, (prepared.rejected or prepared.chosen).size)
            strings = {"question": texts.question, "rejected_question": other, "chosen": texts.chosen,
                       "rejected": texts.rejected}  # fmt: skip
            problem = self.auditor.measure(strings, sizes)
            if problem is not None:
                raise self.bad(position, "too_long", problem)
        return prepared

    def _prepare(self, position: int) -> Prepared:
        from mcmdpo.method.data.records import rejected_context_position

        image = self.load(position)
        rng = self.rejected.rng(self.records[position].id)
        prepared = Prepared(position, self.pre(image), rng)
        if self.rejected.coupled:  # upstream: c_l and m_l both come from record random_idx
            prepared.context, other_image = self.context_image(position)
            prepared.other, prepared.rejected = prepared.context, self.pre(other_image)
            return prepared
        prepared.context = rejected_context_position(position, len(self.records), self.usable)
        if self.rejected.uses_other_record:
            prepared.other, other_image = self.random_image(position, rng)
            prepared.rejected = self.pre(other_image)
        elif (changed := self.rejected.image_level(image, rng)) is not None:
            prepared.rejected = self.pre(changed)
        return prepared

    def finish(self, p: Prepared) -> Sample:
        """The tensor work of one sample (diffusion noise or zeros) -> a shard Sample.

        Runs on the writer thread: numpy releases the GIL here, overlapping the next decode.
        """
        from mcmdpo.method.data.images import Pixels
        from mcmdpo.method.data.shards import Sample

        rejected = p.rejected
        values = self.rejected.tensor_level(p.chosen.values, p.rng)
        if values is not None:
            rejected = Pixels(values, p.chosen.size)
        record = self.records[p.position]
        return Sample(
            sample_id=str(record.id),
            position=p.position,
            image_path=record.image or "",
            question=record.question,
            rejected_question=self.records[p.context].question,
            chosen=record.chosen,
            rejected=record.rejected,
            rejected_context_position=p.context,
            chosen_pixels=p.chosen.values,
            rejected_pixels=rejected.values,
            chosen_size=p.chosen.size,
            rejected_size=rejected.size,
            rejected_image_position=p.other,
        )

    def sample(self, position: int) -> Sample:
        """One finished Sample (both halves on the calling thread)."""
        return self.finish(self.prepare(position))

    def context_image(self, position: int, attempts: int = 32) -> tuple[int, Image.Image]:
        """``random`` coupled to c_l: the rejected-context record and its image.

        When that record's image cannot be used (upstream would crash), the same seeded draw goes on
        (:func:`~mcmdpo.method.data.records.context_draws`) to the next record whose question and image are
        both usable, and that record serves as c_l and m_l together.
        """
        from mcmdpo.method.data.records import BadRecord, context_draws

        draws = context_draws(position, len(self.records), self.usable)
        for _, other in zip(range(attempts), draws, strict=False):
            try:
                return other, self.load(other, count_mode=False)
            except BadRecord:
                continue
        raise self.bad(position, "no_random_image", f"no usable context image in {attempts} draws")

    def random_image(
        self, position: int, rng: np.random.Generator, attempts: int = 32
    ) -> tuple[int, Image.Image]:
        """Another record's image: uniform draws (from the sample's generator) until one decodes."""
        from mcmdpo.method.data.records import BadRecord

        for _ in range(attempts):
            other = self.rejected.other(rng, position, len(self.records))
            try:
                return other, self.load(other, count_mode=False)
            except BadRecord:
                continue
        raise self.bad(position, "no_random_image", f"no usable image in {attempts} draws")


def build_shard(
    builder: ShardBuilder, positions: range, path: Path, attrs: dict[str, Any], ctx: TaskContext
) -> dict:
    """Write the shard at ``path`` (a temporary name); return its report.

    Decoding and preprocessing run on this thread; noise, float16 conversion and HDF5 writes on one
    writer thread, so that the two overlap when the task has two cores.
    """
    from mcmdpo.method.data.shards import ShardWriter

    pre = builder.pre
    with (
        _one_torch_thread(),
        ShardWriter(
            path,
            capacity=len(positions),
            max_patches=pre.max_patches,
            patch_shape=pre.patch_shape,
            dtype=builder.spec.dtype,
            attrs=attrs,
        ) as writer,
    ):
        with Background(lambda p: writer.add(builder.finish(p))) as background:
            _prepare_all(builder, positions, background, ctx)
        report = _report(builder, positions, writer.count)
        writer.close({"num_skipped": len(report["skipped"]), "converted_modes": report["converted_modes"]})
    return report


def _prepare_all(builder: ShardBuilder, positions: range, background: Background, ctx: TaskContext) -> None:
    from mcmdpo.batch.resumable import pause_for_tests
    from mcmdpo.method.data.records import BadRecord

    started, every = time.time(), max(1, len(positions) // 10)
    for done, position in enumerate(positions, 1):
        try:
            background.put(builder.prepare(position))
        except BadRecord as exc:
            if builder.spec.on_bad_record == "fail":
                raise
            builder.report.skipped.append(exc.as_dict())
        pause_for_tests(ctx)
        if hasattr(ctx, "progress"):
            ctx.progress(done, len(positions), "records")
        if done % every == 0:
            rate = done / max(time.time() - started, 1e-9)
            ctx.log.info("%d/%d records (%.1f/s)", done, len(positions), rate)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch (used for the float16 cast) on one thread: its idle OpenMP workers otherwise spin."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Background:
    """Runs ``fn(item)`` on one background thread, in order; its first error is re-raised here."""

    _STOP = object()

    def __init__(self, fn: Callable[[Any], object], depth: int = 4):
        self._fn, self._error = fn, None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if self._error is None:
                try:
                    self._fn(item)
                except BaseException as exc:  # handed to the main thread
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self._error = self._error or RuntimeError("aborted")  # skip what is still queued
        self._queue.put(self._STOP)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error


def _report(builder: ShardBuilder, positions: range, kept: int) -> dict[str, Any]:
    skipped = builder.report.skipped
    differ = Counter(f for p in positions for f in builder.records[p].text_disagrees)
    return {
        "text_disagreements": sum(1 for p in positions if builder.records[p].text_disagrees),
        "text_disagreements_by_field": dict(differ),
        "positions": [positions.start, positions.stop],
        "num_samples": kept,
        "num_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)),
        "skipped": skipped,
        "converted_modes": dict(builder.report.converted),
        "lengths": builder.auditor.report() if builder.auditor else {"audited": False, "why": "no tokenizer"},
    }


def provenance(
    spec: PrecomputeSpec, params: Mapping[str, Any], recipe: Mapping[str, Any], source: Source,
    processor: dict[str, Any], rejected: RejectedImages,
) -> dict[str, Any]:  # fmt: skip
    """File attributes of a shard; ``fingerprint`` hashes everything that changes its content."""
    from mcmdpo import __version__
    from mcmdpo.method.data.shards import FORMAT

    content = {
        "format": FORMAT,
        "spec": spec.model_dump(mode="json"),
        "params": dict(params),
        "seed": rejected.seed,
        "source_sha256": source.sha256,
        "processor": processor,
    }
    return {
        "fingerprint": content_hash(content, length=64),
        "recipe_hash": content_hash(dict(recipe), length=64),
        "spec": content["spec"],
        "shard": int(params["shard"]),
        "num_shards": int(params["num_shards"]),
        "split": spec.split,
        "mode": spec.mode,
        **rejected.describe(),
        "rejected_context": "random.Random(position).choice(range(n)), redrawn while == position",
        "processor_config": processor,
        "source_file": str(source.file),
        "source_format": source.format,
        "source_sha256": source.sha256,
        "image_root": str(source.images),
        "package_versions": {"mcmdpo": __version__, **package_versions(PACKAGES)},
    }
