"""SparseMLRecipe: drive a SparseML recipe (gradual magnitude pruning, quantization-aware training, ...) from
Lightning hooks, with the module's own loss.

Lifecycle, mirroring ``ScheduledModifierManager.modify`` (which wraps ``optimizer.step``) with Lightning hooks instead:

- ``setup``: the recipe's epoch range sets ``trainer.max_epochs`` (a recipe relies on its fixed schedule, so a
  plateau/early-stopping callback in the same run is an error).
- ``on_train_start`` (the optimizer exists, steps per epoch are known): ``manager.initialize(network, epoch)`` at
  the current epoch (0, or where a resumed run stands). On resume, the modifiers' schedule state saved in the
  checkpoint (SparseML's private ``_started``/``_ended``/``_last_update_epoch``: GMP updates every
  ``update_frequency`` epochs after the previous update, so that is what decides when the next one falls) and the
  pruning masks are then put back, so the resumed run prunes at the same steps as an uninterrupted one.
- every optimizer step: ``manager.update`` and ``optimizer_pre_step`` before it (``on_before_optimizer_step``),
  ``optimizer_post_step`` after it (``on_train_batch_end``); the epoch is ``global_step / steps_per_epoch``.
- validation never moves quantization ranges (observers are paused, then restored).
- ``on_fit_end``: ``manager.finalize(network)`` (masks applied for good, hooks removed).

What a checkpoint of a sparsified run holds: the network's state dict (pruned weights are stored as zeros; once QAT
has started, the fused conv-BN modules and every fake-quantize module's scale, zero point and observer range), and
this callback's state: the recipe text with its variables, the recipe epoch reached, each modifier's schedule state
and SparseML's own state (one pruning mask per pruned parameter). A checkpoint whose network holds QAT modules is
loaded by first applying the recipe's structure (``manager.apply_structure``) to the fresh network, from a state-dict
pre-hook; so ``fit --ckpt_path last.ckpt`` resumes mid-recipe, and ``test`` or ``lit-kd export`` read it, with the
same callback config.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch.nn as nn
from lightning.pytorch.callbacks import EarlyStopping

from lit_kd.checkpoints import QAT_MARKERS, load_weights
from lit_kd.sparse.counts import sparsity_counts
from lit_kd.sparse.recipe import build_manager, quiet_loggers, read_recipe, structure_epoch
from lit_kd.sparse.resume import renamed_masks, schedule_state


class SparseMLRecipe(L.Callback):
    """Apply a SparseML recipe while the module trains with its own loss (see the module docstring).

    Args:
        recipe: path of a recipe (YAML, or Markdown with YAML front matter) or the recipe text itself.
        recipe_args: values for the recipe's variables (e.g. ``{num_epochs: 10, final_sparsity: 0.9}``).
        attribute: the LightningModule attribute holding the network (``model``; a DistillationModule's student).
        init_ckpt: a lit-kd checkpoint (or state-dict file) whose network weights the recipe starts from when fitting
            (the best student of an earlier stage); a resumed run then restores its own state over them.

    Example::

        from lit_kd.callbacks import SparseMLRecipe

        # gradual magnitude pruning to 90 %, then QAT; the recipe's length sets max_epochs
        recipe = SparseMLRecipe("experiments/recipes/gmp_qat.yaml", {"num_epochs": 10, "final_sparsity": 0.9})
        trainer = Trainer(callbacks=[recipe])
    """

    def __init__(self, recipe: str, recipe_args: dict[str, Any] | None = None, attribute: str = "model", init_ckpt: str | None = None):
        self.recipe_text = read_recipe(recipe)
        self.recipe_args = dict(recipe_args or {})
        self.attribute = attribute
        self.init_ckpt = init_ckpt
        self.manager = build_manager(self.recipe_text, self.recipe_args)
        self.epoch = 0.0
        self._resume_state: dict | None = None
        self._step_epoch: float | None = None
        self._paused: list[nn.Module] = []
        self._hooked: nn.Module | None = None

    @property
    def max_epochs(self) -> int:
        return math.ceil(self.manager.max_epochs)

    def network(self, pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, self.attribute)

    # ------------------------------------------------------------------ setup and checkpoint structure
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            stoppers = [type(c).__name__ for c in trainer.callbacks if isinstance(c, EarlyStopping)]
            if stoppers:
                raise ValueError(
                    f"SparseMLRecipe runs the recipe's fixed schedule of {self.max_epochs} epochs; "
                    f"remove the stopping callback(s) {stoppers} from this stage"
                )
            trainer.fit_loop.max_epochs = self.max_epochs
        network = self.network(pl_module)
        if stage == "fit" and self.init_ckpt:
            load_weights(network, self.init_ckpt)
        if self._hooked is not network:  # once per network, however many stages (fit, then test) set it up
            network.register_load_state_dict_pre_hook(self._apply_structure_for_checkpoint)
            self._hooked = network

    def _apply_structure_for_checkpoint(self, module, state_dict, prefix, *args) -> None:
        """Before a state dict with QAT modules loads into the fresh network, give the network that structure."""
        has_qat = any(k.startswith(prefix) and any(m in k for m in QAT_MARKERS) for k in state_dict)
        built = any(any(m in name for m in QAT_MARKERS) for name, _ in module.named_modules())
        start = structure_epoch(self.manager)
        if has_qat and not built and start is not None:
            self.manager.apply_structure(module, epoch=start, loggers=quiet_loggers())

    # ------------------------------------------------------------------ training
    def steps_per_epoch(self, trainer: L.Trainer) -> int:
        return max(1, int(trainer.num_training_batches) // trainer.accumulate_grad_batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.global_step / self.steps_per_epoch(trainer)
        self.manager.initialize(self.network(pl_module), epoch=self.epoch, loggers=quiet_loggers())
        if self._resume_state:
            schedules = self._resume_state.get("schedules", {})
            for modifier in self.manager.iter_modifiers():
                for attr, value in schedules.get(modifier.identifier(), {}).items():
                    if attr == "masks_enabled":
                        modifier._module_masks.enabled = value
                    else:
                        setattr(modifier, attr, value)
            self.manager.load_state_dict(renamed_masks(self.manager, self._resume_state.get("masks", {})), strict=False)
            self._resume_state = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        spe = self.steps_per_epoch(trainer)
        self._step_epoch = self.epoch = trainer.global_step / spe
        network = self.network(pl_module)
        self.manager.update(network, optimizer, self.epoch, spe)
        self.manager.optimizer_pre_step(network, optimizer, self.epoch, spe)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._step_epoch is None:  # no optimizer step in this batch (gradient accumulation)
            return
        spe = self.steps_per_epoch(trainer)
        self.manager.optimizer_post_step(self.network(pl_module), trainer.optimizers[0], self._step_epoch, spe)
        self._step_epoch = None
        self.epoch = trainer.global_step / spe

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        zeros, total = sparsity_counts(self.network(pl_module))
        if total:
            pl_module.log("sparsity/prunable", zeros / total)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validation data must not move quantization ranges: pause observers that are running."""
        self._paused = [m for m in self.network(pl_module).modules() if hasattr(m, "observer_enabled") and bool(m.observer_enabled[0])]
        for m in self._paused:
            m.disable_observer()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in self._paused:
            m.enable_observer()
        self._paused = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.manager.initialized:
            self.manager.finalize(self.network(pl_module))

    # ------------------------------------------------------------------ callback state
    def state_dict(self) -> dict[str, Any]:
        if not self.manager.initialized:
            return {"recipe": self.recipe_text, "recipe_args": self.recipe_args, "epoch": self.epoch, **(self._resume_state or {})}
        schedules = {m.identifier(): schedule_state(m) for m in self.manager.iter_modifiers()}
        return {
            "recipe": self.recipe_text,
            "recipe_args": self.recipe_args,
            "epoch": self.epoch,
            "schedules": schedules,
            "masks": self.manager.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = state_dict.get("epoch", 0.0)
        self._resume_state = {k: state_dict[k] for k in ("schedules", "masks") if k in state_dict}
