"""Callbacks a study's fit stage adds to its Lightning run: one progress line per epoch (:class:`StageProgress`) and
what the stage's manifest reports about training (:class:`FitOutcome`, :func:`stop_reason`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L


class StageProgress(L.Callback):
    """One line per training epoch: stage k of n, epoch, validation accuracy, seconds per epoch, ETA.

    Example::

        trainer = L.Trainer(callbacks=[StageProgress("[2/9] student", print)])
        # [2/9] student: epoch 3/30, val/acc 0.8123, 41 s/epoch, ETA 18.5 min at most
    """

    def __init__(self, label: str, report: Callable[[str], None]):
        self.label, self.report = label, report
        self.started: float | None = None
        self.first_epoch = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started, self.first_epoch = time.perf_counter(), trainer.current_epoch

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.started is None:
            return
        done = trainer.current_epoch + 1 - self.first_epoch
        per_epoch = (time.perf_counter() - self.started) / max(done, 1)
        left = max(trainer.max_epochs - trainer.current_epoch - 1, 0) if trainer.max_epochs and trainer.max_epochs > 0 else None
        acc = trainer.callback_metrics.get("val/acc")
        eta = f", ETA {left * per_epoch / 60:.1f} min at most" if left is not None else ""
        self.report(
            f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            + (f", val/acc {float(acc):.4f}" if acc is not None else "")
            + f", {per_epoch:.0f} s/epoch{eta}"
        )


class FitOutcome(L.Callback):
    """What a fit stage's manifest reports about training, read when fit ends: epochs, best and last validation
    accuracy (the last: of the last validation, the state ``last.ckpt`` holds), why it stopped, and the teacher's
    checked accuracy. Read then because ``trainer.test(ckpt_path=...)`` restores every callback's state from that
    checkpoint (Lightning 2.6), e.g. a plateau rule's ``stopped_epoch`` from a best checkpoint written before the rule
    fired.

    Example::

        outcome = FitOutcome()
        trainer = L.Trainer(callbacks=[outcome]); trainer.fit(model, datamodule)
        outcome.metrics   # {"best_val_acc": 0.91, "last_val_acc": 0.9, "epochs": 12, "stop_reason": "plateau rule ...", ...}
    """

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        last = trainer.callback_metrics.get("val/acc")
        self.metrics = {
            "best_val_acc": float("nan") if score is None else float(score),
            "last_val_acc": float("nan") if last is None else float(last),
            "epochs": trainer.current_epoch,
            "stop_reason": stop_reason(trainer),
            "teacher_val_acc": getattr(pl_module, "teacher_val_acc", None),
        }


def stop_reason(trainer: L.Trainer) -> str:
    """Why training ended, in words: a plateau rule, a recipe's length, a time budget, or the epoch budget."""
    from lightning.pytorch.callbacks import EarlyStopping, Timer

    from lit_kd.callbacks.sparseml_recipe import SparseMLRecipe

    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
            return f"plateau rule ({type(callback).__name__}) after epoch {callback.stopped_epoch + 1}"
        if isinstance(callback, SparseMLRecipe):
            return f"recipe length ({trainer.current_epoch} epochs)"
        remaining = callback.time_remaining("train") if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return f"time budget (trainer.max_time, after epoch {trainer.current_epoch})"
    return f"epoch budget (max_epochs {trainer.max_epochs})"


def reshaping_callbacks() -> tuple[type, ...]:
    """Callbacks that change the network as training goes (its result is the last epoch, not the best one)."""
    from lit_kd.callbacks.iterative_pruning import IterativePruning
    from lit_kd.callbacks.sparseml_recipe import SparseMLRecipe

    return (SparseMLRecipe, IterativePruning)
