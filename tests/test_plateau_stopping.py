"""AccuracyPlateauStopping with scripted accuracy sequences, inside a real Trainer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_kd.callbacks import AccuracyPlateauStopping


class ScriptedAccuracy(L.LightningModule):
    """Logs ``val/acc = sequence[epoch]``; trains a single weight so the loop is real."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence = list(sequence)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            acc = self.sequence[self.current_epoch]
            self.seen.append(acc)
            self.log("val/acc", acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)


def run(sequence, tmp_path, max_epochs=None, ckpt_path=None, **callback_kwargs):
    module = ScriptedAccuracy(sequence)
    stopper = AccuracyPlateauStopping(**callback_kwargs)
    trainer = L.Trainer(
        max_epochs=max_epochs or len(sequence),
        callbacks=[stopper, L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module.seen, stopper, trainer


@pytest.mark.parametrize(
    "sequence,epochs_run",
    [
        ([0.50, 0.60, 0.605, 0.608, 0.70, 0.80], 4),  # two small changes in a row: stop after the 4th epoch
        ([0.50, 0.505, 0.60, 0.605, 0.606, 0.90], 5),  # a big change in between restarts the count
        ([0.50, 0.40, 0.395, 0.30, 0.299, 0.298], 6),  # drops are changes too, not failures to improve
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 6),  # never plateaus: runs to max_epochs
        ([0.5, 0.5099, 0.5198], 3),  # |diff| < 0.01 holds (0.0099) twice -> stop at the last epoch
    ],
)
def test_scripted_sequences(sequence, epochs_run, tmp_path):
    seen, stopper, trainer = run(sequence, tmp_path)
    assert seen == sequence[:epochs_run]
    assert trainer.should_stop == (epochs_run < len(sequence) or stopper.wait_count >= 2)


def test_change_equal_to_min_delta_is_not_a_plateau(tmp_path):
    # the rule is a strict |acc - acc_prev| < min_delta; steps of exactly 0.25 are representable in binary
    seen, stopper, _ = run([0.0, 0.25, 0.5, 0.75, 1.0], tmp_path, min_delta=0.25)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0] and stopper.wait_count == 0


def test_patience_and_min_delta_are_configurable(tmp_path):
    seq = [0.5, 0.52, 0.54, 0.56, 0.58, 0.60]
    assert run(seq, tmp_path, min_delta=0.05, patience=3)[0] == seq[:4]
    assert run(seq, tmp_path / "b", min_delta=0.01, patience=1)[0] == seq


def test_resume_in_the_middle_keeps_the_count(tmp_path):
    sequence = [0.50, 0.60, 0.605, 0.608, 0.70, 0.80]
    full, _, _ = run(sequence, tmp_path / "full")
    first, stopper, _ = run(sequence, tmp_path / "part", max_epochs=3)
    assert first == sequence[:3] and stopper.wait_count == 1 and stopper.previous == pytest.approx(0.605)
    resumed, stopper, _ = run(sequence, tmp_path / "part", ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert first + resumed == full == sequence[:4]
    assert stopper.state_dict()["previous"] == pytest.approx(0.608)


def test_state_dict_round_trip():
    a = AccuracyPlateauStopping()
    a.previous, a.wait_count = 0.42, 1
    b = AccuracyPlateauStopping()
    b.load_state_dict(a.state_dict())
    assert (b.previous, b.wait_count, b.plateau_delta) == (0.42, 1, 0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_delta must be > 0"):
        AccuracyPlateauStopping(min_delta=0)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        AccuracyPlateauStopping(patience=0)


def test_the_study_records_the_stop_before_testing_restores_an_earlier_best_checkpoint(tmp_path):
    """trainer.test(ckpt_path=best) restores callback states from that file; the best epoch came before the rule
    fired, so a stop reason read after testing would say 'epoch budget' (as two resumed CPU-study stages did)."""
    from lit_kd.callbacks.study_progress import FitOutcome, stop_reason

    sequence = [0.50, 0.80, 0.795, 0.79, 0.95]  # best after epoch 2, the rule fires after epoch 4
    module, outcome = ScriptedAccuracy(sequence), FitOutcome()
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_top_k=1)
    trainer = L.Trainer(
        max_epochs=len(sequence),
        callbacks=[AccuracyPlateauStopping(), best, outcome],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module)
    assert module.seen == sequence[:4] and best.best_model_score == pytest.approx(0.80)
    module.test_step = lambda batch, batch_idx: None
    module.test_dataloader = module.val_dataloader
    trainer.test(module, ckpt_path=best.best_model_path, verbose=False)
    assert stop_reason(trainer).startswith("epoch budget")  # what restoring did to the live callback
    assert outcome.metrics == {
        "best_val_acc": pytest.approx(0.80),
        "last_val_acc": pytest.approx(0.79),
        "epochs": 4,
        "stop_reason": "plateau rule (AccuracyPlateauStopping) after epoch 4",
        "teacher_val_acc": None,
    }
