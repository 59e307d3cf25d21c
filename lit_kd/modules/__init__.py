"""LightningModules: training logic around plain ``nn.Module`` architectures, and loading trained networks."""

from lit_kd.modules.classifier import ClassifierModule
from lit_kd.modules.distillation import DistillationModule
from lit_kd.checkpoints import load_network, load_weights  # noqa: F401  (re-exported for users of lit_kd.modules)

__all__ = ["ClassifierModule", "DistillationModule", "load_network", "load_weights"]
