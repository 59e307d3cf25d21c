"""Start a fit from another run's network weights: the dense control of a compression stage (the same start, loss,
optimizer and epochs as the pruning or QAT run beside it, without the method)."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class WarmStart(L.Callback):
    """Load ``init_ckpt``'s network weights (a lit-kd checkpoint or a state-dict file) when fitting starts.

    The weights are loaded at ``setup``, before Lightning restores a ``ckpt_path``: a resumed run continues from its
    own last.ckpt, as IterativePruning, QuantizationAwareTraining and SparseMLRecipe do with their ``init_ckpt``.
    Optimizer state, epoch and step counters start fresh, as in those callbacks.

    Example (a study stage, the control of an ``IterativePruning`` stage that starts from the same checkpoint)::

        trainer.callbacks: [{class_path: lit_kd.callbacks.WarmStart, init_args: {init_ckpt: "${kd.seed0.ckpt}"}}]
    """

    def __init__(self, init_ckpt: str | Path):
        super().__init__()
        self.init_ckpt = str(init_ckpt)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from lit_kd.checkpoints import load_weights

        load_weights(pl_module.model, self.init_ckpt)
