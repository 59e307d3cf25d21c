"""SparseML recipes: read and check the text, build the modifier manager, find when the recipe adds QAT structure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import yaml

from lit_kd.compat.sparseml import apply_sparseml_compat


def read_recipe(recipe: str) -> str:
    """The recipe's YAML text from a file path or an inline string; clear errors for a missing file or bad YAML."""
    text = recipe
    looks_like_path = "\n" not in recipe and recipe.strip().endswith((".yaml", ".yml", ".md"))
    if looks_like_path:
        path = Path(os.path.expandvars(recipe)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"SparseML recipe file {str(path)!r} does not exist")
        text = path.read_text()
    body = text.split("---")[1] if text.lstrip().startswith("---") else text  # a recipe .md holds YAML front matter
    try:
        yaml.load(body, Loader=_TagTolerantLoader)
    except yaml.YAMLError as err:
        where = f" (line {err.problem_mark.line + 1})" if getattr(err, "problem_mark", None) else ""
        raise ValueError(f"SparseML recipe {recipe if looks_like_path else '<inline>'} does not parse{where}: {err}") from err
    return text


class _TagTolerantLoader(yaml.SafeLoader):
    """SafeLoader that accepts SparseML's ``!ModifierName`` tags (only for checking the syntax)."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else None)


def build_manager(recipe_text: str, recipe_args: Optional[dict] = None):
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


def structure_epoch(manager) -> Optional[float]:
    """Epoch at which the recipe changes the network's structure (QAT starts), or None."""
    starts = [m.start_epoch for m in manager.iter_modifiers() if type(m).__name__ == "QuantizationModifier"]
    return min(starts) if starts else None
