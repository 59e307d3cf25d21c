"""Checks and failures shared by the subcommands: usage errors exit 2 (``cli.error``), unusable files exit 1 with one
line (``fail``), never a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

import torch

from lit_kd.artifacts import PREDICT_KINDS


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


def checkpoint_error(ckpt: str, err: Exception) -> str:
    """The one-line message for a ``--ckpt`` that could not be loaded (``safe_load`` already names a file that is no
    torch file at all)."""
    return f"--ckpt: {err}"


def load_float_network(prog: str, ckpt: str, qat_advice: str, flag: str = "--ckpt") -> torch.nn.Module:
    """The float network of a lit-kd checkpoint (:func:`lit_kd.artifacts.load_model`), every way it can fail reported as
    one line (exit status 1): an empty or unreadable file, a file that is no checkpoint, an unknown architecture,
    weights of another architecture, and a quantization-aware-training checkpoint (its fake-quantize modules need their
    QAT structure; ``qat_advice``, formatted with ``ckpt``, says what to do instead)."""
    return load_trained_model(prog, ckpt, qat_advice, kinds=("float",), flag=flag)[0]


def load_trained_model(
    prog: str, ckpt: str, qat_advice: str, kinds: tuple[str, ...] = PREDICT_KINDS, flag: str = "--ckpt"
) -> tuple[torch.nn.Module, str]:
    """A model file to run for predictions, and its kind (:func:`lit_kd.artifacts.load_model`): a lit-kd checkpoint or
    weights file (``"float"``), an INT8 model written by QAT (``"int8"``), or an ``.onnx`` file (``"onnx"``). The file
    is read once; failures are one line (exit 1) naming ``flag``."""
    from lit_kd.artifacts import ModelFileError, QatCheckpointError, load_model

    try:
        return load_model(ckpt, kinds)
    except QatCheckpointError as err:
        fail(prog, err.advice_line(prog, qat_advice))
    except ModelFileError as err:
        fail(prog, err.line(flag))
