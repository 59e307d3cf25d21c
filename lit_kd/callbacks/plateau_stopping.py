"""AccuracyPlateauStopping: the study protocol's stopping rule as an EarlyStopping subclass."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason


class AccuracyPlateauStopping(EarlyStopping):
    """Stop once ``|acc - acc_prev| < min_delta`` has held for ``patience`` consecutive validation checks.

    ``acc`` is the monitored metric (``val/acc``, measured 0..1) and ``acc_prev`` its value at the previous check;
    any check where the change is ``>= min_delta`` (up or down) restarts the count. Unlike EarlyStopping, a drop
    counts as a change, not as a failure to improve. The previous value and the count are saved in checkpoints, so
    a resumed run continues the count. ``patience`` counts validation checks (one per epoch by default).

    Example::

        from lit_kd.callbacks import AccuracyPlateauStopping

        # stop when val/acc moved by less than 1 point at two checks in a row
        trainer = Trainer(callbacks=[AccuracyPlateauStopping(monitor="val/acc", min_delta=0.01, patience=2)])

    In a config: ``trainer.callbacks: [{class_path: lit_kd.callbacks.AccuracyPlateauStopping}]``.
    """

    def __init__(self, monitor: str = "val/acc", min_delta: float = 0.01, patience: int = 2, verbose: bool = True, **kwargs: Any):
        if min_delta <= 0:
            raise ValueError(f"min_delta must be > 0 (an accuracy change, 0..1), got {min_delta}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1 consecutive checks, got {patience}")
        super().__init__(monitor=monitor, min_delta=0.0, patience=patience, mode="max", verbose=verbose, **kwargs)
        self.plateau_delta = float(min_delta)
        self.previous: float | None = None

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, f"Monitored metric {self.monitor} = {current} is not finite. Signaling Trainer to stop."
        value = float(current)
        if self.previous is not None and abs(value - self.previous) < self.plateau_delta:
            self.wait_count += 1
        else:
            self.wait_count = 0
        change = None if self.previous is None else value - self.previous
        self.previous = value
        if current > self.best_score.to(current.device):
            self.best_score = current
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (
                f"{self.monitor} changed by less than {self.plateau_delta} for {self.wait_count} consecutive checks "
                f"(last change {change:+.4f}, now {value:.4f}). Signaling Trainer to stop."
            )
        reason = f"{self.monitor} = {value:.4f}" + (
            "" if change is None else f" ({change:+.4f}); plateau count {self.wait_count}/{self.patience}"
        )
        return False, reason

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous": self.previous, "plateau_delta": self.plateau_delta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.previous = state_dict.get("previous")
        self.plateau_delta = state_dict.get("plateau_delta", self.plateau_delta)
