"""Recipe loading: TOML + overrides -> validation against the schema and stage specs -> sweep points."""

from __future__ import annotations

import copy
import itertools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import mcmdpo.batch.recipe.profiles as profiles
from mcmdpo.batch import memory
from mcmdpo.batch.errors import McmdpoError
from mcmdpo.batch.recipe.errors import Problem, RecipeError, did_you_mean
from mcmdpo.batch.recipe.lines import line_of
from mcmdpo.batch.recipe.schema import ClusterSpec, RunSpec
from mcmdpo.batch.recipe.toml import load_toml, parse_override, set_dotted
from mcmdpo.batch.stage import Stage, load_plugins

FIXED_SECTIONS: dict[str, type[BaseModel]] = {"run": RunSpec, "cluster": ClusterSpec}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe (one sweep point); ``variants`` holds every point of the ``[sweep]`` grid."""

    path: Path
    run: RunSpec
    cluster: ClusterSpec
    stages: dict[str, Any]
    doc: dict[str, Any]
    profile: dict[str, Any]
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    point: dict[str, Any] = field(default_factory=dict)
    variants: tuple[Recipe, ...] = ()
    overrides: tuple[str, ...] = ()
    """The ``--set`` texts it was loaded with (recorded with each submission)."""

    @property
    def run_dir(self) -> Path:
        return (self.run.output_root / self.run.name).absolute()

    def resolved_doc(self) -> dict[str, Any]:
        """The validated recipe with every default filled in (and its ``[sweep]``)."""
        doc = dict(self.doc)
        if self.sweep:
            doc["sweep"] = {f'"{k}"': v for k, v in self.sweep.items()}
        return doc

    def resolved_toml(self) -> str:
        """:meth:`resolved_doc` as TOML (what ``mcmdpo validate`` prints, and the run dir keeps)."""
        from mcmdpo.batch.recipe.toml import dump_toml

        return dump_toml(self.resolved_doc())


@dataclass
class _Source:
    """Where keys come from, to put a file:line (or the --set text) on each problem."""

    path: str
    lines: dict[str, int]
    overridden: dict[str, str] = field(default_factory=dict)
    swept: dict[str, str] = field(default_factory=dict)

    def problem(self, key: str, message: str) -> Problem:
        for origin, text in (*self.swept.items(), *self.overridden.items()):
            if key == origin or key.startswith(origin + ".") or (key and origin.startswith(key + ".")):
                if text.startswith("--set"):
                    return Problem(text, None, key, message)
                return Problem(self.path, line_of(self.lines, text), key, message)
        return Problem(self.path, line_of(self.lines, key), key, message)


FRAMEWORK_SECTIONS = ("run", "cluster", "sweep")
"""Sections every recipe has (defaults); any other top-level section is a stage."""


def load_recipe(
    path: Path | str,
    overrides: Sequence[str] = (),
    transform: Callable[[dict[str, Any]], None] | None = None,
) -> Recipe:
    """Read, override, validate and expand a recipe; raise :class:`RecipeError` with every problem.

    ``transform(doc)`` may rewrite the raw document (``[sweep]`` included) after the overrides and
    before validation (``mcmdpo.smoke.standins`` makes the smoke version of a recipe this way).
    """
    path = Path(path)
    doc, lines = load_toml(path)
    source = _Source(str(path), lines)
    problems: list[Problem] = []
    added: dict[str, str] = {}  # sections only --set names: allowed for a stage the recipe implies
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in doc and parts[0] not in FRAMEWORK_SECTIONS:
            added.setdefault(parts[0], text)
        set_dotted(doc, parts, value, f"--set {text}")
        source.overridden[".".join(parts)] = f"--set {text}"
    if transform is not None:
        transform(doc)
    sweep = _extract_sweep(doc.pop("sweep", {}), source, problems)
    registry = _load_registry(doc, source, problems)
    for name, text in added.items():
        if name not in registry:
            raise RecipeError([_adds_a_stage(name, text)])
    base = _validate(doc, source, registry, path, problems)
    if base is None:
        raise RecipeError(problems)
    implied = {n: spec for n, spec in base.stages.items() if n not in added}
    _add_implied(implied, registry)  # the stages the recipe has without the sections --set added
    for name, text in added.items():
        if name not in implied:
            raise RecipeError([_adds_a_stage(name, text)])
    points = _sweep_points(sweep)
    variants = []
    for point in points:
        variant_doc = copy.deepcopy(doc)
        for key, value in point.items():
            set_dotted(variant_doc, key.split("."), value, f"sweep.{key}")
        source.swept = {key: f"sweep.{key}" for key in point}
        variant = _validate(variant_doc, source, registry, path, problems)
        if variant is not None:
            variants.append(_with(variant, sweep=sweep, point=point))
    if not problems:
        _check_tasks(variants, registry, source, problems)
    if not problems:
        _check_memory(variants, registry, source, problems)
    if problems:
        raise RecipeError(problems)
    return _with(base, sweep=sweep, variants=tuple(variants), overrides=tuple(overrides))


def _check_tasks(
    variants: Sequence[Recipe], registry: Mapping[str, Stage], source: _Source, problems: list[Problem]
) -> None:
    """Run every stage's ``tasks()`` (and ``task_resources()``) now: errors that need the whole recipe
    (an offline reference without ``[reference]``, an unreadable data file a shard count needs, a
    model too big for the profile's GPUs) fail at validation. A problem in a data file that several
    stages read is said once, by the first of them."""
    said: set[str] = set()
    for variant in variants:
        source.swept = {key: f"sweep.{key}" for key in variant.point}
        for name, spec in variant.stages.items():
            stage = registry[name]
            try:
                tasks = stage.tasks(spec, variant.doc)
                if stage.task_resources is not None:
                    resources = profiles.resolve_resources(
                        variant.profile, variant.cluster.resources, name, stage.kind
                    ).model_dump()
                    for params in tasks:
                        stage.resources_of(spec, params, resources)
            except McmdpoError as exc:
                text = exc.render(field=False)
                if exc.file is None or text not in said:
                    problems.append(source.problem(exc.field or name, text))
                said.add(text)
            except ValueError as exc:
                problems.append(source.problem(name, str(exc)))


def _check_memory(
    variants: Sequence[Recipe], registry: Mapping[str, Stage], source: _Source, problems: list[Problem]
) -> None:
    """Refuse GPU tasks whose planned memory exceeds the profile's GPUs (:mod:`mcmdpo.batch.memory`)."""
    seen: set[str] = set()
    for variant in variants:
        source.swept = {key: f"sweep.{key}" for key in variant.point}
        for name, spec in variant.stages.items():
            stage = registry[name]
            res = profiles.resolve_resources(variant.profile, variant.cluster.resources, name, stage.kind)
            if stage.kind != "gpu" or not res.gpu_mem_gb:
                continue
            need = memory.stage_needs(stage.memory, spec, variant.doc, res.model_dump())
            if need is None or need.fits(res.gpu_mem_gb):
                continue
            text = memory.refusal(name, need, res.gpu_mem_gb, variant.cluster.profile)
            if text not in seen:
                seen.add(text)
                problems.append(source.problem(need.field, text))


def _adds_a_stage(name: str, text: str) -> Problem:
    why = f"the recipe has no [{name}] section; --set changes a recipe, it adds no stage"
    return Problem(f"--set {text}", None, name, why)


def _with(recipe: Recipe, **changes: Any) -> Recipe:
    return Recipe(**{**recipe.__dict__, **changes})


def _extract_sweep(raw: Any, source: _Source, problems: list[Problem]) -> dict[str, list[Any]]:
    """``[sweep]`` as {dotted.key: [values]}; nested tables and quoted dotted keys both work."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(value, dotted)
            else:
                flat[dotted] = value

    if not isinstance(raw, dict):
        problems.append(source.problem("sweep", "must be a table of dotted.key = [values]"))
        return {}
    walk(raw, "")
    sweep: dict[str, list[Any]] = {}
    for key, values in sorted(flat.items()):
        where = f"sweep.{key}"
        if not isinstance(values, list) or not values:
            problems.append(source.problem(where, f"must be a non-empty list of values (got {values!r})"))
        elif key.split(".")[0] in FIXED_SECTIONS:
            problems.append(source.problem(where, "sweeps apply to stage sections, not [run]/[cluster]"))
        elif len({repr(v) for v in values}) != len(values):
            problems.append(source.problem(where, f"repeated values in {values!r}"))
        else:
            sweep[key] = values
    return sweep


def _sweep_points(sweep: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product in a fixed order: keys sorted, values in the order written."""
    keys = sorted(sweep)
    return [dict(zip(keys, combo, strict=False)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _load_registry(doc: Mapping[str, Any], source: _Source, problems: list[Problem]) -> dict[str, Stage]:
    plugins = doc.get("run", {}).get("plugins", []) if isinstance(doc.get("run"), dict) else []
    try:
        return load_plugins(tuple(plugins) if isinstance(plugins, list) else ())
    except ImportError as exc:
        problems.append(source.problem("run.plugins", f"cannot import: {exc}"))
        return load_plugins(())


def _validate(
    doc: Mapping[str, Any],
    source: _Source,
    registry: Mapping[str, Stage],
    path: Path,
    problems: list[Problem],
) -> Recipe | None:
    sections: dict[str, Any] = {}
    for name, raw in doc.items():
        model = FIXED_SECTIONS.get(name) or (registry[name].spec if name in registry else None)
        if model is None:
            valid = [*FIXED_SECTIONS, "sweep", *registry]
            problems.append(source.problem(name, did_you_mean(name, valid).replace("key", "section", 1)))
            continue
        if not isinstance(raw, dict):
            problems.append(source.problem(name, f"must be a table (got {raw!r})"))
            continue
        try:
            sections[name] = model.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems(exc, name, model, source))
    for name in FIXED_SECTIONS:
        if name not in doc:
            if name == "run":
                problems.append(
                    Problem(str(path), None, "run", "missing section [run] (needs at least name)")
                )
            else:
                sections[name] = ClusterSpec()
    if "run" not in sections or "cluster" not in sections:
        return None
    _add_implied(sections, registry)
    _resolve(sections, registry)
    cluster: ClusterSpec = sections["cluster"]
    profile = _check_cluster(cluster, registry, path, source, problems)
    stages = {name: spec for name, spec in sections.items() if name in registry}
    if not any(name in registry for name in doc):
        problems.append(source.problem("", f"no stage section; known stages: {', '.join(registry)}"))
    resolved = {name: spec.model_dump(mode="json") for name, spec in sections.items()}
    return Recipe(path, sections["run"], cluster, stages, resolved, profile)


def _add_implied(sections: dict[str, Any], registry: Mapping[str, Stage]) -> None:
    """Stages implied by present sections, with their defaults (chains too: eval -> score -> report)."""
    added = True
    while added:
        added = False
        for name, stage in registry.items():
            if name not in sections and any(_implies(sections, s) for s in stage.implied_by):
                sections[name] = stage.spec.model_validate({})
                added = True


def _implies(sections: Mapping[str, Any], trigger: str) -> bool:
    """``section``: the section is present; ``section.field``: present with a true ``field``."""
    name, _, attr = trigger.partition(".")
    return name in sections and (not attr or bool(getattr(sections[name], attr, False)))


def _resolve(sections: dict[str, Any], registry: Mapping[str, Stage]) -> None:
    """Apply the stages' ``resolve`` hooks (values that depend on other sections) to the validated specs."""
    doc = {name: spec.model_dump(mode="json") for name, spec in sections.items()}
    for name, spec in list(sections.items()):
        stage = registry.get(name)
        if stage is not None and stage.resolve is not None:
            sections[name] = stage.resolve(spec, doc)


def _check_cluster(
    cluster: ClusterSpec, registry: Mapping[str, Stage], path: Path, source: _Source, problems: list[Problem]
) -> dict[str, Any]:
    for stage in cluster.resources:
        if stage != "default" and stage not in registry:
            problems.append(
                source.problem(f"cluster.resources.{stage}", did_you_mean(stage, ["default", *registry]))
            )
    found = profiles.find_profile(cluster.profile, path)
    if found is None:
        have = ", ".join(profiles.available_profiles(path)) or "none"
        problems.append(
            source.problem(
                "cluster.profile", f"no profile {cluster.profile!r} in slurm/profiles (have: {have})"
            )
        )
        return {}
    try:
        profile = profiles.load_profile(found)
        for stage in (*registry, "default"):
            profiles.resolve_resources(profile, {}, stage, "cpu")
            profiles.resolve_resources(profile, {}, stage, "gpu")
    except (RecipeError, ValidationError) as exc:
        problems.append(source.problem("cluster.profile", f"invalid profile {found}: {exc}"))
        return {}
    return profile


def _problems(exc: ValidationError, section: str, model: type[BaseModel], source: _Source) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join([section, *loc])
        if err["type"] == "extra_forbidden":
            message = did_you_mean(loc[-1], _fields_at(model, loc[:-1]))
        elif err["type"] == "missing":
            message = "required field is missing"
        else:  # a whole table's input (a model-level check) would not fit on the line: left out
            got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
            message = f"{err['msg'][:1].lower()}{err['msg'][1:]}{got}"
        out.append(source.problem(key, message))
    return out


def _fields_at(model: Any, loc: Sequence[str]) -> list[str]:
    """Field names of the sub-model at ``loc``; parts that are dict keys (stage names) are skipped."""
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part in fields:
            model = _model_in(fields[part].annotation)
            if model is None:
                return []
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return _model_in(typing.get_args(annotation)[1])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := _model_in(arg)) is not None:
                return found
    return None
