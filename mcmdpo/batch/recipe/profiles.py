"""Cluster profiles: ``slurm/profiles/<name>.toml`` -> resources per stage.

A profile has ``[defaults]`` (every stage), ``[kinds.cpu]`` / ``[kinds.gpu]`` (by a stage's kind)
and ``[stages.<name>]``; the recipe's ``[cluster.resources.default]`` and
``[cluster.resources.<stage>]`` come last. Later layers win field by field, and ``env`` tables
variable by variable (a site's NCCL settings in ``[defaults.env]`` survive a stage's own ``env``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.recipe.schema import RESOURCE_DEFAULTS, ResourceSpec
from mcmdpo.batch.recipe.toml import load_toml

PACKAGE_REPO = Path(__file__).resolve().parents[3]  # the checkout: mcmdpo/batch/recipe/ is 3 deep


def profile_dirs(recipe_path: Path | None = None) -> list[Path]:
    """Where profiles are looked for: $MCMDPO_PROFILES, <recipe's ancestors>/slurm/profiles, the repo."""
    dirs = []
    if env := os.environ.get("MCMDPO_PROFILES"):
        dirs.append(Path(env))
    if recipe_path is not None:
        dirs += [p / "slurm" / "profiles" for p in Path(recipe_path).resolve().parents]
    dirs.append(PACKAGE_REPO / "slurm" / "profiles")
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def find_profile(name: str, recipe_path: Path | None = None) -> Path | None:
    for d in profile_dirs(recipe_path):
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
    return None


def available_profiles(recipe_path: Path | None = None) -> list[str]:
    return sorted({p.stem for d in profile_dirs(recipe_path) for p in d.glob("*.toml")})


def _layer(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    return ResourceSpec.model_validate(raw or {}).model_dump(exclude_none=True)


def resolve_resources(
    profile: Mapping[str, Any], overrides: Mapping[str, ResourceSpec], stage: str, kind: str
) -> ResourceSpec:
    """Merge built-in defaults < profile defaults < profile kind < profile stage < recipe overrides."""
    merged = RESOURCE_DEFAULTS.model_dump()
    layers = [
        _layer(raw)
        for raw in (
            profile.get("defaults"),
            profile.get("kinds", {}).get(kind),
            profile.get("stages", {}).get(stage),
        )
    ]
    layers += [overrides[key].model_dump(exclude_none=True) for key in ("default", stage) if key in overrides]
    for layer in layers:
        env = {**(merged.get("env") or {}), **layer.get("env", {})}
        merged.update(layer)
        if env:
            merged["env"] = env
    return ResourceSpec.model_validate(merged)


def load_profile(path: Path) -> dict[str, Any]:
    return load_toml(path)[0]
