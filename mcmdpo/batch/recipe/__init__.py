"""Recipes: typed TOML documents that describe a whole run."""

from mcmdpo.batch.recipe.errors import Problem, RecipeError
from mcmdpo.batch.recipe.load import Recipe, load_recipe
from mcmdpo.batch.recipe.schema import ClusterSpec, ResourceSpec, RunSpec

__all__ = ["ClusterSpec", "Problem", "Recipe", "RecipeError", "ResourceSpec", "RunSpec", "load_recipe"]
