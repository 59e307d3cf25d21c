"""LightningModules: training logic around plain ``nn.Module`` architectures."""

from lit_kd.modules.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
