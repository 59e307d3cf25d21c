"""last.ckpt follows every epoch even when the monitored metric stops improving (Lightning 2.6's save_last does not)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lit_kd.lightning_cli import best_checkpoint_callback


class WorseEveryEpoch(L.LightningModule):
    """Logs val/acc = 0.9, 0.8, 0.7, ...: the best epoch is the first."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.9 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, callback, epochs=3):
    data = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    callback.dirpath = tmp_path
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    trainer.fit(WorseEveryEpoch(), data, data)
    return trainer


def epoch_of(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def test_last_checkpoint_is_written_after_every_epoch(tmp_path):
    trainer = fit(tmp_path, best_checkpoint_callback())
    assert epoch_of(tmp_path / "best.ckpt") == 0
    assert epoch_of(tmp_path / "last.ckpt") == 2 and trainer.global_step == 6
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6
    assert trainer.checkpoint_callback.last_model_path == str(tmp_path / "last.ckpt")


def test_plain_model_checkpoint_of_lightning_2_6_keeps_a_stale_last(tmp_path):
    """The behaviour the subclass exists for; if Lightning changes it back, this test says so."""
    fit(tmp_path, ModelCheckpoint(monitor="val/acc", mode="max", filename="best", save_last=True))
    assert epoch_of(tmp_path / "last.ckpt") == 0


def test_temporary_files_of_killed_runs_are_removed_when_a_fit_starts(tmp_path):
    """A run killed while writing a checkpoint leaves ``.<name>.tmp<pid>``; the next fit in that directory removes
    the files of processes that no longer run (and never a checkpoint or another file)."""
    import os
    import subprocess
    import sys

    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    stale = [tmp_path / f".last.ckpt.tmp{dead_pid}", tmp_path / f".best.ckpt.tmp{os.getpid()}"]
    kept = [tmp_path / "notes.txt", tmp_path / "old.ckpt"]
    for path in stale + kept:
        path.write_bytes(b"half a checkpoint")
    fit(tmp_path, best_checkpoint_callback(), epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt", "notes.txt", "old.ckpt"]
