"""FeatureTaps: capture intermediate outputs of any model by module path with forward hooks.

Hooks work on models we did not write and survive module swaps inside the hooked container (pruning). In a
``torch.fx.GraphModule`` (a model prepared for quantization-aware training) containers such as ``layer1`` are no
longer called: their output is the output of the last module the graph calls inside them, so that module is hooked.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn
from torch import Tensor


class FeatureTaps:
    """Forward hooks on ``paths`` of ``model`` (``"layer1"``, ``"layer4.2.conv3"``); outputs land in ``features``.

    Use as a context manager or call :meth:`remove`; after removal the model has no hooks of ours left.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        self.features: dict[str, Tensor] = {}
        self.handles = []
        for path in dict.fromkeys(paths):
            module = called_module(model, path)
            self.handles.append(module.register_forward_hook(self._store(path)))

    def _store(self, path: str):
        def hook(module, inputs, output):
            self.features[path] = output

        return hook

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.features = [], {}

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def called_module(model: nn.Module, path: str) -> nn.Module:
    """The module whose output is the output of ``path``: the module itself, or in a ``GraphModule`` where the
    container at ``path`` is not called, the last module called inside it. A model that calls no submodules says why
    in its ``untappable`` attribute (an error here)."""
    if getattr(model, "untappable", None):
        raise ValueError(f"cannot tap {path!r}: {model.untappable}")
    module = resolve_module(model, path)
    graph = getattr(model, "graph", None)
    if graph is None:
        return module
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    if path in targets:
        return module
    inside = [t for t in targets if t.startswith(path + ".")]
    if not inside:
        raise ValueError(f"module {path!r} is never called in the traced graph of {type(model).__name__}")
    return model.get_submodule(inside[-1])


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that lists what exists at the level where the path broke."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        parent = model
        for part in path.split("."):
            children = dict(parent.named_children())
            if part not in children:
                raise ValueError(f"{type(model).__name__} has no module {path!r}: {part!r} is not among {sorted(children)}") from None
            parent = children[part]
        raise
