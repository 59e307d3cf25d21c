"""SparseML recipes: read and check the text, build the modifier manager, find when the recipe adds QAT structure."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from lit_kd.compat.extras import require
from lit_kd.compat.sparseml import apply_sparseml_compat

RECIPE_SUFFIXES = (".yaml", ".yml", ".md")


def read_recipe(recipe: str) -> str:
    """The recipe's YAML text from a file path (``.yaml``, ``.yml``, or ``.md`` with YAML front matter) or an inline
    YAML string; clear errors for a missing file, a file of another kind, bad YAML, and a text that is no recipe."""
    if not isinstance(recipe, str):
        raise TypeError(f"SparseML recipe must be a file path or inline YAML text, got {type(recipe).__name__}")
    text = recipe
    single_line = "\n" not in recipe.strip()
    looks_like_path = single_line and recipe.strip().endswith(RECIPE_SUFFIXES)
    if looks_like_path:
        path = Path(os.path.expandvars(recipe.strip())).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"SparseML recipe file {str(path)!r} does not exist")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"SparseML recipe file {str(path)!r} cannot be read as text ({type(err).__name__}: {err})") from err
    elif single_line and Path(os.path.expandvars(recipe.strip())).expanduser().is_file():
        raise ValueError(
            f"SparseML recipe {recipe.strip()!r} is a file without a recipe suffix: expected a "
            f"{', '.join(RECIPE_SUFFIXES)} file (or inline recipe YAML)"
        )
    name = recipe.strip() if looks_like_path else "<inline>"
    body = text.split("---")[1] if text.lstrip().startswith("---") and text.count("---") >= 2 else text  # .md: YAML front matter
    try:
        parsed = yaml.load(body, Loader=_TagTolerantLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"SparseML recipe {name} does not parse{where}: {problem}") from err
    if not isinstance(parsed, dict):
        if single_line and not looks_like_path:
            what = f"{recipe.strip()!r} is neither a recipe file ({', '.join(RECIPE_SUFFIXES)}) nor inline"
        else:
            what = f"{name} is not"
        got = type(parsed).__name__ if parsed is not None else "nothing"
        raise ValueError(
            f"SparseML recipe {what} recipe YAML: expected a mapping with modifiers (modifiers: [!GMPruningModifier ...]), got {got}"
        )
    return text


class _TagTolerantLoader(yaml.SafeLoader):
    """SafeLoader that accepts SparseML's ``!ModifierName`` tags (only for checking the syntax)."""


_TagTolerantLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else None
)


def build_manager(recipe_text: str, recipe_args: dict | None = None):
    require("sparseml", "a SparseML recipe")
    apply_sparseml_compat()
    import sparseml.pytorch.sparsification  # noqa: F401  (registers the modifier YAML tags)
    from sparseml.pytorch.optim import ScheduledModifierManager

    return ScheduledModifierManager.from_yaml(recipe_text, recipe_variables=dict(recipe_args or {}))


def quiet_loggers():
    """SparseML's modifier logs go to the ``lit_kd.sparseml`` Python logger. Without a logger of its own, SparseML
    would create one that writes files under ``sparse_logs/`` in the working directory."""
    import logging

    from sparseml.pytorch.utils import LoggerManager, PythonLogger

    return LoggerManager([PythonLogger(logger=logging.getLogger("lit_kd.sparseml"))], log_python=False)


def structure_epoch(manager) -> float | None:
    """Epoch at which the recipe changes the network's structure (QAT starts), or None."""
    starts = [m.start_epoch for m in manager.iter_modifiers() if type(m).__name__ == "QuantizationModifier"]
    return min(starts) if starts else None
