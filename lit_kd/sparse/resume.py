"""What a SparseML manager needs back to resume mid-recipe: each modifier's schedule state and its pruning masks."""

from __future__ import annotations

from typing import Any

# SparseML's private schedule state per modifier; a pruning modifier's masks are only applied once they are enabled,
# which happens in the step where it starts, so a run resumed after that step must enable them itself
SCHEDULE_ATTRS = ("_started", "_ended", "_last_update_epoch", "_applied_sparsity", "_sparsity_applied")


def renamed_masks(manager, saved: dict[str, dict]) -> dict[str, dict]:
    """Saved mask states keyed by the names the freshly initialized modifiers use. Masks are named after the
    parameters when pruning started (``conv1.weight``); a run resumed after QAT wrapped the layers initializes its
    modifiers on the wrapped network (``conv1.module.weight``), so names are matched with the wrappers left out."""

    def plain(name: str) -> str:
        return name.replace(".module.", ".")

    renamed = {}
    for modifier in manager.iter_modifiers():
        masks = saved.get(modifier.identifier())
        if not masks or getattr(modifier, "_module_masks", None) is None:
            continue
        current = {plain(n): n for n in modifier._module_masks.names}
        renamed[modifier.identifier()] = {current.get(plain(k), k): v for k, v in masks.items()}
    return renamed


def schedule_state(modifier) -> dict[str, Any]:
    """What decides a modifier's next scheduled action: its private schedule attributes, and whether its masks apply."""
    state = {a: getattr(modifier, a) for a in SCHEDULE_ATTRS if hasattr(modifier, a)}
    if getattr(modifier, "_module_masks", None) is not None:
        state["masks_enabled"] = bool(modifier._module_masks.enabled)
    return state
