"""One loader for every model file lit-kd writes or reads: :func:`load_model` ``(path) -> (network, kind)``.

Kinds: ``"float"`` (a Lightning checkpoint, a weights file, a pruned checkpoint or a compact ``.npz`` weights file of
a pruned network, :mod:`lit_kd.compact_weights`: the float network its hyperparameters name),
``"qat"`` (a SparseML pruning + QAT checkpoint, its network given its QAT structure before the
weights load), ``"int8"`` (``int8_model.pt`` written by QAT: torch's quantized CPU kernels) and ``"onnx"`` (an
``.onnx`` file run by ONNX Runtime on the CPU, :class:`~lit_kd.onnx_export.OnnxRuntimeNetwork`: FP32 exports and the
QDQ INT8 models ``lit-kd ptq --export-dir`` writes), ``"openvino"`` (an ``.xml`` OpenVINO IR with its ``.bin``, the
``openvino`` extra, :class:`~lit_kd.openvino_engine.OpenVinoNetwork`) and ``"torchscript"`` (a TorchScript program,
e.g. ``pytorch_int8.pt`` from ``lit-kd ptq --export-dir``, read by ``torch.jit.load``) and ``"pt2e"`` (a ``.pt2``
``torch.export`` program: ``pytorch_int8.pt2`` from ``lit-kd ptq --export-dir``, ``int8_model.pt2`` from a PT2E QAT run;
its archive is checked against an allow-list before it loads, :func:`lit_kd.quant.pt2e.load_program`, and it runs
through ``torch.compile``, :class:`~lit_kd.quant.pt2e.CompiledInt8`, which needs a C++ compiler). Every other torch file is read
through :func:`lit_kd.checkpoints.safe_load` (tensors and plain data only; pickled objects are refused).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

KINDS = ("float", "qat", "int8", "onnx", "openvino", "torchscript", "pt2e")
# what runs for predictions (a QAT checkpoint needs its run's structure)
PREDICT_KINDS = ("float", "int8", "onnx", "openvino", "torchscript", "pt2e")
PREDICT_QAT_ADVICE = (
    "Classify the QAT run's INT8 model instead (int8_model.pt or int8_model.pt2 beside its checkpoints; a SparseML run's is its exported "
    ".onnx), or the float checkpoint the run started from."
)


class ModelFileError(ValueError):
    """A model file that cannot be loaded. ``str(err)`` follows the flag that named the file: ``sep`` (``": "`` or
    ``" "``) joins them, as in ``--ckpt: checkpoint 'x' ...`` and ``--ckpt 'x' is empty``."""

    def __init__(self, message: str, sep: str = ": "):
        super().__init__(message)
        self.sep = sep

    def line(self, flag: str = "--ckpt") -> str:
        return f"{flag}{self.sep}{self}"


class QatCheckpointError(ModelFileError):
    """A checkpoint whose network holds fake-quantize modules, given where a float network is expected."""

    def __init__(self, path: str, what: str):
        super().__init__(f"{path!r} is {what} checkpoint", sep=" ")
        self.path, self.what = path, what

    def advice_line(self, prog: str, advice: str) -> str:
        """The one line a command reports: what the file is, that ``prog`` runs float networks, and ``advice``
        (formatted with ``ckpt``)."""
        return (
            f"--ckpt {self.path!r} is {self.what} checkpoint: its network holds fake-quantize modules, and {prog} runs float "
            f"networks. {advice.format(ckpt=self.path)}"
        )


def read_model_file(path: str | Path) -> dict:
    """The content of a model file (tensors and plain data only); an empty, unreadable or non-checkpoint file is a
    :class:`ModelFileError`."""
    from lit_kd.checkpoints import read_checkpoint

    if Path(path).stat().st_size == 0:
        raise ModelFileError(f"{str(path)!r} is empty (0 bytes); expected a lit-kd checkpoint", sep=" ")
    try:
        return read_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:
        raise ModelFileError(str(err)) from None


def float_network(path: str | Path, checkpoint: dict) -> nn.Module:
    """The float network of a read checkpoint, in eval mode; a fake-quantize checkpoint is a :class:`QatCheckpointError`."""
    from lit_kd.checkpoints import QAT_MARKERS, build_network, checkpoint_sources, load_weights, network_state

    try:
        state = network_state(checkpoint)
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {str(path)!r} holds no state dict")
        if any(marker in key for key in state for marker in QAT_MARKERS):
            what = "a SparseML pruning + QAT" if checkpoint_sources(checkpoint)[1] is not None else "a quantization-aware-training (QAT)"
            raise QatCheckpointError(str(path), what)
        return load_weights(build_network(checkpoint, path), path, checkpoint).eval()
    except QatCheckpointError:
        raise
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise ModelFileError(str(err)) from None


def load_model(path: str | Path, kinds: tuple[str, ...] = KINDS, config: str | None = None) -> tuple[nn.Module, str]:
    """The model in a file, in eval mode, and its kind (see the module docstring); only ``kinds`` are recognised:

    - without ``"onnx"``, an ``.onnx`` file is read as a torch file (and refused as no checkpoint);
    - without ``"int8"``, an INT8 model is read as a checkpoint (and refused as naming no network);
    - without ``"qat"``, a checkpoint with fake-quantize modules is a :class:`QatCheckpointError`; with it, float and
      QAT checkpoints are built as for export (:func:`lit_kd.checkpoints.load_for_export`; ``config``, a run's
      config.yaml, then names the architecture and recipe).

    Failures are :class:`ModelFileError` (one line each).

    Example::

        network, kind = load_model("runs/demo/qat/run/checkpoints/int8_model.pt")   # kind == "int8"
        network, kind = load_model("models/pytorch_int8.pt2")                        # kind == "pt2e" (compiled)
        network, kind = load_model("weights/resnet20_teacher.pt", kinds=("float",))  # a float network or an error
    """
    from lit_kd.quant.pt2e import PROGRAM_SUFFIX
    from lit_kd.quant.torch_qat import int8_model_from, is_int8_model, quiet_rebuild

    if "openvino" in kinds and Path(path).suffix.lower() == ".xml":
        return _openvino_network(path), "openvino"
    if "pt2e" in kinds and Path(path).suffix.lower() == PROGRAM_SUFFIX:
        return _pt2e_program(path), "pt2e"
    if "torchscript" in kinds and is_torchscript(path):
        import torch

        try:
            return torch.jit.load(str(path), map_location="cpu").eval(), "torchscript"
        except RuntimeError as err:
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelFileError(f"{str(path)!r} is not a TorchScript program torch.jit.load can read ({detail})", sep=" ") from None
    if "onnx" in kinds and Path(path).suffix.lower() == ".onnx":
        from lit_kd.onnx_export import OnnxRuntimeNetwork

        try:
            return OnnxRuntimeNetwork(path), "onnx"
        except Exception as err:  # onnxruntime raises its own exception types for unreadable or invalid models
            raise ModelFileError(
                f"{str(path)!r} is not an ONNX model that ONNX Runtime can load ({type(err).__name__}: {err})", sep=" "
            ) from None
    if "float" in kinds and Path(path).suffix.lower() == ".npz":
        from lit_kd.compact_weights import CompactWeightsError, read_compact_weights

        try:
            return read_compact_weights(path), "float"
        except CompactWeightsError as err:
            raise ModelFileError(str(err), sep=" ") from None
    saved = None
    if "int8" in kinds:
        with quiet_rebuild():
            saved = read_model_file(path)
        if is_int8_model(saved):
            try:
                return int8_model_from(saved).eval(), "int8"
            except (ValueError, RuntimeError, KeyError, TypeError) as err:
                raise ModelFileError(str(err)) from None
    if "qat" in kinds:
        from lit_kd.checkpoints import load_for_export

        try:
            network, qat = load_for_export(str(path), config, checkpoint=saved)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
            raise ModelFileError(str(err)) from None
        return network, "qat" if qat else "float"
    return float_network(path, read_model_file(path) if saved is None else saved), "float"


def deflated_size(data: bytes) -> int:
    """Bytes of ``data`` compressed with zlib (deflate, level 9): the zeros of pruned weights compress, dense weights
    hardly do, so it shows what sparsity saves on disk."""
    import zlib

    return len(zlib.compress(data, 9))


def network_facts(ckpt: str | Path, int8: Path | None = None) -> dict:
    """Parameters, non-zero parameters, MACs, per-layer sparsity and size in bytes of a checkpoint's network.

    Parameters and MACs are those of the plain architecture; non-zero counts come from the checkpoint's own tensors
    (so a pruned or QAT checkpoint counts what it stores; a PT2E QAT network's ``program.`` prefix is dropped from layer
    names); ``size_bytes`` is the serialized float state dict (observers and fake-quantization state left out), or the
    INT8 model file's when the run saved one; ``deflated_bytes`` the same compressed (:func:`deflated_size`).

    Example::

        network_facts("runs/demo/teacher/model.ckpt")
        # {"architecture": "resnet20", "params": 272474, "nonzero_params": 272474, "macs": 40813184, ...}
    """
    import io

    import torch

    from lit_kd.checkpoints import build_network, network_key, network_state, read_checkpoint
    from lit_kd.models import model_summary
    from lit_kd.models.summary import summary_totals

    checkpoint = read_checkpoint(ckpt)
    network = build_network(checkpoint, ckpt)
    totals = summary_totals(model_summary(network))
    state = network_state(checkpoint)
    layers = {}
    nonzero = 0
    for name, tensor in state.items():
        if not torch.is_floating_point(tensor) or "post_process" in name or "fake_quant" in name or "running_" in name:
            continue
        if name.endswith((".weight", ".bias", "weight_orig")):
            nonzero += int(tensor.count_nonzero())
            if tensor.ndim in (2, 4) and not name.endswith(".bias"):
                layers[name.removeprefix("program.").removesuffix("_orig").removesuffix(".weight").replace(".module", "")] = (
                    1 - int(tensor.count_nonzero()) / tensor.numel()
                )
    buffer = io.BytesIO()  # the float network's tensors: QAT observers and fake-quantization state are not the model
    torch.save({k: v for k, v in state.items() if not any(part in k for part in ("fake_quant", "post_process", "observer"))}, buffer)
    stored = int8.read_bytes() if int8 is not None else buffer.getvalue()
    spec = checkpoint["hyper_parameters"][network_key(checkpoint["hyper_parameters"])]
    return {
        "architecture": spec if isinstance(spec, str) else spec.get("class_path"),
        "params": totals["params"],
        "nonzero_params": min(nonzero, totals["params"]),
        "macs": totals["macs"],
        "size_bytes": len(stored),
        "deflated_bytes": deflated_size(stored),
        "layer_sparsity": layers,
    }


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/`` modules; torch.save checkpoints hold none)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/__torch__/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _pt2e_program(path: str | Path) -> nn.Module:
    """A saved PT2E program, checked before it loads, run through ``torch.compile`` (INT8 kernels)."""
    from lit_kd.quant.pt2e import compile_int8, load_program

    try:
        return compile_int8(load_program(path)).eval()
    except ValueError as err:
        raise ModelFileError(str(err), sep=" ") from None


def _openvino_network(path: str | Path) -> nn.Module:
    from lit_kd.compat.extras import MissingExtra

    try:
        from lit_kd.openvino_engine import OpenVinoNetwork

        return OpenVinoNetwork(path)
    except MissingExtra as err:
        raise ModelFileError(f"{str(path)!r} is an OpenVINO IR: {err}", sep=" ") from None
    except FileNotFoundError as err:
        raise ModelFileError(str(err), sep=" ") from None
    except Exception as err:  # openvino raises RuntimeError subclasses for unreadable IR
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{str(path)!r} is not an OpenVINO IR that OpenVINO can read ({detail})", sep=" ") from None
