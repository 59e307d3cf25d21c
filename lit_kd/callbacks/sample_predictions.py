"""SamplePredictions: a figure of predictions on validation images, logged each epoch. Defined beside the
LightningModules that add it (:mod:`lit_kd.modules.sample_predictions`: a module must not import callbacks/); offered
here, where every callback is found (``lit_kd.callbacks.SamplePredictions`` in configs)."""

from lit_kd.modules.sample_predictions import SamplePredictions, predictions_figure

__all__ = ["SamplePredictions", "predictions_figure"]
