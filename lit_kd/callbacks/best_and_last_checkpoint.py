"""BestAndLastCheckpoint: ``best.ckpt`` when the monitored metric improves, ``last.ckpt`` after every epoch.

Lightning 2.6 changed ``ModelCheckpoint(save_last=True)`` to write ``last.ckpt`` only in a step where a top-k
checkpoint was also written: once the monitored metric stops improving, ``last.ckpt`` stays at the best epoch, so a
resumed run would restart from there and the final weights of a fixed-schedule run (a pruning recipe, QAT) would
be lost. This subclass writes ``last.ckpt`` at every checkpointing point that did not already write it.

At the start of a fit it also removes the temporary files (``.<name>.tmp<pid>``) that a run killed while writing a
checkpoint left in its checkpoint directory (see :func:`lit_kd.atomic.remove_stale_temps`).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lit_kd.atomic import remove_stale_temps
from lit_kd.checkpoints import is_local_path


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``save_last=True`` means "after every epoch" (as before Lightning 2.6), and whose
    directory is cleared of killed runs' temporary files when a fit starts.

    Example::

        from lit_kd.callbacks import BestAndLastCheckpoint

        # best.ckpt by validation accuracy, last.ckpt after every epoch (what a resumed run continues from)
        checkpoints = BestAndLastCheckpoint(monitor="val/acc", mode="max", filename="best", save_last=True)
        trainer = Trainer(callbacks=[checkpoints])
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # resolves dirpath
        if stage == "fit" and trainer.is_global_zero and self.dirpath and is_local_path(self.dirpath):
            for stale in remove_stale_temps(self.dirpath, include_own=True):  # no write of this run is under way yet
                rank_zero_info(f"removed {stale.name}, left by a run killed while writing a checkpoint")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # after the parent's save in this step, _last_global_step_saved == global_step and this is skipped
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
