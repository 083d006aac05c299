"""User-facing errors: one base class, one line each, naming file, record or line, and field.

Everything a user can cause (a bad recipe, a malformed data file, a missing asset, an incompatible
checkpoint) raises a :class:`McmdpoError`; the CLI prints ``error: <message>`` on one line and exits 2
(``mcmdpo --debug ...`` shows the traceback). Other exceptions are bugs and keep their traceback.

The subclasses also derive from the built-in exception the code raised before (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from pathlib import Path


class McmdpoError(Exception):
    """A user error. ``where`` (file, optionally ``:line``) and ``field`` prefix the message."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        record: str | None = None,
        field: str | None = None,
    ):
        self.message, self.file, self.line, self.record, self.field = message, file, line, record, field
        super().__init__(self.render())

    def render(self, field: bool = True) -> str:
        """``file:line: record: field: message`` (the parts that are known)."""
        parts = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line else str(self.file))
        if self.record:
            parts.append(self.record)
        if self.field and field:
            parts.append(self.field)
        return ": ".join([*parts, self.message])

    def one_line(self) -> str:
        """The message on one line (continuation lines joined with ' | ')."""
        return " | ".join(line.strip() for line in str(self).splitlines() if line.strip())


def record_ref(position: int) -> str:
    """How every message names a record: ``record N``, 1-based (the Nth record of its file; in a
    JSONL file the Nth non-blank line)."""
    return f"record {position + 1}"


class ConfigError(McmdpoError, ValueError):
    """A recipe value that is wrong in combination with others (found while planning)."""


class InputError(McmdpoError, ValueError):
    """A data, benchmark or predictions file that cannot be used as it is."""


class MissingInput(McmdpoError, FileNotFoundError):
    """A file or folder that a recipe or an upstream stage names does not exist."""


class StateError(McmdpoError, ValueError):
    """The run directory is not in a state this command can work with (changed or damaged outputs)."""
