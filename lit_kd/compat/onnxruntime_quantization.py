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
    fp32_path: str | Path,
    int8_path: str | Path,
    calib_batches: Iterable[np.ndarray],
    input_name: str = "input",
    per_channel: bool = True,
    activations: str = "uint8",
    calibration: str = "MinMax",
    reduce_range: bool = False,
    exclude_first_last: bool = False,
) -> Path:
    """Static INT8 quantization of an ONNX file in QDQ format: signed weights (per channel by default), activations
    (``uint8`` or ``int8``) calibrated on ``calib_batches`` (float32 arrays shaped like the model input) with
    ``calibration`` (``MinMax``, ``Percentile``, ``Entropy``); ``reduce_range`` quantizes weights to 7 bits (the
    remedy for U8S8 overflow on CPUs without VNNI); ``exclude_first_last`` keeps the first Conv and the last
    Gemm/MatMul in float. ``benchmarks/ort_int8_variants.py`` measures each choice."""
    patch_onnx_int4_constants()
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
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
    exclude = []
    if exclude_first_last:
        nodes = onnx.load(str(pre_path)).graph.node
        exclude = [
            next(n.name for n in nodes if n.op_type == "Conv"),
            next(n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")),
        ]
    quantize_static(
        str(pre_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activations],
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, calibration),
        reduce_range=reduce_range,
        nodes_to_exclude=exclude,
    )
    pre_path.unlink(missing_ok=True)
    return int8_path
