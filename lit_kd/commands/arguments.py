"""Checks and failures shared by the subcommands: usage errors exit 2 (``cli.error``), unusable files exit 1 with one
line (``fail``), never a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

import torch


def fail(prog: str, message: str) -> NoReturn:
    """A failure (exit status 1) reported as one line on stderr, no traceback; usage errors go through
    ``ArgumentParser.error`` (exit status 2)."""
    raise SystemExit(f"{prog}: error: {message}")


def require_file(cli: argparse.ArgumentParser, flag: str, value: str, what: str = "checkpoint") -> Path:
    """``value`` names an existing file (a usage error otherwise)."""
    path = Path(value).expanduser()
    if not path.exists():
        cli.error(f"{flag}: {what} {value!r} does not exist")
    if not path.is_file():
        cli.error(f"{flag}: {what} {value!r} is a directory, not a file")
    return path


def require_data(cli: argparse.ArgumentParser, value: str | None, flag: str = "--data") -> None:
    """A CIFAR-10 source that exists (its content is checked when it is read)."""
    if value is not None and not Path(value).expanduser().exists():
        cli.error(
            f"{flag} {value!r} does not exist: expected a CIFAR-10 .zip, an image-folder directory (train/<class>/*, "
            "test/<class>/*) or a torchvision CIFAR-10 root (set $LIT_KD_CIFAR10 to make it the default)"
        )


def require_positive(cli: argparse.ArgumentParser, args: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    """Each ``args.<name>`` (None allowed) is at least ``minimum``; the flag is named in the usage error."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            cli.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def require_output(cli: argparse.ArgumentParser, value: str, flag: str = "--out") -> Path:
    path = Path(value)
    if path.is_dir():
        cli.error(f"{flag} {value!r} is a directory; expected a file name")
    return path


def yaml_problem(path: str | Path, err: Exception) -> str:
    """``'<path>' is not valid YAML (line L, column C): <problem>`` for a YAML parse error of the file at ``path``."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{str(path)!r} is not valid YAML{where}: {getattr(err, 'problem', None) or err}"


def yaml_error(path: str | Path) -> str | None:
    """Why the YAML file at ``path`` does not parse (:func:`yaml_problem`); None when it parses (or cannot be read:
    that is reported by whoever reads it)."""
    import yaml

    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        return yaml_problem(path, err)
    except (OSError, UnicodeDecodeError):
        return None
    return None


def checkpoint_error(ckpt: str, err: Exception) -> str:
    """The one-line message for a ``--ckpt`` that could not be loaded (``safe_load`` already names a file that is no
    torch file at all)."""
    return f"--ckpt: {err}"


def read_model_file(prog: str, ckpt: str) -> dict:
    """The content of a model file given as ``--ckpt`` (tensors and plain data only: ``read_checkpoint``); an empty,
    unreadable or non-checkpoint file is reported as one line (exit status 1)."""
    from lit_kd.checkpoints import read_checkpoint

    if Path(ckpt).stat().st_size == 0:
        fail(prog, f"--ckpt {ckpt!r} is empty (0 bytes); expected a lit-kd checkpoint")
    try:
        return read_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as err:
        fail(prog, checkpoint_error(ckpt, err))


def load_float_network(prog: str, ckpt: str, qat_advice: str, checkpoint: dict | None = None) -> torch.nn.Module:
    """The float network of a lit-kd checkpoint (``load_network``), every way it can fail reported as one line (exit
    status 1): an empty or unreadable file, a file that is no checkpoint, an unknown architecture, weights of another
    architecture, and a quantization-aware-training checkpoint (its fake-quantize modules need their QAT structure;
    ``qat_advice``, formatted with ``ckpt``, says what to do instead). ``checkpoint``: the file's content when the
    caller has read it already (:func:`read_model_file`)."""
    from lit_kd.checkpoints import QAT_MARKERS, build_network, checkpoint_sources, load_weights, network_state

    if checkpoint is None:
        checkpoint = read_model_file(prog, ckpt)
    try:
        state = network_state(checkpoint)
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {ckpt!r} holds no state dict")
        if any(marker in key for key in state for marker in QAT_MARKERS):
            kind = "a SparseML pruning + QAT" if checkpoint_sources(checkpoint)[1] is not None else "a quantization-aware-training (QAT)"
            fail(
                prog,
                f"--ckpt {ckpt!r} is {kind} checkpoint: its network holds fake-quantize modules, and {prog} runs float "
                f"networks. {qat_advice.format(ckpt=ckpt)}",
            )
        return load_weights(build_network(checkpoint, ckpt), ckpt, checkpoint).eval()
    except (FileNotFoundError, ValueError, TypeError) as err:
        fail(prog, checkpoint_error(ckpt, err))


def load_trained_model(prog: str, ckpt: str, qat_advice: str) -> tuple[torch.nn.Module, str]:
    """A model file to run for predictions, and its kind: a lit-kd checkpoint or weights file (``"float"``,
    :func:`load_float_network`), an INT8 model written by QAT (``"int8"``, ``int8_model.pt``: torch's quantized CPU
    kernels), or an ``.onnx`` file (``"onnx"``, run by ONNX Runtime on the CPU). The file is read once; failures are
    one line (exit 1)."""
    from lit_kd.quant.torch_qat import int8_model_from, is_int8_model, quiet_rebuild

    if Path(ckpt).suffix.lower() == ".onnx":
        from lit_kd.onnx_export import OnnxRuntimeNetwork

        try:
            return OnnxRuntimeNetwork(ckpt), "onnx"
        except Exception as err:  # onnxruntime raises its own exception types for unreadable or invalid models
            fail(prog, f"--ckpt {ckpt!r} is not an ONNX model that ONNX Runtime can load ({type(err).__name__}: {err})")
    with quiet_rebuild():
        saved = read_model_file(prog, ckpt)
    if not is_int8_model(saved):
        return load_float_network(prog, ckpt, qat_advice, saved), "float"
    try:
        return int8_model_from(saved).eval(), "int8"
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        fail(prog, checkpoint_error(ckpt, err))


# ---------------------------------------------------------------------------------------------- classify
