"""The benchmark registry's types: :class:`Item`, :class:`ScoreEnv`, :class:`Benchmark` (keywords
only) and the lookups; the package imports every benchmark module, which registers itself."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mcmdpo.batch.errors import ConfigError, InputError

if TYPE_CHECKING:
    from mcmdpo.evaluation.assets import AssetStatus
    from mcmdpo.evaluation.metrics.judge import JudgeClient

Kind = Literal["altext", "objhal", "mmhal", "amber"]


@dataclass(frozen=True)
class Item:
    """One benchmark question: id, question text, image (file or encoded bytes), scorer fields."""

    id: int | str
    question: str
    image: Path | bytes
    fields: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return str(self.image) if isinstance(self.image, Path) else f"<{len(self.image)} image bytes>"


@dataclass
class ScoreEnv:
    """What a scorer gets besides the predictions: settings, source paths, caches, the judge."""

    settings: Any
    """The ``[score]`` spec: ``protocols``, ``nltk``, ``judge``, ``objhal``, ``amber``."""
    source: dict[str, Any]
    """The benchmark's source paths (absolute), as :func:`source_paths` returns them."""
    cache_dir: Path | None = None
    judge: Callable[[], JudgeClient] | None = None
    """Builds the judge client (``[score.judge]``), or None when the recipe has no judge."""

    def judge_client(self) -> JudgeClient:
        if self.judge is None:
            raise ConfigError("this benchmark needs [score.judge] (an OpenAI-compatible endpoint)")
        return self.judge()


Scorer = Callable[[Sequence[Mapping[str, Any]], ScoreEnv], tuple[Any, Any, list[str]]]


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    """A registered benchmark."""

    name: str
    kind: Kind
    source: type | None
    read: Callable[[Mapping[str, Any]], list[Item]]
    score: Scorer
    assets: Callable[[str, Any, Any, bool], list[AssetStatus]]
    description: str
    needs_judge: Callable[[Any], bool] = lambda settings: False


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (a clear error listing the known ones)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


PATH_KEYS = ("file", "images", "coco_dir", "synonyms", "data_dir", "queries")


def source_paths(name: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's source dict for ``name`` from its recipe section (paths made absolute)."""
    spec = get_benchmark(name).source
    if spec is not None and hasattr(spec, "source_paths"):
        return spec.model_validate(section).source_paths()
    return {k: (str(Path(v).absolute()) if k in PATH_KEYS and v else v) for k, v in section.items()}


def read_items(name: str, source: Mapping[str, Any], limit: int | None = None) -> list[Item]:
    """All items of benchmark ``name`` (the first ``limit`` only, when given); ids must be unique."""
    items = get_benchmark(name).read(source)
    seen: set[str] = set()
    for item in items:
        key = json.dumps(item.id)
        if key in seen:
            raise InputError(f"benchmark {name}: item id {item.id!r} appears twice", file=source.get("file"))
        seen.add(key)
    return items[:limit] if limit is not None else items


def shard_items(items: Sequence[Item], shard: int, num_shards: int) -> list[Item]:
    """Contiguous shard ``shard`` of ``num_shards`` (sizes differ by at most one)."""
    n = len(items)
    return list(items[shard * n // num_shards : (shard + 1) * n // num_shards])
