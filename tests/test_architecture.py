"""Imports point one way (docs: DESIGN "Layout"): library <- callbacks <- lightning_cli <- study <- commands <- cli.

An AST check over every module of lit_kd/: each ``import``/``from ... import`` (at any depth: function-level imports
count) and each ``importlib.import_module("lit_kd....")`` with a literal name must name a module of the same or a
lower layer. No library or study module may import ``lit_kd.commands`` or ``lit_kd.cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_kd"

# top-level names under lit_kd -> layer; anything not listed is library (layer 0)
LAYERS = {"callbacks": 1, "lightning_cli": 2, "study": 3, "commands": 4, "cli": 5}
LAYER_NAMES = {0: "library", 1: "callbacks", 2: "lightning_cli", 3: "study", 4: "commands", 5: "cli"}


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside lit_kd (``lit_kd.study.runner`` -> 3)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every lit_kd import in ``source`` (the text of ``module``)."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from lit_kd import cli`` imports the module lit_kd.cli
            found += [(node.lineno, target)] + [(node.lineno, f"{target}.{alias.name}") for alias in node.names if target == "lit_kd"]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == "lit_kd" or name.startswith("lit_kd.")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports of ``module`` that climb to a higher layer, or reach commands/cli from the library or the study."""
    own = layer_of(module)
    out = []
    for line, target in imported_modules(source, module, is_package):
        theirs = layer_of(target)
        if theirs > own:
            out.append(f"{module}:{line} ({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[theirs]})")
        elif own <= LAYERS["study"] and target.split(".")[1:2] in (["commands"], ["cli"]):
            out.append(f"{module}:{line} imports {target}")
    return out


def all_violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    return found


def test_imports_point_one_way():
    assert all_violations() == []


def test_every_layer_is_checked():
    """The check sees modules of every layer (a renamed package would otherwise pass unchecked)."""
    layers = {layer_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert layers == set(LAYER_NAMES)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("lit_kd.study.manifest", "from lit_kd.commands.bench import cpu_info"),
        ("lit_kd.study.runner", "def f():\n    from lit_kd.cli import LitKDCLI\n"),
        ("lit_kd.study.kinds.ptq", "import importlib\nimportlib.import_module('lit_kd.commands.ptq')"),
        ("lit_kd.study.kinds.fit", "from lit_kd.cli import main"),
        ("lit_kd.study.ship", "from ..commands import classify"),
        ("lit_kd.evaluation", "from lit_kd.callbacks import SparseMLRecipe"),
        ("lit_kd.quant.sweep", "from lit_kd import study"),
        ("lit_kd.lightning_cli", "import lit_kd.study.runner"),
        ("lit_kd.commands.ptq", "from lit_kd.cli import main"),
        ("lit_kd.callbacks.iterative_pruning", "from lit_kd.lightning_cli import run"),
    ],
)
def test_a_climbing_import_is_reported(module, source):
    assert violations(source, module)


def test_downward_imports_pass():
    source = "from lit_kd.study.kinds import KINDS\nfrom lit_kd.callbacks import SparseMLRecipe\nfrom . import arguments\n"
    assert violations(source, "lit_kd.commands.ptq") == []
    assert violations("from lit_kd.lightning_cli import run\nfrom lit_kd.evaluation import accuracy", "lit_kd.study.kinds.fit") == []
