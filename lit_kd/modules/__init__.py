"""LightningModules: training logic around plain ``nn.Module`` architectures, and loading trained networks."""

from lit_kd.checkpoints import load_network, load_weights
from lit_kd.modules.classifier import ClassifierModule
from lit_kd.modules.distillation import DistillationModule

__all__ = ["ClassifierModule", "DistillationModule", "load_network", "load_weights"]
