"""Top-1 accuracy and predictions: the one evaluation loop that every command, study stage and benchmark uses.

Accuracy is ``correct / images`` (a Python float); batches are ``(images, labels)`` pairs, already normalised
(:meth:`lit_kd.data.CIFAR10DataModule.normalized_batches`), on the network's device.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn


def top1(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The predicted class of each row of ``logits`` (torch tensor or numpy array)."""
    return torch.as_tensor(logits).argmax(dim=1)


def fraction_equal(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The fraction of positions where two label vectors agree (``correct / total``)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return int((a == b).sum()) / len(a)


def predictions(model: nn.Module, batches: Iterable) -> torch.Tensor:
    """The top-1 class of every image of ``batches``, in order."""
    with torch.no_grad():
        return torch.cat([top1(model(x)) for x, _ in batches])


def labels(batches: Iterable) -> torch.Tensor:
    return torch.cat([y for _, y in batches])


def correct_and_total(model: nn.Module, batches: Iterable) -> tuple[int, int]:
    """(correct, images) of ``model`` on ``batches``."""
    correct = total = 0
    with torch.no_grad():
        for images, y in batches:
            correct += int((top1(model(images)) == y).sum())
            total += len(y)
    return correct, total


def accuracy(model: nn.Module, batches: Iterable) -> float:
    """Top-1 accuracy of ``model`` on ``batches``.

    Example::

        accuracy(network.eval(), datamodule.test_dataloader())   # 0.9113
    """
    correct, total = correct_and_total(model, batches)
    return correct / total


def test_set_accuracy(network: nn.Module, data_dir: str, batch_size: int, device: str = "cpu") -> tuple[int, int]:
    """(correct, images) on the test split of a CIFAR-10 source, normalised as in training and never augmented."""
    from lit_kd.data import CIFAR10DataModule

    return correct_and_total(network, CIFAR10DataModule(data_dir).normalized_batches("test", batch_size, device=device))


test_set_accuracy.__test__ = False  # not a pytest test when imported into a test module
