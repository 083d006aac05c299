"""The orchestration framework: recipes, plans, launching, the job runtime, status, recovery.

Nothing here imports anything outside ``mcmdpo.batch`` (``tests/test_architecture.py``). The
application is found by name, as a plugin would be: its stages through the ``mcmdpo.stages`` entry
point group (``pyproject.toml``), its version from its installed distribution.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

TOOLKIT = "mcmdpo"
"""The distribution whose version and install folder every submission and task records."""


def toolkit_version() -> str:
    """The installed toolkit's version ("unknown" when it runs from an uninstalled source tree)."""
    try:
        return metadata.version(TOOLKIT)
    except metadata.PackageNotFoundError:
        return "unknown"


def toolkit_path() -> str:
    """The folder the toolkit's code is imported from."""
    spec = importlib.util.find_spec(TOOLKIT)
    return str(Path(spec.origin).resolve().parent) if spec and spec.origin else "unknown"
