"""The house rules of the package, read from the source with ``ast`` (no imports run).

- Layers: every module belongs to one wing (``batch/`` the framework, ``method/``, ``evaluation/``,
  ``curate/``, ``report/``, ``smoke/``, ``handoff``, ``llm``, ``stages/``, the CLI) and imports only
  the wings below it (:data:`ALLOWED`); ``batch/`` imports nothing outside itself. Every import counts:
  module level, inside functions and under ``TYPE_CHECKING``.
- No import circles between modules.
- Stages hand off through the library: no stage module imports another stage module, and nothing in
  ``mcmdpo/`` outside ``stages/`` imports a stage module (the framework loads ``mcmdpo.stages`` through
  its entry point; ``stages/__init__.py`` imports the stages for the registry).
- Functions stay short (<= 60 lines) and stage files thin (<= 150 lines).
- The top level stays small (:data:`TOP_LEVEL`).
- No test module imports another test module: shared fixtures live in ``tests/conftest.py``, helpers in
  ``tests/helpers/``.
"""

from __future__ import annotations

import ast
import re
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
        "import mcmdpo.stages.eval\nfrom mcmdpo.stages import score\nfrom mcmdpo.batch.stage import Stage\n"
    )
    found = stage_imports(source, "fake.py", "mcmdpo.stages")
    assert [f.split(": imports ")[0] for f in found] == ["fake.py:1", "fake.py:2", "fake.py:3", "fake.py:4"]


TOP_LEVEL = {
    "__init__.py",
    "__main__.py",
    "cli.py",
    "handoff.py",
    "llm.py",
    "py.typed",
    "batch",
    "method",
    "evaluation",
    "curate",
    "report",
    "smoke",
    "stages",
}
ALLOWED: dict[str, set[str]] = {
    "root": set(),  # mcmdpo/__init__.py: the version
    "batch": set(),
    "llm": {"batch"},
    "method": {"batch", "root"},
    "evaluation": {"batch", "llm", "method"},
    "curate": {"batch", "llm", "method", "evaluation"},
    "handoff": {"batch", "method", "evaluation", "curate"},
    "report": {"batch", "method", "evaluation", "curate", "handoff"},
    "smoke": {"batch", "method", "evaluation", "curate"},
    "stages": {"root", "batch", "llm", "method", "evaluation", "curate", "handoff", "report", "smoke"},
    "cli": {"root", "batch", "llm", "method", "evaluation", "curate", "handoff", "report", "smoke"},
}
"""Wing -> the wings it may import (``stages`` is loaded by the framework through its entry point)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "cli" if parts[1] in ("cli", "__main__") else parts[1]


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """module -> {imported package module: line} from ``sources`` (module -> (source, is package));
    ``from a import b`` counts as importing ``a.b`` where that is a module, else ``a``."""
    graph: dict[str, dict[str, int]] = {}
    for module, (source, is_package) in sources.items():
        package = module if is_package else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for line, names in imported_modules(source, package + ".x"):
            base, *members = names
            hits = [m for m in members if m in sources] or [base]
            for name in hits:
                while name and name not in sources:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.setdefault(name, line)
    return graph


def package_sources(root: Path = PACKAGE) -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted(root.rglob("*.py"))}


def layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            here, there = wing(module), wing(target)
            if here != there and there not in ALLOWED[here]:
                out.append(f"{module}:{line} imports {target} ({here} may import {sorted(ALLOWED[here])})")
    return out


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_wing_imports_only_the_wings_below_it():
    graph = import_graph(package_sources())
    assert {wing(m) for m in graph} <= set(ALLOWED), "a module outside every wing: add it to ALLOWED"
    assert layer_violations(graph) == [], "\n".join(layer_violations(graph))


def test_no_import_circles():
    found = circles(import_graph(package_sources()))
    assert found == [], "\n".join(" <-> ".join(c) for c in found)


def test_the_top_level_stays_small():
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == TOP_LEVEL


def test_the_layer_and_circle_checks_can_fail():
    sources = {
        "mcmdpo": ("", True),
        "mcmdpo.batch": ("", True),
        "mcmdpo.batch.plan": ("def f():\n    from mcmdpo.method import losses\n", False),
        "mcmdpo.method": ("", True),
        "mcmdpo.method.losses": ("from mcmdpo.method import tree\n", False),
        "mcmdpo.method.tree": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mcmdpo.method.losses import X\n",
            False,
        ),
    }
    graph = import_graph(sources)
    assert layer_violations(graph) == [
        "mcmdpo.batch.plan:2 imports mcmdpo.method.losses (batch may import [])"
    ]
    assert circles(graph) == [["mcmdpo.method.losses", "mcmdpo.method.tree"]]


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


# ---------------------------------------------------------------- the tests themselves

TESTS = Path(__file__).resolve().parent
# an import of a test module (absolute, relative, or a test module imported from its package), also
# inside strings that run as code (``python -c "..."``), or a test module named in a string
TEST_MODULE_IMPORT = re.compile(
    r"\b(?:from|import)\s+(?:tests(?:\.\w+)*\.test_\w+|\.+(?:\w+\.)*test_\w+)"
    r"|\bfrom\s+(?:tests(?:\.\w+)*|\.+\w*(?:\.\w+)*)\s+import\s+(?:\([\w\s,]*?|[\w \t,]*?)\btest_\w+"
    r"|[\"']tests(?:\.\w+)*\.test_\w+[\"']"
)


def imports_of_test_modules(source: str, where: str) -> list[str]:
    """Lines of ``source`` that import a test module (fixtures live in conftest.py, helpers in
    tests/helpers/)."""
    return [
        f"{where}:{source.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
        for m in TEST_MODULE_IMPORT.finditer(source)
    ]


def test_no_test_module_imports_another_test_module():
    found = [
        hit
        for path in sorted(TESTS.rglob("*.py"))
        for hit in imports_of_test_modules(path.read_text(), str(path.relative_to(TESTS.parent)))
    ]
    assert found == [], "\n".join(found)
    bad = {  # "@" stands for "test_" (this file is scanned too)
        "a.py": "from tests.@recipe import BASE\n",
        "b.py": "import tests.method.@model as m\n",
        "c.py": "from tests import curate, @judge\n",
        "d.py": "from .@eval_stage import make_context\n",
        "e.py": 'code = f"from tests.stages.@eval_stage import child_main; child_main({x})"\n',
        "f.py": 'importlib.import_module("tests.@judge")\n',
        "g.py": "from tests.batch import (\n    @plan,\n)\n",
    }
    hits = [
        hit.split(": ")[0]
        for name, text in bad.items()
        for hit in imports_of_test_modules(text.replace("@", "test_"), name)
    ]
    assert hits == ["a.py:1", "b.py:1", "c.py:1", "d.py:1", "e.py:1", "f.py:1", "g.py:1"]
    good = (
        "from tests.helpers.eval import child_main\nfrom tests.helpers import curate as fx\n"
        'plugins = ["tests.helpers.fixture_stages"]\n"""No test module imports tests.test_x."""\n'
        "from tests.helpers.wordnet import text_config\n\n\ndef test_amber():\n    pass\n"
    )
    assert imports_of_test_modules(good, "ok.py") == []
