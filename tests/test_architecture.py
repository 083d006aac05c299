"""The house rules of the package, read from the source with ``ast`` (no imports run).

- Stages hand off through the library: no stage module imports another stage module, and nothing in
  ``mcmdpo/`` outside ``stages/`` imports a stage module (``mcmdpo.stage.load_plugins`` imports the
  ``mcmdpo.stages`` package by name; ``stages/__init__.py`` imports the stages for the registry).
- Functions stay short (<= 60 lines) and stage files thin (<= 150 lines).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mcmdpo"
STAGES = PACKAGE / "stages"
MAX_FUNCTION_LINES = 60
MAX_STAGE_FILE_LINES = 150


def imported_modules(source: str, package: str) -> list[tuple[int, list[str]]]:
    """Per import statement: its line and the absolute module names it may load (relative resolved)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            out.append((node.lineno, [base, *(f"{base}.{alias.name}" for alias in node.names)]))
    return out


def stage_imports(source: str, where: str, package: str) -> list[str]:
    """The import statements in ``source`` that load a stage module (``mcmdpo.stages.<name>``)."""
    names = {p.stem for p in STAGES.glob("*.py") if p.stem != "__init__"}
    found = []
    for line, modules in imported_modules(source, package):
        hits = [m for m in modules if m.split(".")[:2] == ["mcmdpo", "stages"] and m.count(".") >= 2]
        if any(m.split(".")[2] in names for m in hits):
            found.append(f"{where}:{line}: imports {hits[0]}")
    return found


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])


def test_no_stage_imports_another_stage_and_the_library_imports_none():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == STAGES / "__init__.py":
            continue
        offenders += stage_imports(path.read_text(), str(path.relative_to(PACKAGE.parent)), package_of(path))
    assert offenders == [], "\n".join(offenders)


def test_the_import_check_finds_stage_imports():
    # the rule must be able to fail: what a stage-to-stage import looks like, in every spelling
    source = (
        "from mcmdpo.stages.model import ModelSpec\nfrom .data import DataSpec\n"
        "import mcmdpo.stages.eval\nfrom mcmdpo.stages import score\nfrom mcmdpo.stage import Stage\n"
    )
    found = stage_imports(source, "fake.py", "mcmdpo.stages")
    assert [f.split(": imports ")[0] for f in found] == ["fake.py:1", "fake.py:2", "fake.py:3", "fake.py:4"]


def test_functions_are_short_and_stage_files_thin():
    long_functions = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {length}"
                    )
    assert long_functions == [], "\n".join(long_functions)
    thick = [
        f"{p.name}: {n} lines"
        for p in sorted(STAGES.glob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_STAGE_FILE_LINES
    ]
    assert thick == [], "\n".join(thick)
