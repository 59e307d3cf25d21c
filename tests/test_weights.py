"""The shipped weights (float, INT8 and ONNX files): their sha256, a load that unpickles no objects, and their test
accuracy reproduced exactly on the real CIFAR-10 test set by the real CLI."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED = json.loads((REPO / "weights" / "weights.json").read_text())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_reproduce_their_test_accuracy(name, real_cifar10):
    entry, path = SHIPPED[name], REPO / "weights" / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    if path.suffix == ".onnx":
        onnx.checker.check_model(str(path))
    else:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors, strings and dicts only
        assert (saved["network"] if entry["format"] == "INT8 (torch)" else saved["hyper_parameters"]["model"]) == entry["architecture"]
    exe = Path(sys.executable).with_name("lit-kd")
    proc = subprocess.run(
        [str(exe), "classify", "--ckpt", str(path), "--data", str(real_cifar10)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    correct, total = map(int, re.search(r"\((\d+) of (\d+) test images correct\)", proc.stdout).groups())
    assert total == 10000 and correct == entry["correct"]
