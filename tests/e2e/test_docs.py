"""The documentation holds: the generated recipe reference is current; in README.md, BENCHMARKS.md and
docs/, every relative link resolves (file and heading), every quoted ``mcmdpo ...`` command line parses
against the CLI, and every repository path and ``mcmdpo.*`` module named exists; the README stays short."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
COMMAND = re.compile(r"^(?:\$\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:\S*/)?mcmdpo(?:\s|$)")
SEPARATOR = re.compile(r"\s*(?:&&|\|\||;)\s*|\s+\|\s+")
REPO_PATH = re.compile(r"^(?:mcmdpo|bench|tests|tools|slurm|recipes|docs)/[\w./-]*$")
MODULE = re.compile(r"^mcmdpo(?:\.[A-Za-z_]\w*)+$")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.rglob("*.md"))]


def split_code(text: str) -> tuple[str, list[str]]:
    """(the text outside fenced code blocks, the lines inside them)."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append(line)
    return "\n".join(prose), code


def inline_code(text: str) -> list[str]:
    """Every inline code span outside fenced blocks, whitespace collapsed (spans may wrap lines)."""
    return [" ".join(span.split()) for span in INLINE.findall(split_code(text)[0])]


def link_targets(text: str) -> list[str]:
    """The targets of the Markdown links outside code."""
    return LINK.findall(INLINE.sub("", split_code(text)[0]))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text`` (lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` for repeats)."""
    found: set[str] = set()
    for line in split_code(text)[0].splitlines():
        if re.match(r"^#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            repeat = sum(1 for a in found if a == slug or re.fullmatch(rf"{re.escape(slug)}-\d+", a))
            found.add(f"{slug}-{repeat}" if repeat else slug)
    return found


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file (or heading, for ``file.md#anchor``) does not exist; web
    links and pure #anchors are skipped."""
    broken = []
    for target in link_targets(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        file, _, anchor = target.partition("#")
        where = path.parent / file
        if not where.exists() or (
            anchor and where.suffix == ".md" and anchor not in anchors(where.read_text())
        ):
            broken.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {target}")
    return broken


def quoted_commands(text: str) -> list[str]:
    """``mcmdpo ...`` command lines: in fenced blocks and in inline code, split at ``&&``, ``;``, ``|``."""
    found = []
    for line in [*split_code(text)[1], *inline_code(text)]:
        for part in SEPARATOR.split(line.strip()):
            if COMMAND.match(part):
                found.append(part)
    return found


def option_names(command: Any) -> dict[str, bool]:
    """Option name -> whether it is a flag (takes no value), ``--help`` included. Typer builds its
    commands on a click of its own, so commands and options are recognised by their attributes."""
    names = {"--help": True}
    for param in command.params:
        if param.param_type_name == "option":
            names.update({name: param.is_flag for name in (*param.opts, *param.secondary_opts)})
    return names


def is_option(token: str) -> bool:
    return token.startswith("--") and token != "--" or re.fullmatch(r"-[A-Za-z]", token) is not None


def command_problems(line: str, group: Any) -> list[str]:
    """What does not parse in ``line``: an unknown (sub)command, or an option the command lacks."""
    tokens = shlex.split(re.sub(r"(^|\s)#.*$", "", line.removeprefix("$ ")))
    while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
        tokens.pop(0)  # VAR=value before the program
    command, name, rest = group, "mcmdpo", tokens[1:]
    while hasattr(command, "commands"):  # a group: its options, then a subcommand
        options, i = option_names(command), 0
        while i < len(rest) and is_option(rest[i]):
            flag = rest[i].split("=")[0]
            if flag not in options:
                return [f"{line}: {name} has no option {flag}"]
            takes_value = not options[flag] and "=" not in rest[i]
            i += 2 if takes_value else 1
        if i == len(rest):
            return []
        if rest[i] not in command.commands:
            return [f"{line}: {name} has no command {rest[i]!r} (commands: {', '.join(command.commands)})"]
        command, name, rest = command.commands[rest[i]], f"{name} {rest[i]}", rest[i + 1 :]
    options = option_names(command)
    return [
        f"{line}: {name} has no option {token.split('=')[0]}"
        for token in rest
        if is_option(token) and token.split("=")[0] not in options
    ]


def cli_group() -> Any:
    import mcmdpo.cli

    group = typer.main.get_command(mcmdpo.cli.app)
    assert "submit" in group.commands
    return group


def missing_names(text: str) -> list[str]:
    """Repository paths (``mcmdpo/...``, ``bench/...``, ...) and ``mcmdpo.*`` modules in inline code
    that do not exist (for a module, every package and module part must exist, and the first name after
    the module must appear in its source)."""
    words = [re.split(r"[(\[]", word)[0].strip(",;:.") for span in inline_code(text) for word in span.split()]
    return [word for word in words if not named_exists(word)]


def named_exists(word: str) -> bool:
    if REPO_PATH.match(word):
        return (ROOT / word.rstrip("/")).exists()
    if MODULE.match(word):
        return module_exists(word.split("."))
    return True


def defined_names(source: str) -> set[str]:
    """The names a module defines or imports at its top level (``if`` / ``try`` bodies included)."""
    names: set[str] = set()
    body = list(ast.parse(source).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.If | ast.Try):
            body += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
    return names


def module_exists(parts: list[str]) -> bool:
    """``mcmdpo.a.b.name``: every package and module exists, and ``name`` is defined in its module."""
    path = ROOT
    for i, part in enumerate(parts):
        if (path / part).is_dir():
            path = path / part
            continue
        if (path / f"{part}.py").is_file():
            following = parts[i + 1 : i + 2]
            return not following or following[0] in defined_names((path / f"{part}.py").read_text())
        init = path / "__init__.py"
        return i > 1 and init.is_file() and part in defined_names(init.read_text())
    return True


def test_the_generated_reference_is_current(tmp_path):
    from mcmdpo.batch.reference import render, write

    write(tmp_path, render())
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    committed = {p.name: p.read_text() for p in (DOCS / "reference").glob("*.md")}
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert stale == [], f"docs/reference is stale ({', '.join(stale)}): run make docs"


def test_every_relative_link_resolves():
    broken = [b for path in doc_files() for b in broken_links(path)]
    assert broken == [], "\n".join(broken)


def test_every_quoted_command_parses():
    group = cli_group()
    checked, problems = 0, []
    for path in doc_files():
        for line in quoted_commands(path.read_text()):
            checked += 1
            problems += [f"{path.relative_to(ROOT)}: {p}" for p in command_problems(line, group)]
    assert checked > 20, "the command extraction finds (almost) nothing"
    assert problems == [], "\n".join(problems)


def test_every_named_path_and_module_exists():
    missing = [f"{p.relative_to(ROOT)}: {name}" for p in doc_files() for name in missing_names(p.read_text())]
    assert missing == [], "\n".join(missing)


def test_the_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move text to docs/"
    )


DOC = """Run `mcmdpo submit recipes/demo.toml --dry-run` first, or `mcmdpo status
runs/demo --json`; the [recipe reference](reference/index.md), [a web page](https://example.org)
and [this section](#here).

```bash
NLTK_DATA=x mcmdpo --debug submit recipes/demo.toml --set sft.lr=1e-4   # a comment --not-a-flag
mcmdpo assets check recipes/demo.toml && mcmdpo verify runs/demo
echo mcmdpo is not a command here
```
"""


def test_the_checks_read_fenced_and_inline_code():
    assert quoted_commands(DOC) == [
        "NLTK_DATA=x mcmdpo --debug submit recipes/demo.toml --set sft.lr=1e-4   # a comment --not-a-flag",
        "mcmdpo assets check recipes/demo.toml",
        "mcmdpo verify runs/demo",
        "mcmdpo submit recipes/demo.toml --dry-run",
        "mcmdpo status runs/demo --json",
    ]
    assert [command_problems(c, cli_group()) for c in quoted_commands(DOC)] == [[]] * 5
    assert link_targets(DOC) == ["reference/index.md", "https://example.org", "#here"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("mcmdpo submit recipes/demo.toml --dry-runn", "mcmdpo submit has no option --dry-runn"),
        ("mcmdpo sumbit recipes/demo.toml", "mcmdpo has no command 'sumbit'"),
        ("mcmdpo --debugg status runs/demo", "mcmdpo has no option --debugg"),
        ("mcmdpo assets chek recipes/demo.toml", "mcmdpo assets has no command 'chek'"),
        ("mcmdpo status runs/demo --json --tokenizer=punkt", "mcmdpo status has no option --tokenizer"),
    ],
)
def test_the_command_check_can_fail(line, problem):
    problems = command_problems(line, cli_group())
    assert len(problems) == 1 and problem in problems[0]


def test_the_link_and_name_checks_can_fail(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# There\n\n## The `[a.b]` table (x)\n\n```\n# not a heading\n```\n")
    page.write_text(
        "[ok](there.md#the-ab-table-x) [top](there.md#there) [gone](missing.md)"
        " [no heading](there.md#not-a-heading) [web](http://x.org/y.md) [here](#top)\n"
    )
    assert [b.split(": ")[-1] for b in broken_links(page)] == ["missing.md", "there.md#not-a-heading"]
    text = (
        "`mcmdpo/batch/launch.py`, `mcmdpo/launch.py`, `mcmdpo.method.losses.mcmdpo_loss(policy, ...)`, "
        "`mcmdpo.losses`, `mcmdpo.handoff.model_dir`, `mcmdpo.handoff.upstream_model`"
    )
    assert missing_names(text) == ["mcmdpo/launch.py", "mcmdpo.losses", "mcmdpo.handoff.upstream_model"]
