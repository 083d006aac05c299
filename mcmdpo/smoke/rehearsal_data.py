"""The rehearsal's samples, taken from the recipe's own data through the pipeline's own code.

Preference samples: every record of the training split is measured (:mod:`mcmdpo.method.lengths`:
tokens per condition, image placeholders from the image's size in ``anyres`` mode, the chosen image's
count for the rejected one); the micro-batch of the longest samples and one around the median are
built by the precompute stage's :class:`~mcmdpo.method.data.build.ShardBuilder` (rejected image, noise)
into a small shard, read back through :class:`~mcmdpo.method.samples.SampleSource`: exactly the
tensors and token sequences training and the reference stage see. SFT files: conversations through
the template's ``encode_conversation``. Eval: the benchmark items with the longest prompts.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmdpo.batch.errors import ConfigError
from mcmdpo.method.lengths import SampleLengths, sample_lengths
from mcmdpo.method.model.images import num_image_tokens


@dataclass
class PreferenceSet:
    """The longest / median micro-batches (indices into ``source``) and every record's lengths."""

    source: Any
    batches: dict[str, list[int]]
    lengths: dict[str, list[SampleLengths]]
    all_lengths: list[SampleLengths] = field(default_factory=list)


def data_files(doc: Mapping[str, Any], folder: Path, split: str = "train") -> tuple[Path, Path]:
    """(records file, image root) of the recipe's ``[data]`` split (the demo set is generated)."""
    data = doc.get("data") or {}
    if data.get("source", "demo") == "demo":
        from mcmdpo.method.data.demo import make_demo_dataset

        sizes = [
            int(data.get(k, d))
            for k, d in (
                ("num_train", 64),
                ("num_test", 16),
                ("seed", 0),
                ("min_image_size", 256),
                ("max_image_size", 512),
            )
        ]
        made = make_demo_dataset(folder / "demo", *sizes)
        return folder / "demo" / made[split]["file"], folder / "demo" / made[split]["images"]
    if data.get("source") == "files" and data.get(f"{split}_file"):
        return Path(data[f"{split}_file"]), Path(data.get(f"{split}_images") or ".")
    raise ConfigError(
        f"the rehearsal reads [data] source = 'demo' or 'files' with a {split} file", field="data"
    )


def image_size(root: Path, record: Any) -> tuple[int, int]:
    """(height, width) from the image header (nothing decoded)."""
    from PIL import Image

    from mcmdpo.method.data.records import resolve_image

    source = io.BytesIO(record.image_bytes) if record.image_bytes else resolve_image(root, record.image or "")
    with Image.open(source) as image:
        return image.height, image.width


def record_lengths(records: Sequence[Any], root: Path, processor: Any, mode: str) -> dict[int, SampleLengths]:
    """Lengths of every usable record, by position."""
    from mcmdpo.method.data.records import rejected_context_position
    from mcmdpo.method.model.template import encode_prefix

    usable = [r.problem is None and bool(r.question.strip()) for r in records]
    prefix = len(encode_prefix(processor.tokenizer))
    out = {}
    for record in records:
        if not usable[record.position]:
            continue
        size = image_size(root, record) if mode == "anyres" else (0, 0)
        n_image = num_image_tokens(processor, mode, size)  # type: ignore[arg-type]
        other = records[rejected_context_position(record.position, len(records), usable)]
        texts = {"question": record.question, "rejected_question": other.question,
                 "chosen": record.chosen, "rejected": record.rejected}  # fmt: skip
        out[record.position] = sample_lengths(processor.tokenizer, prefix, texts, (n_image, n_image))
    return out


def pick(lengths: Mapping[int, SampleLengths], micro: int, key: Any) -> dict[str, list[int]]:
    """Positions of the ``micro`` longest samples and of ``micro`` samples around the median."""
    ranked = sorted(lengths, key=lambda p: (key(lengths[p]), p), reverse=True)
    middle = max(0, min(len(ranked) - micro, len(ranked) // 2 - micro // 2))
    return {"longest": ranked[:micro], "median": ranked[middle : middle + micro]}


def preference_set(doc: Mapping[str, Any], processor: Any, micro: int, folder: Path) -> PreferenceSet:
    """Build the longest and median micro-batches into a shard under ``folder`` (module docstring)."""
    from mcmdpo.method.data.build import ShardBuilder, Source
    from mcmdpo.method.data.shards import PreferenceShards, ShardWriter
    from mcmdpo.method.data.spec import PrecomputeSpec
    from mcmdpo.method.noise import RejectedImages
    from mcmdpo.method.samples import SampleSource

    spec = PrecomputeSpec.model_validate(doc.get("precompute") or {})
    file, root = data_files(doc, folder)
    source = Source.from_file(file, root)
    rejected = RejectedImages.from_spec(spec, int((doc.get("run") or {}).get("seed", 0)) + spec.seed_offset)
    builder = ShardBuilder(spec, source, processor.image_processor, rejected)
    lengths = record_lengths(builder.records, root, processor, spec.mode)
    if not lengths:
        raise ConfigError(f"{file}: no usable preference record to rehearse with", field="data")
    micro = min(micro, len(lengths))
    chosen = pick(lengths, micro, lambda s: s.longest)
    positions = [*chosen["longest"], *chosen["median"]]
    path = folder / "rehearsal-shard.h5"
    pre = builder.pre
    with ShardWriter(path, capacity=len(positions), max_patches=pre.max_patches, patch_shape=pre.patch_shape,
                     dtype=spec.dtype, attrs={"mode": spec.mode}) as writer:  # fmt: skip
        for position in positions:
            writer.add(builder.sample(position))
        writer.close()
    shards = PreferenceShards([path])
    batches = {"longest": list(range(micro)), "median": list(range(micro, 2 * micro))}
    by_name = {name: [lengths[p] for p in chosen[name]] for name in chosen}
    return PreferenceSet(SampleSource(shards, processor, spec.mode), batches, by_name, list(lengths.values()))


class FileSftSource:
    """SFT conversations of ``[[sft.files]]`` records, read like the trainer reads them (the
    :class:`~mcmdpo.method.train.objectives.SftObjective` source interface)."""

    def __init__(self, entries: Sequence[tuple[Any, Path]], processor: Any, mode: str):
        from mcmdpo.method.data.images import ImagePreprocessor
        from mcmdpo.method.model.images import crop_side

        self.entries, self.processor, self.mode = list(entries), processor, mode
        self.side = crop_side(processor)
        self.preprocess = ImagePreprocessor(processor.image_processor, mode)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, index: int) -> str:
        return str(self.entries[index][0].id)

    def _size(self, index: int) -> tuple[int, int]:
        record, root = self.entries[index]
        return (self.side, self.side) if self.mode == "pad" else image_size(root, record)

    def sft_pieces(self, index: int) -> Any:
        from mcmdpo.method.model.template import encode_conversation

        record = self.entries[index][0]
        n = num_image_tokens(self.processor, self.mode, self._size(index))  # type: ignore[arg-type]
        return encode_conversation(self.processor.tokenizer, record.turns, n)

    def image(self, index: int, side: str = "chosen") -> tuple[Any, tuple[int, int], int]:
        import torch

        from mcmdpo.method.data.images import load_image
        from mcmdpo.method.data.records import resolve_image

        record, root = self.entries[index]
        image, _ = load_image(record.image_bytes or resolve_image(root, record.image or ""))
        pixels = torch.from_numpy(self.preprocess(image).values)
        size = self._size(index)
        return pixels, size, num_image_tokens(self.processor, self.mode, size)  # type: ignore[arg-type]


def sft_file_source(
    spec: Any, processor: Any, mode: str, micro: int
) -> tuple[FileSftSource, dict[str, list[int]]]:
    """The longest and median micro-batches of the SFT files (token count of the whole conversation)."""
    from mcmdpo.method.data.sft_records import load_sft_records

    entries = [(r, Path(f.images or ".")) for f in spec.files for r in load_sft_records(f.file)]
    entries = [(r, root) for r, root in entries if r.problem is None and r.turns]
    if not entries:
        raise ConfigError("no usable [[sft.files]] record to rehearse with", field="sft.files")
    source = FileSftSource(entries, processor, mode)
    lengths = {i: len(source.sft_pieces(i).input_ids(0)) for i in range(len(entries))}
    chosen = pick(lengths, min(micro, len(entries)), lambda n: n)
    return source, chosen


def eval_items(
    doc: Mapping[str, Any], processor: Any, mode: str, folder: Path, batch: int
) -> tuple[list, str]:
    """The ``batch`` items with the longest prompts among the first benchmark with readable files."""
    from mcmdpo.evaluation.benchmarks import read_items, source_paths

    section = doc.get("eval") or {}
    for name in section.get("benchmarks", []):
        if name == "test":
            file, images = data_files(doc, folder, "test")
            source: dict[str, Any] = {"file": str(file), "images": str(images)}
        elif isinstance(section.get(name), Mapping):
            source = source_paths(name, dict(section[name]))
        else:
            continue
        items = read_items(name, source)
        prompt = {i: _prompt_tokens(item, processor, mode) for i, item in enumerate(items)}
        ranked = sorted(prompt, key=lambda i: prompt[i], reverse=True)
        return [items[i] for i in ranked[:batch]], name
    raise ConfigError("no [eval] benchmark with readable files to rehearse with", field="eval.benchmarks")


def _prompt_tokens(item: Any, processor: Any, mode: str) -> int:
    from PIL import Image

    from mcmdpo.method.model.template import format_prompt

    size = (0, 0)
    if mode == "anyres":
        with Image.open(io.BytesIO(item.image) if isinstance(item.image, bytes) else item.image) as image:
            size = (image.height, image.width)
    text = len(processor.tokenizer(format_prompt(item.question + "\n"))["input_ids"])
    return text + num_image_tokens(processor, mode, size)  # type: ignore[arg-type]
