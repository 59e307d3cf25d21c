"""Smoke test of the installed export/runtime stack: a tiny model to ONNX, run in ONNX Runtime and DeepSparse."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn


@pytest.mark.sparse
def test_tiny_model_exports_and_runs_in_onnxruntime_and_deepsparse(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        model,
        torch.randn(1, 3, 32, 32),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=13,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)

    from deepsparse import Engine

    engine = Engine(str(path), batch_size=4, num_cores=1)
    np.testing.assert_allclose(engine([x])[0], expected, rtol=1e-3, atol=1e-4)


@pytest.mark.sparse
def test_sparseml_imports_with_the_pinned_stack():
    """sparseml 1.8.0 is installed for the sparsity work; it must import beside torch 2.14 and numpy < 2."""
    import sparseml
    from sparseml.pytorch.optim import ScheduledModifierManager

    assert sparseml.__version__.startswith("1.8") and np.__version__.startswith("1.")
    assert callable(ScheduledModifierManager.from_yaml)
