"""lit-kd: knowledge distillation, quantization and pruning of image classifiers with PyTorch Lightning."""
