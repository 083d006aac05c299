from __future__ import annotations

import pytest

from mcmdpo.batch.recipe import RecipeError, load_recipe
from mcmdpo.batch.recipe.lines import key_lines
from tests.helpers.recipes import BASE


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return [str(p) for p in info.value.problems]


def test_valid_recipe_fills_defaults(write_recipe):
    recipe = load_recipe(write_recipe(BASE))
    assert recipe.run.name == "t"
    assert recipe.cluster.executor == "local"
    assert recipe.doc["count"] == {
        "shards": 4,
        "steps": 3,
        "step_s": 0.0,
        "fail_index": None,
        "fail_unless": None,
        "pad_bytes": 0,
        "llm": None,
    }
    assert list(recipe.stages) == ["count", "sum"]


def test_all_errors_at_once_with_lines_and_did_you_mean(write_recipe):
    path = write_recipe(BASE.replace("steps = 3", "stepz = 3\nshards = -1").replace("shards = 4\n", ""))
    found = problems(path)
    assert f"{path}:7: count.stepz: unknown key; did you mean 'steps'?" in found[0] or any(
        f"{path}:7: count.stepz: unknown key; did you mean 'steps'?" in p for p in found
    )
    assert any(
        p.startswith(f"{path}:8: count.shards: input should be greater than or equal to 1") for p in found
    )
    assert len(found) == 2


def test_unknown_section_and_wrong_type(write_recipe):
    path = write_recipe(
        BASE + '\n[summ]\nscale = 1\n\n[cluster]\nexecutor = "slurmm"\nmax_parallel = "two"\n'
    )
    found = problems(path)
    assert any(p.startswith(f"{path}:13: summ: unknown section; did you mean 'sum'?") for p in found)
    assert any(
        p.startswith(f"{path}:17: cluster.executor: input should be 'local', 'slurm' or 'debug'")
        for p in found
    )
    assert any(p.startswith(f"{path}:18: cluster.max_parallel:") for p in found)


def test_toml_syntax_error_names_line(write_recipe):
    path = write_recipe(BASE + "\n[sum\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}:13: TOML syntax error")


def test_missing_file_and_missing_run(write_recipe, tmp_path):
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: file not found"]
    path = write_recipe("[count]\nshards = 1\n")
    assert any("missing section [run]" in p for p in problems(path))


def test_overrides_apply_before_validation(write_recipe):
    path = write_recipe(BASE)
    recipe = load_recipe(path, ["count.steps=7", "sum.scale=5", "cluster.resources.count.timeout_min=0.5"])
    assert recipe.doc["count"]["steps"] == 7 and recipe.doc["sum"]["scale"] == 5
    assert recipe.cluster.resources["count"].timeout_min == 0.5
    found = problems(path, ["count.steps=-2", "count.nope=1"])
    assert any(p.startswith("--set count.steps=-2: count.steps: input should be greater") for p in found)
    assert any(p.startswith("--set count.nope=1: count.nope: unknown key") for p in found)
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        load_recipe(path, ["novalue"])


def test_sweep_expands_deterministically(write_recipe):
    path = write_recipe(BASE + '\n[sweep]\n"sum.scale" = [1, 2, 3]\ncount.steps = [5, 1]\n')
    recipe = load_recipe(path)
    points = [v.point for v in recipe.variants]
    assert points == [{"count.steps": s, "sum.scale": c} for s in (5, 1) for c in (1, 2, 3)]
    assert [v.doc["sum"]["scale"] for v in recipe.variants] == [1, 2, 3, 1, 2, 3]


def test_sweep_errors(write_recipe):
    path = write_recipe(
        BASE + '\n[sweep]\n"sum.scal" = [1, 2]\n"count.steps" = [1, -1]\n"run.seed" = [1]\nx = 3\n'
    )
    found = problems(path)
    assert any(p.startswith(f"{path}:14: sum.scal: unknown key; did you mean 'scale'?") for p in found)
    assert any(p.startswith(f"{path}:15: count.steps: input should be greater") for p in found)
    assert any(p.startswith(f"{path}:16: sweep.run.seed: sweeps apply to stage sections") for p in found)
    assert any(p.startswith(f"{path}:17: sweep.x: must be a non-empty list") for p in found)


@pytest.mark.parametrize(
    "field,value",
    [
        ("run.name", '"x; rm -rf /"'),
        ("run.name", '"$(whoami)"'),
        ("cluster.resources.count.partition", '"debug\\n#SBATCH --uid=0"'),
        ("cluster.resources.count.account", '"a b"'),
        ("cluster.resources.default.qos", '"`id`"'),
    ],
)
def test_shell_metacharacters_rejected(write_recipe, field, value):
    path = write_recipe(BASE)
    found = problems(path, [f"{field}={value}"])
    assert any(field in p and "string should match pattern" in p for p in found), found


def test_unknown_profile_and_resource_stage(write_recipe):
    path = write_recipe(BASE + '\n[cluster]\nprofile = "nowhere"\n[cluster.resources.cont]\nnodes = 1\n')
    found = problems(path)
    assert any(
        "cluster.profile: no profile 'nowhere' in slurm/profiles (have: a100, local" in p for p in found
    )
    assert any("cluster.resources.cont: unknown key; did you mean 'count'?" in p for p in found)


def test_plugin_import_error(write_recipe):
    path = write_recipe(BASE.replace("tests.helpers.fixture_stages", "tests.no_such_module"))
    assert any("run.plugins: cannot import" in p for p in problems(path))


def test_key_lines_scanner():
    text = '[a]\nx = 1\n"q.k" = 2\narr = [\n  1,\n  2,\n]\ny.z = 3\n[b.c]\nw = """\nm = 4\n"""\nv = 5\n'
    lines = key_lines(text)
    assert lines == {"a": 1, "a.x": 2, "a.q.k": 3, "a.arr": 4, "a.y.z": 8, "b.c": 9, "b.c.w": 10, "b.c.v": 13}
