"""The compatibility fixes: each is needed (the failure it fixes is reproduced without it) and sufficient."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lit_kd.compat.onnxruntime_quantization import patch_onnx_int4_constants, quantize_static_qdq
from lit_kd.models import build_model


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.sparse  # onnx 1.14, pinned by the sparse extra
def test_onnxruntime_quantization_import_needs_the_int4_patch():
    bare = python("import onnxruntime.quantization")
    assert bare.returncode != 0 and "INT4" in bare.stderr
    patched = python(
        "from lit_kd.compat.onnxruntime_quantization import patch_onnx_int4_constants as p; p(); "
        "import onnx, onnxruntime.quantization; print(onnx.TensorProto.INT4, onnx.TensorProto.UINT4)"
    )
    assert patched.returncode == 0, patched.stderr
    assert patched.stdout.split() == ["22", "21"]


def test_patch_is_idempotent():
    patch_onnx_int4_constants()
    patch_onnx_int4_constants()
    import onnx

    assert (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) == (22, 21)


def test_static_qdq_model_runs_in_onnxruntime_and_tracks_the_float_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet8").eval()
    calib = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(
        model,
        (calib[0][:1],),
        str(fp32),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    int8 = quantize_static_qdq(fp32, tmp_path / "int8.onnx", [x.numpy() for x in calib])
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = calib[0]
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape == (16, 10)
    # INT8 error is a small fraction of the logits' spread, not zero (the model really is quantized)
    err = np.abs(got - want).max()
    assert 0 < err < 0.1 * np.ptp(want)
    assert not (tmp_path / "int8.preprocessed.onnx").exists()
