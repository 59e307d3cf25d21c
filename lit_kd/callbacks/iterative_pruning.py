"""IterativePruning: prune, fine-tune, repeat, until the network has at most ``target_nonzero`` non-zero parameters.

- The network is ``pl_module.model`` (a distillation student; the teacher is never pruned). Only conv and linear
  weights (and, with ``prune_bias``, their biases) are pruned, by L1 magnitude with ``torch.nn.utils.prune``; the
  budget counts every parameter (BatchNorm and biases too), as :func:`lit_kd.models.summary.model_summary` does.
  The never-pruned parameters count in full (as if non-zero: BatchNorm biases start at zero but do not stay there),
  so the prunable weights are pruned to ``target_nonzero - never_pruned`` and the budget holds whatever training
  does to the rest; the whole-network count is then exactly the target once those are all non-zero.
- A cycle prunes ``prune_fraction`` of the still unmasked prunable weights, never past the budget: the last cycle
  lands the count exactly on the target. Cycles start epochs ``0, finetune_epochs, 2 * finetune_epochs, ...`` until
  the budget is met; training then goes on as plain fine-tuning. The masks keep pruned weights at exactly zero
  (``weight = weight_orig * weight_mask`` before every forward), whatever momentum or weight decay do to
  ``weight_orig``.
- ``best.ckpt`` is chosen among epochs within budget: when the budget is met, the scores of the checkpoint callbacks
  (``ModelCheckpoint`` with a monitor) are reset, so an earlier, less pruned epoch cannot stay "best".
- Checkpoints are plain models: a state-dict hook writes each pruned tensor as its masked product under its own
  name (``weight``, not ``weight_orig``/``weight_mask``), so ``load_network``, ``lit-kd test`` and a fresh module
  load them. The masks travel in this callback's checkpoint state and are re-applied at ``on_train_start`` of a
  resumed fit (after the optimizer was built over the unpruned parameters, as in the uninterrupted run).
- At fit end the masks are made permanent (``prune.remove``), a per-layer table is printed and the pruned network
  is written as compact weights (``compact_weights.npz`` in the run's log folder, :mod:`lit_kd.compact_weights`:
  non-zero values and a bitmask, about 4 bytes per remaining parameter) that ``lit-kd predict -w`` and every
  other command load.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_kd.models.summary import model_summary


def nonzero_count(network: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """Non-zero parameters of the whole network, masks applied (the sum of ``model_summary``'s ``nonzero``)."""
    return sum(row.nonzero for row in model_summary(network, input_size))


def split_count(total: int, sizes: list[int]) -> list[int]:
    """``total`` split over ``sizes`` in proportion, summing exactly to ``total`` (largest remainders round up)."""
    exact = total * np.asarray(sizes, dtype=np.float64) / max(sum(sizes), 1)
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts.tolist()


def _plain_pruned_tensors(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: ``<name>_orig`` and ``<name>_mask`` of a pruned tensor become ``<name>`` (their product)."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("_orig")]:
        name = key[: -len("_orig")]
        if name + "_mask" in state_dict:
            state_dict[name] = state_dict.pop(key).detach() * state_dict.pop(name + "_mask")


class IterativePruning(L.Callback):
    """Prune-then-fine-tune cycles down to ``target_nonzero`` non-zero parameters of ``pl_module.model``.

    Args:
        target_nonzero: the budget, over all parameters of the network; between the count of never-pruned parameters
            and the network's parameter count (checked at setup).
        prune_fraction: share of the remaining (unmasked) prunable weights removed per cycle.
        finetune_epochs: training epochs after each pruning step (the cycle length).
        scope: ``global`` ranks all prunable weights together; ``layerwise`` removes the same share from every
            layer (each layer's part in proportion to its unmasked weights, so the cycle still lands exactly).
        prune_first_conv, prune_classifier: whether the first and the last conv/linear layer (in registration order)
            are pruned.
        prune_bias: also prune conv/linear biases (otherwise they count towards the budget but stay).
        input_shape: an example input shape for counting (one forward pass of ``model_summary``).
        init_ckpt: a lit-kd checkpoint (or state-dict file) whose network weights pruning starts from when fitting
            (the trained or distilled model of an earlier stage); a resumed run restores its own state over them.

    Example::

        from lit_kd.callbacks import IterativePruning

        # halve the remaining weights, fine-tune one epoch, repeat until 100,000 non-zero parameters are left
        pruning = IterativePruning(target_nonzero=100_000, prune_fraction=0.5, finetune_epochs=1, init_ckpt="student.ckpt")
        trainer = Trainer(max_epochs=20, callbacks=[pruning])
    """

    def __init__(
        self,
        target_nonzero: int,
        prune_fraction: float = 0.5,
        finetune_epochs: int = 1,
        scope: Literal["global", "layerwise"] = "global",
        prune_first_conv: bool = True,
        prune_classifier: bool = True,
        prune_bias: bool = False,
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
        init_ckpt: str | None = None,
    ):
        super().__init__()
        if scope not in ("global", "layerwise"):
            raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
        if not 0 < prune_fraction <= 1:
            raise ValueError(f"prune_fraction must be in (0, 1], got {prune_fraction}")
        if finetune_epochs < 1:
            raise ValueError(f"finetune_epochs must be >= 1, got {finetune_epochs}")
        self.target_nonzero, self.prune_fraction, self.finetune_epochs, self.scope = (
            int(target_nonzero),
            prune_fraction,
            finetune_epochs,
            scope,
        )
        self.prune_first_conv, self.prune_classifier, self.prune_bias = prune_first_conv, prune_classifier, prune_bias
        self.input_shape = tuple(input_shape)
        self.init_ckpt = init_ckpt
        self.history: list[tuple[int, int]] = []  # (epoch, non-zero parameters after that epoch's pruning)
        self._targets: list[tuple[str, nn.Module, str]] = []  # (tensor name in the network, module, "weight"/"bias")
        self._restored_masks: dict[str, torch.Tensor] = {}
        self._hook = None

    # -- what is pruned, and the budget check ------------------------------------------------------------------

    def prunable(self, network: nn.Module) -> list[tuple[str, nn.Module, str]]:
        layers = [(n, m) for n, m in network.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        skip = ({layers[0][0]} if layers and not self.prune_first_conv else set()) | (
            {layers[-1][0]} if layers and not self.prune_classifier else set()
        )
        params = ("weight", "bias") if self.prune_bias else ("weight",)
        return [(f"{n}.{p}" if n else p, m, p) for n, m in layers if n not in skip for p in params if getattr(m, p, None) is not None]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network = pl_module.model
        if self.init_ckpt:
            from lit_kd.checkpoints import load_weights

            load_weights(network, self.init_ckpt)
        self._targets = self.prunable(network)
        total = sum(row.params for row in model_summary(network, self.input_shape))
        never_pruned = total - sum(getattr(m, p).numel() for _, m, p in self._targets)
        self._budget = self.target_nonzero - never_pruned  # for the prunable weights
        if self.target_nonzero > total:
            raise ValueError(f"IterativePruning: target_nonzero={self.target_nonzero:,} is larger than the network's {total:,} parameters")
        if self.target_nonzero < never_pruned:
            raise ValueError(
                f"IterativePruning: target_nonzero={self.target_nonzero:,} is below the network's {never_pruned:,} parameters that "
                f"are never pruned (BatchNorm, biases unless prune_bias, first conv / classifier when excluded) of {total:,} in all"
            )
        if self._hook is None:
            self._hook = network.register_state_dict_post_hook(_plain_pruned_tensors)
        rank_zero_info(
            f"IterativePruning: {total:,} parameters, {total - never_pruned:,} prunable, target {self.target_nonzero:,} non-zero"
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- the cycles --------------------------------------------------------------------------------------------

    def _prunable_nonzero(self) -> int:
        return sum(int((getattr(m, p) != 0).sum()) for _, m, p in self._targets)

    def _unmasked(self) -> list[int]:
        return [int(getattr(m, p + "_mask").sum()) if hasattr(m, p + "_mask") else getattr(m, p).numel() for _, m, p in self._targets]

    def _prune(self, count: int) -> None:
        """Mask ``count`` more of the unmasked prunable entries, smallest magnitudes first."""
        params = [(m, p) for _, m, p in self._targets]
        if self.scope == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=count)
        else:
            for (m, p), k in zip(params, split_count(count, self._unmasked())):
                prune.l1_unstructured(m, p, amount=k)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed fit: the checkpoint held the masked weights; put their masks back (the optimizer exists by now)."""
        network = pl_module.model
        for name, mask in self._restored_masks.items():
            module_name, _, param = name.rpartition(".")
            module = network.get_submodule(module_name)
            prune.custom_from_mask(module, param, mask.to(getattr(module, param).device))
        self._restored_masks = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch % self.finetune_epochs or any(e == epoch for e, _ in self.history):  # not a pruning epoch, or done
            return
        nonzero = self._prunable_nonzero()
        if nonzero <= self._budget:
            return
        goal = max(self._budget, nonzero - max(1, round(self.prune_fraction * sum(self._unmasked()))))
        while nonzero > goal:  # repeats only when some unmasked weights were exactly zero (they go first)
            self._prune(nonzero - goal)
            nonzero = self._prunable_nonzero()
        self.history.append((epoch, nonzero_count(pl_module.model, self.input_shape)))
        rank_zero_info(f"IterativePruning: epoch {epoch}: {self.history[-1][1]:,} non-zero parameters (target {self.target_nonzero:,})")
        if nonzero <= self._budget:
            self._restart_best(trainer)

    @staticmethod
    def _restart_best(trainer: L.Trainer) -> None:
        """Give the monitored checkpoints' kept scores the worst value, so the next validation replaces them."""
        for callback in trainer.checkpoint_callbacks:
            if callback.monitor is not None and callback.best_k_models:
                worst = torch.tensor(-torch.inf if callback.mode == "max" else torch.inf)
                callback.best_k_models = dict.fromkeys(callback.best_k_models, worst)
                callback.kth_value = callback.best_model_score = worst

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = model_summary(pl_module.model, self.input_shape)
        nonzero, total = sum(r.nonzero for r in rows), sum(r.params for r in rows)
        pl_module.log("prune/nonzero", float(nonzero), on_step=False, on_epoch=True)
        pl_module.log("prune/sparsity", 1 - nonzero / total, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for _, module, param in self._targets:
            if hasattr(module, param + "_mask"):
                prune.remove(module, param)
        rows = model_summary(pl_module.model, self.input_shape)
        nonzero = sum(r.nonzero for r in rows)
        if self._prunable_nonzero() > self._budget:
            rank_zero_warn(
                f"IterativePruning: fit ended with {nonzero:,} non-zero parameters, above the target {self.target_nonzero:,}: "
                f"raise max_epochs (a pruning cycle every {self.finetune_epochs} epochs, {self.prune_fraction:.0%} of the rest each)"
            )
        if trainer.is_global_zero:
            self.print_table(rows)
            self.write_compact(trainer, pl_module)

    @staticmethod
    def write_compact(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The pruned network as ``<log_dir>/compact_weights.npz`` (when its architecture is named by a string)."""
        from pathlib import Path

        from lit_kd.checkpoints import network_key
        from lit_kd.compact_weights import write_compact_weights

        hparams = dict(pl_module.hparams)
        key = network_key(hparams)
        if not isinstance(hparams.get(key), str) or trainer.log_dir is None:
            rank_zero_info("IterativePruning: no compact weights file (the network is not a registered architecture name)")
            return
        target = Path(trainer.log_dir) / "compact_weights.npz"
        path = write_compact_weights(pl_module.model, hparams[key], target, hparams.get("num_classes", 10), hparams.get(f"{key}_kwargs"))
        rank_zero_info(f"IterativePruning: pruned network written to {path} ({path.stat().st_size / 1e6:.2f} MB)")

    @staticmethod
    def print_table(rows) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="IterativePruning: parameters per layer")
        for col in ("layer", "params", "non-zero"):
            table.add_column(col, justify="left" if col == "layer" else "right")
        for r in rows:
            if r.params:
                table.add_row(r.name or "(root)", f"{r.params:,}", f"{r.nonzero:,}")
        table.add_row("total", f"{sum(r.params for r in rows):,}", f"{sum(r.nonzero for r in rows):,}", style="bold")
        Console(width=None if sys.stdout.isatty() else 120).print(table)

    # -- checkpoint state: the masks ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        masks = {name: getattr(m, p + "_mask").bool().cpu() for name, m, p in self._targets if hasattr(m, p + "_mask")}
        return {"history": list(self.history), "masks": masks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state_dict.get("history", [])]
        self._restored_masks = dict(state_dict.get("masks", {}))
