"""Evaluations the study needs beyond Lightning's test loop: every model's prediction and confidence on one test
image per class (the report's example figure)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lit_kd.data import CIFAR10DataModule


def first_index_per_class(labels: torch.Tensor, num_classes: int) -> list[int]:
    """The index of the first test image of each class, in class order."""
    out = []
    for c in range(num_classes):
        hits = (labels == c).nonzero().flatten()
        if len(hits) == 0:
            raise ValueError(f"the test split has no image of class {c}")
        out.append(int(hits[0]))
    return out


def load_stage_network(manifest: dict) -> nn.Module:
    """A stage's trained network as it is deployed: the real INT8 model of a QAT run, the (SparseML-structured)
    network of anything else, in eval mode."""
    from lit_kd.artifacts import load_model

    outputs = manifest["outputs"]
    return load_model(outputs["int8"] if "int8" in outputs else outputs["ckpt"])[0].eval()


def one_image_per_class(models: dict[str, dict], data: str) -> dict:
    """For the first test image of each class: its index and label, and each model's prediction and confidence
    (softmax probability of the predicted class). ``models``: stage name -> manifest."""
    dm = CIFAR10DataModule(data)
    dm.setup("test")
    test = dm.splits["test"]
    indices = first_index_per_class(test.labels, dm.num_classes)
    images = dm.normalize(test.images[indices].float().div(255))
    result = {"indices": indices, "labels": [int(test.labels[i]) for i in indices], "classes": list(dm.classes), "models": {}}
    for name, manifest in models.items():
        with torch.no_grad():
            probs = load_stage_network(manifest)(images).softmax(1)
        confidence, predicted = probs.max(1)
        result["models"][name] = {"predicted": predicted.tolist(), "confidence": [round(float(c), 4) for c in confidence]}
    return result
