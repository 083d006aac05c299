"""A small recipe over the plugin stages of :mod:`tests.helpers.fixture_stages` (runs under ``@RUNS@``,
which the ``write_recipe`` fixture replaces)."""

from __future__ import annotations

BASE = """\
[run]
name = "t"
output_root = "@RUNS@"
plugins = ["tests.helpers.fixture_stages"]

[count]
shards = 4
steps = 3

[sum]
scale = 2
"""
