"""Callbacks: everything that changes or watches a run from outside the LightningModule."""

from lit_kd.callbacks.best_and_last_checkpoint import BestAndLastCheckpoint
from lit_kd.callbacks.iterative_pruning import IterativePruning
from lit_kd.callbacks.plateau_stopping import AccuracyPlateauStopping
from lit_kd.callbacks.quantization_aware_training import QuantizationAwareTraining
from lit_kd.callbacks.sample_predictions import SamplePredictions
from lit_kd.callbacks.sparseml_recipe import SparseMLRecipe
from lit_kd.callbacks.warm_start import WarmStart
from lit_kd.quant.torch_qat import load_int8_model

__all__ = [
    "AccuracyPlateauStopping",
    "BestAndLastCheckpoint",
    "IterativePruning",
    "QuantizationAwareTraining",
    "SamplePredictions",
    "SparseMLRecipe",
    "WarmStart",
    "load_int8_model",
]
