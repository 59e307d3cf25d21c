"""onnxruntime 1.26's static quantization on the onnx 1.14 that sparseml/deepsparse 1.8 require.

``onnxruntime.quantization`` builds tables keyed by ``onnx.TensorProto.INT4`` and ``UINT4``, enum members that onnx
added in 1.16, so importing it under onnx 1.14 fails with ``AttributeError: ... has no attribute 'INT4'``. The values
are fixed by the ONNX specification (UINT4 = 21, INT4 = 22); :func:`patch_onnx_int4_constants` adds the two constants
when they are missing, which is all the import needs. Only 8-bit quantization is used here: onnx 1.14 itself still
cannot check or run 4-bit tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

ONNX_4BIT_ENUM = {"UINT4": 21, "INT4": 22}


def patch_onnx_int4_constants() -> None:
    """Add ``TensorProto.UINT4``/``INT4`` when the installed onnx predates them (idempotent)."""
    for name, value in ONNX_4BIT_ENUM.items():
        if not hasattr(onnx.TensorProto, name):
            setattr(onnx.TensorProto, name, value)


def quantize_static_qdq(
    fp32_path: str | Path, int8_path: str | Path, calib_batches: Iterable[np.ndarray], input_name: str = "input", per_channel: bool = True
) -> Path:
    """Static INT8 quantization of an ONNX file in QDQ format: per-channel signed weights, unsigned activations
    calibrated (min-max) on ``calib_batches`` (float32 arrays shaped like the model input)."""
    patch_onnx_int4_constants()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in calib_batches]
    if not batches:
        raise ValueError("quantize_static_qdq needs at least one calibration batch, got none")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    int8_path = Path(int8_path)
    pre_path = int8_path.with_suffix(".preprocessed.onnx")
    quant_pre_process(str(fp32_path), str(pre_path))
    quantize_static(
        str(pre_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre_path.unlink(missing_ok=True)
    return int8_path
