"""Callbacks: everything that changes or watches a run from outside the LightningModule."""

from lit_kd.callbacks.plateau_stopping import AccuracyPlateauStopping
from lit_kd.callbacks.sample_predictions import SamplePredictions

__all__ = ["AccuracyPlateauStopping", "SamplePredictions"]
