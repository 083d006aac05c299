"""The one base class of every recipe spec: frozen, unknown keys are errors.

Stage sections (``[precompute]``), their sub-tables (``[eval.objhal]``) and the specs that components own
(``JudgeSpec`` in :mod:`mcmdpo.evaluation.metrics.judge`, ``NltkSpec`` in
:mod:`mcmdpo.evaluation.metrics.nlp`) all derive
from :class:`Spec`, so a misspelled key anywhere reads the same ("unknown key; did you mean ...").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Spec(BaseModel):
    """A frozen pydantic model that forbids unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def environment_problems(self) -> list[tuple[str, str]]:
        """``(dotted field, message)`` for what the submitting environment lacks (an API key
        variable, ...): checked when a recipe is validated, never when a stored spec is read back.
        The default asks every sub-spec; a spec that needs something overrides and extends it."""
        found = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            for item in value if isinstance(value, tuple | list) else [value]:
                if isinstance(item, Spec):
                    found += [(f"{name}.{key}", why) for key, why in item.environment_problems()]
        return found


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_vars(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``${VAR}`` in a string replaced by the environment variable ``VAR`` (other values unchanged).

    A variable that is not set raises a pydantic error, which the recipe loader reports as
    ``recipe.toml:LINE: section.key: environment variable VAR is not set (in '${VAR}/x')``. Only the
    braced form is expanded (a plain ``$`` stays as written).
    """
    if not isinstance(value, str) or "${" not in value:
        return value
    env = os.environ if environ is None else environ
    missing = [m.group(1) for m in _VARIABLE.finditer(value) if m.group(1) not in env]
    if missing:
        from pydantic_core import PydanticCustomError

        names = ", ".join(dict.fromkeys(missing))
        raise PydanticCustomError(
            "variable_missing", "environment variable {names} is not set", {"names": names}
        )
    return _VARIABLE.sub(lambda m: env[m.group(1)], value)


EnvStr = Annotated[str, BeforeValidator(expand_vars)]
"""A string field with ``${VAR}`` expansion at validation: paths, endpoints, model names."""


def existing_path(value: str, kind: str = "file", contains: str | None = None, hint: str = "") -> str:
    """``value`` resolved to an absolute path that exists (a ``file`` or a ``dir``), for validators.

    Raises a pydantic error whose message becomes ``recipe.toml:LINE: section.key: ...``, so a bad
    path fails when the recipe is validated, not in a job hours later. Relative paths start at the
    directory ``mcmdpo submit`` runs in. ``contains`` names a file the folder must hold.
    """
    from pydantic_core import PydanticCustomError

    path = Path(value).expanduser().absolute()
    found = path.is_file() if kind == "file" else path.is_dir()
    if not found:
        what = "file" if kind == "file" else "folder"
        raise PydanticCustomError(
            "path_missing", f"{what} does not exist: {path} (relative paths start at the submit directory)"
        )
    if contains and not (path / contains).is_file():
        raise PydanticCustomError("path_incomplete", f"no {contains} in the folder {path}{hint}")
    return str(path)


def reject_moved(data: Any, moved: Mapping[str, Iterable[str]], target: str) -> Any:
    """A ``mode="before"`` validator body: refuse keys that moved to another section, saying where.

    ``moved`` maps a sub-table name ("" for the section itself) to the keys that left it.
    """
    if not isinstance(data, dict):
        return data
    found = []
    for table, keys in moved.items():
        sub = data if not table else data.get(table)
        found += [f"{table}.{k}" if table else k for k in keys if isinstance(sub, dict) and k in sub]
    if found:
        raise ValueError(f"{', '.join(found)} moved to the [{target}] section")
    return data
