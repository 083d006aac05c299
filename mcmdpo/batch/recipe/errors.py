"""Recipe errors, all reported at once as ``recipes/x.toml:12: train.lr: must be > 0 (got -1)``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from mcmdpo.batch.errors import McmdpoError


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RecipeError(McmdpoError, ValueError):
    """One or more problems in a recipe (or its overrides); ``str()`` lists them one per line."""

    def __init__(self, problems: Iterable[Problem]):
        unique: dict[str, Problem] = {}
        for p in problems:
            unique.setdefault(str(p), p)
        self.problems = list(unique.values())
        super().__init__("\n".join(str(p) for p in self.problems))

    def one_line(self) -> str:
        return "; ".join(str(p) for p in self.problems)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
    return f"unknown key{hint} (valid: {listing})"
