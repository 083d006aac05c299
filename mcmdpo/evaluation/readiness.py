"""What a recipe's evaluation needs, checked before anything runs: every resource of its benchmarks
(:func:`check_recipe`, ``mcmdpo assets``) and the check the ``eval`` and ``score`` tasks make before
loading a model (:func:`require_assets`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mcmdpo.evaluation.assets import AssetsMissing, AssetStatus, format_assets, package_status
from mcmdpo.evaluation.benchmarks import get_benchmark
from mcmdpo.evaluation.vllm_engine import INSTALL_HINT

if TYPE_CHECKING:
    from mcmdpo.batch.recipe import Recipe


def check_eval(
    eval_spec: Any, score_spec: Any, benchmarks: Iterable[str] | None = None, checksums: bool = False
) -> list[AssetStatus]:
    """Every resource the ``[eval]`` benchmarks (all, or ``benchmarks``) need under ``[score]``'s settings."""
    names = list(benchmarks) if benchmarks is not None else list(eval_spec.benchmarks)
    statuses: list[AssetStatus] = []
    for name in names:
        section = getattr(eval_spec, name, None)
        statuses += get_benchmark(name).assets(name, section, score_spec, checksums)
    return _unique(statuses)


def check_recipe(recipe: Recipe, checksums: bool = False) -> list[AssetStatus]:
    """Every external resource the recipe's benchmarks need (empty without an ``[eval]`` section)."""
    stages = getattr(recipe, "stages", {})
    if "eval" not in stages:
        return []
    statuses = check_eval(stages["eval"], stages["score"], checksums=checksums)
    if stages["eval"].engine == "vllm":  # needed on the GPU nodes only (the eval task checks it there)
        vllm = package_status("vllm", "eval engine vllm (GPU nodes)", optional=True)
        statuses.append(AssetStatus(**{**vllm.__dict__, "how_to_obtain": INSTALL_HINT}))
    return statuses


def _unique(statuses: Sequence[AssetStatus]) -> list[AssetStatus]:
    seen: dict[tuple[str, str], int] = {}
    out: list[AssetStatus] = []
    for status in statuses:
        key = (status.name, status.location)
        if key in seen:
            first = out[seen[key]]
            if status.needed_by not in first.needed_by:
                out[seen[key]] = AssetStatus(
                    **{**first.__dict__, "needed_by": f"{first.needed_by}, {status.needed_by}"}
                )
            continue
        seen[key] = len(out)
        out.append(status)
    return out


def require_assets(
    eval_spec: Any, score_spec: Any, benchmarks: Iterable[str] | None = None
) -> list[AssetStatus]:
    """Raise :class:`AssetsMissing` (with :func:`format_assets` of the missing ones) if any is missing."""
    statuses = check_eval(eval_spec, score_spec, benchmarks)
    missing = [s for s in statuses if s.missing]
    if missing:
        raise AssetsMissing("evaluation resources are missing:\n" + format_assets(missing))
    return statuses
