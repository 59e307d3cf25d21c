"""Getting trained networks back out of files: lit-kd checkpoints and plain state-dict files.

A lit-kd checkpoint stores the trained network under the ``model.`` prefix of its state dict and how to build it
in its hyperparameters (``model`` for a ClassifierModule, ``student`` for a DistillationModule: an architecture
name plus keyword arguments, or a ``class_path`` config). Later stages (distillation teachers, quantization, export)
use :func:`load_network` so they need neither Lightning nor the teacher of a distilled checkpoint.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from lit_kd.models import build_model

NETWORK_PREFIX = "model."


TRUST_ENV = "LIT_KD_TRUST_CHECKPOINTS"


def safe_load(path: Union[str, Path]) -> Any:
    """``torch.load`` of a file a user gave us without running code from it: only tensors and plain data
    (``weights_only=True``), which is all lit-kd's own checkpoints, INT8 models and weights files hold. A file that
    needs more (pickled objects) is refused with the name of what it asked for; set ``LIT_KD_TRUST_CHECKPOINTS=1``
    to load a file you trust anyway."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    trusted = os.environ.get(TRUST_ENV) == "1"
    try:
        with torch.serialization.safe_globals(_optimizer_classes()):
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        wanted = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line), str(err).splitlines()[0])
        raise ValueError(f"refused to load {str(path)!r}: it holds pickled Python objects ({wanted}), and unpickling a file "
                         f"runs code from it. lit-kd's own files hold only tensors and plain data; if you trust this file, "
                         f"set {TRUST_ENV}=1") from None
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(err).__name__}: {err})") from err


def _optimizer_classes() -> list[type]:
    """Classes a checkpoint may name as hyperparameters (a module built in Python records ``optimizer=torch.optim.Adam``):
    torch's optimizers and LR schedulers. Naming a class runs nothing; the allow-list lets ``weights_only`` read them."""
    import inspect

    classes = [c for _, c in inspect.getmembers(torch.optim, inspect.isclass) if issubclass(c, torch.optim.Optimizer)]
    return classes + [c for _, c in inspect.getmembers(torch.optim.lr_scheduler, inspect.isclass)
                      if c.__module__.startswith("torch.optim")]


def read_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint or state dict")
    return checkpoint


def instantiate_network(spec: Union[str, dict, nn.Module], num_classes: int = 10, kwargs: Optional[dict] = None) -> nn.Module:
    """An architecture name (built with ``kwargs``), a ``{class_path, init_args}`` config, or a module as is."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        return build_model(spec, num_classes=num_classes, **(kwargs or {}))
    if isinstance(spec, dict) and "class_path" in spec:
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--network", type=nn.Module)
        return parser.instantiate_classes(parser.parse_object({"network": spec})).network
    raise TypeError(f"cannot build a network from {spec!r}: expected an architecture name or a class_path config")


def network_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors from a lit-kd checkpoint (prefix stripped) or a plain state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith(NETWORK_PREFIX) for k in state):
        return {k[len(NETWORK_PREFIX):]: v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}
    return state


def load_weights(network: nn.Module, path: Union[str, Path], checkpoint: Optional[dict] = None) -> nn.Module:
    """Load a lit-kd checkpoint's network (or a plain state-dict file) into ``network``; a clear error on mismatch.

    ``checkpoint``: the already-read contents of ``path``, to avoid reading a large file twice."""
    state = network_state(checkpoint if checkpoint is not None else read_checkpoint(path))
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        raise ValueError(f"checkpoint {str(path)!r} does not fit {type(network).__name__} ({detail}): is it from another architecture?")
    network.load_state_dict(state)
    return network


def load_network(path: Union[str, Path]) -> nn.Module:
    """The trained network of a lit-kd checkpoint (a distilled checkpoint gives its student), in eval mode."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    key = "student" if "student" in hparams else "model"
    if key not in hparams:
        raise ValueError(
            f"checkpoint {str(path)!r} does not say which network it holds (no 'model' or 'student' hyperparameter); "
            "give the architecture explicitly and load the weights with load_weights(model, path)"
        )
    network = instantiate_network(hparams[key], hparams.get("num_classes", 10), hparams.get(f"{key}_kwargs"))
    return load_weights(network, path, checkpoint).eval()


def write_weights_file(network: nn.Module, architecture: str, path: Union[str, Path], num_classes: int = 10,
                       model_kwargs: Optional[dict] = None) -> Path:
    """Save ``network`` as a small portable checkpoint: its state dict under the ``model.`` prefix and the
    architecture that rebuilds it, nothing else (no optimizer, no pickled objects: ``torch.load(path,
    weights_only=True)`` reads it). :func:`load_network`, ``lit-kd classify/ptq/export``, ``teacher_ckpt`` and
    ``init_ckpt`` take it like any lit-kd checkpoint; ``lit-kd test --ckpt_path`` too (it carries the Lightning
    version key Lightning's loader checks)."""
    import lightning

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": {NETWORK_PREFIX + k: v.detach().cpu() for k, v in network.state_dict().items()},
                "hyper_parameters": {"model": architecture, "num_classes": num_classes, "model_kwargs": model_kwargs},
                "pytorch-lightning_version": lightning.__version__}, tmp)
    tmp.replace(path)
    return path
