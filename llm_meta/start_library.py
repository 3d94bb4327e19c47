"""The starts built on this machine: a meta-learned start per task family, each made by its recipe
(a meta-training config, `recipes/configs/starts.yaml`) into the user's cache, nothing downloaded.

    llm-meta starts list          # what is built: body, family, training tasks, validation score, size
    llm-meta starts build intents # run the recipe of one start into the cache

A built start is a meta-training run folder, `<cache>/starts/<name>/`, whose `adapter/` is a
meta-trained adapter (`FewShotClassifier.from_pretrained` and `llm-meta adapt --adapter` take it),
with `build.json` recording the recipe and the build's wall time. A folder there that is corrupt or
not a start is listed with the reason and never used.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from llm_meta.config import from_dict, parse_yaml, resolve_config_path
from llm_meta.errors import ConfigError
from llm_meta.io.atomic import write_atomic
from llm_meta.meta_training import meta_train
from llm_meta.saving.built_starts import BUILD_FILE, built_starts, starts_dir  # noqa: F401 (listed here too)

RECIPES_FILE = "recipes/configs/starts.yaml"


@dataclass
class StartRecipe:
    """How one start is built: a meta-training config and its overrides, for a family of tasks."""

    family: str  # the tasks it is for ("intents", "sentiment", "ner", ...)
    config: str  # a meta-training config (recipes/configs/...)
    overrides: list[str] = field(default_factory=list)  # "key.sub=value", after the config's own
    about: str = ""  # one line for `starts list`


def start_recipes(path: str | Path = RECIPES_FILE) -> dict[str, StartRecipe]:
    """The start recipes of `path` (default: the shipped recipes/configs/starts.yaml), by name. A
    recipe's relative `config` is read beside `path` when it is there, else as given (a shipped
    `recipes/configs/...` path works from any folder).

    Raises:
        ConfigError: a missing or malformed file, or a recipe with unknown keys.
    """
    file = resolve_config_path(path)
    if not file.is_file():
        raise ConfigError(f"start recipes not found: {file}")
    recipes = parse_yaml(file.read_text(encoding="utf-8"))
    if not isinstance(recipes, dict) or not all(isinstance(r, dict) for r in recipes.values()):
        raise ConfigError(f"{file}: expected a mapping of start names to recipes (family, config, overrides, about)")
    out = {str(name): from_dict(StartRecipe, recipe) for name, recipe in recipes.items()}
    for recipe in out.values():  # a config beside the recipes file is read from there, not from the working folder
        if (beside := file.parent / recipe.config).is_file() and not Path(recipe.config).is_absolute():
            recipe.config = str(beside)
    return out


def build_start(name: str, *overrides: str, recipes: str | Path | dict[str, StartRecipe] = RECIPES_FILE,
                overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Meta-train start `name` by its recipe into `starts_dir()/name`; its adapter folder.
    `recipes`: a recipes file or the recipes themselves (`start_recipes`); `overrides`
    ("key.sub=value") go after the recipe's; `overwrite` replaces a start built before.

    Raises:
        ValueError: an unknown start name.
        OutputError: the start's folder holds something else, or a built start without `overwrite`.
    """
    known = recipes if isinstance(recipes, dict) else start_recipes(recipes)
    if name not in known:
        raise ValueError(f"no start recipe '{name}' (known: {', '.join(known) or 'none'})")
    recipe, folder = known[name], starts_dir() / name
    began = time.perf_counter()
    results = meta_train(recipe.config, *recipe.overrides, *overrides, f"output_dir={folder}", "test.episodes=0",
                         overwrite=overwrite, trust_remote_code=trust_remote_code)
    write_atomic(folder / BUILD_FILE, json.dumps({"recipe": name, "family": recipe.family, "config": recipe.config,
                                                  "overrides": [*recipe.overrides, *overrides],
                                                  "build_seconds": round(time.perf_counter() - began, 1)}, indent=1))
    return Path(results["adapter"])
