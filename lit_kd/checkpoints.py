"""The one place that reads and writes checkpoint files: lit-kd checkpoints, plain state-dict files, weights files.

A lit-kd checkpoint stores the trained network under the ``model.`` prefix of its state dict and how to build it
in its hyperparameters (``model`` for a ClassifierModule, ``student`` for a DistillationModule: an architecture
name plus keyword arguments, or a ``class_path`` config). Later stages (distillation teachers, quantization, export)
use :func:`load_network` so they need neither Lightning nor the teacher of a distilled checkpoint.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_kd.models import build_model

NETWORK_PREFIX = "model."
QAT_MARKERS = ("activation_post_process", "weight_fake_quant")  # state-dict keys of fake-quantize modules


def network_key(hparams: dict) -> str:
    """Which hyperparameter (or config ``init_args`` key) names the trained network: ``student`` for a
    DistillationModule, ``model`` for a ClassifierModule."""
    return "student" if "student" in hparams else "model"


TRUST_ENV = "LIT_KD_TRUST_CHECKPOINTS"


def safe_load(path: str | Path, map_location: Any = "cpu", trust: bool = False) -> Any:
    """``torch.load`` of a file a user gave us without running code from it: only tensors and plain data
    (``weights_only=True``), which is all lit-kd's own checkpoints, INT8 models and weights files hold. A file that
    needs more (pickled objects) is refused with the name of what it asked for; set ``LIT_KD_TRUST_CHECKPOINTS=1``
    to load a file you trust anyway (``trust=True`` does the same for one call: :class:`AtomicCheckpointIO` passes it
    when Lightning's own ``weights_only=False`` is given explicitly, e.g. ``lit-kd fit --weights_only false``).

    Every reader of a user-supplied file goes through here: :func:`read_checkpoint` (``load_network``,
    ``load_weights``, ``teacher_ckpt``, ``init_ckpt``, ``lit-kd classify/ptq/export``), ``load_int8_model``, and
    ``fit/validate/test/predict --ckpt_path`` (:class:`AtomicCheckpointIO`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    trusted = trust or os.environ.get(TRUST_ENV) == "1"
    try:
        with torch.serialization.safe_globals(_optimizer_classes()):
            return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if not _looks_like_torch_file(path):
            raise ValueError(f"checkpoint {str(path)!r} is not a checkpoint (not a file written by torch.save)") from None
        wanted = next(
            (line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line), str(err).splitlines()[0]
        )
        raise ValueError(
            f"refused to load {str(path)!r}: it holds pickled Python objects ({wanted}), and unpickling a file "
            f"runs code from it. lit-kd's own files hold only tensors and plain data; if you trust this file, "
            f"set {TRUST_ENV}=1"
        ) from None
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(err).__name__}: {err})") from err


def _looks_like_torch_file(path: Path) -> bool:
    """The zip format of ``torch.save``, or a legacy file (it starts with a pickle protocol opcode)."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _optimizer_classes() -> list[type]:
    """Classes a checkpoint may name as hyperparameters (a module built in Python records ``optimizer=torch.optim.Adam``):
    torch's optimizers and LR schedulers. Naming a class runs nothing; the allow-list lets ``weights_only`` read them."""
    import inspect

    classes = [c for _, c in inspect.getmembers(torch.optim, inspect.isclass) if issubclass(c, torch.optim.Optimizer)]
    return classes + [c for _, c in inspect.getmembers(torch.optim.lr_scheduler, inspect.isclass) if c.__module__.startswith("torch.optim")]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint or state dict")
    return checkpoint


def instantiate_network(spec: str | dict | nn.Module, num_classes: int = 10, kwargs: dict | None = None) -> nn.Module:
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
        return {k[len(NETWORK_PREFIX) :]: v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}
    return state


def state_mismatch(own: dict[str, Any], state: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """What keeps ``state`` from loading into a module whose state dict is ``own``: the keys it lacks, the keys the
    module lacks, and the shared keys whose shapes differ (each sorted)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    return missing, unexpected, wrong


def load_weights(network: nn.Module, path: str | Path, checkpoint: dict | None = None) -> nn.Module:
    """Load a lit-kd checkpoint's network (or a plain state-dict file) into ``network``; a clear error on mismatch.

    ``checkpoint``: the already-read contents of ``path``, to avoid reading a large file twice."""
    state = network_state(checkpoint if checkpoint is not None else read_checkpoint(path))
    missing, unexpected, wrong = state_mismatch(network.state_dict(), state)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        if any(m in k for k in unexpected for m in QAT_MARKERS):
            raise ValueError(
                f"checkpoint {str(path)!r} is a quantization-aware-training (QAT) checkpoint: its network holds "
                f"fake-quantize modules that a float {type(network).__name__} lacks; load the float checkpoint "
                "the QAT run started from, its int8_model.pt2 or int8_model.pt (lit_kd.artifacts.load_model), or "
                "test it with its run's config (lit-kd test --config <run>/config.yaml --ckpt_path ...)"
            )
        raise ValueError(f"checkpoint {str(path)!r} does not fit {type(network).__name__} ({detail}): is it from another architecture?")
    network.load_state_dict(state)
    return network


def build_network(checkpoint: dict[str, Any], path: str | Path = "<checkpoint>") -> nn.Module:
    """A fresh (untrained) instance of the network a lit-kd checkpoint's hyperparameters name."""
    hparams = checkpoint.get("hyper_parameters") or {}
    key = network_key(hparams)
    if key not in hparams:
        raise ValueError(
            f"checkpoint {str(path)!r} does not say which network it holds (no 'model' or 'student' hyperparameter); "
            "give the architecture explicitly and load the weights with load_weights(model, path)"
        )
    return instantiate_network(hparams[key], hparams.get("num_classes", 10), hparams.get(f"{key}_kwargs"))


def load_network(path: str | Path) -> nn.Module:
    """The trained network of a lit-kd checkpoint (a distilled checkpoint gives its student), in eval mode."""
    checkpoint = read_checkpoint(path)
    return load_weights(build_network(checkpoint, path), path, checkpoint).eval()


def write_weights_file(
    network: nn.Module, architecture: str, path: str | Path, num_classes: int = 10, model_kwargs: dict | None = None
) -> Path:
    """Save ``network`` as a small portable checkpoint: its state dict under the ``model.`` prefix and the
    architecture that rebuilds it, nothing else (no optimizer, no pickled objects: ``torch.load(path,
    weights_only=True)`` reads it). :func:`load_network`, ``lit-kd classify/ptq/export``, ``teacher_ckpt`` and
    ``init_ckpt`` take it like any lit-kd checkpoint; ``lit-kd test --ckpt_path`` too (it carries the Lightning
    version key Lightning's loader checks)."""
    import lightning

    from lit_kd.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(
            {
                "state_dict": {NETWORK_PREFIX + k: v.detach().cpu() for k, v in network.state_dict().items()},
                "hyper_parameters": {"model": architecture, "num_classes": num_classes, "model_kwargs": model_kwargs},
                "pytorch-lightning_version": lightning.__version__,
            },
            tmp,
        )
    return path


def config_sources(config_path: str) -> tuple[dict, dict | None]:
    """From a run's config.yaml: the network ``{"spec", "num_classes", "kwargs"}`` and the SparseMLRecipe
    callback's ``{"recipe", "recipe_args"}`` (None without one)."""
    import yaml

    config = yaml.safe_load(Path(config_path).read_text()) or {}
    init = (config.get("model") or {}).get("init_args") or {}
    key = network_key(init)
    if not isinstance(init.get(key), (str, dict)):
        raise ValueError(f"config {config_path!r} names no network (model.init_args.model or .student)")
    network = {"spec": init[key], "num_classes": init.get("num_classes", 10), "kwargs": init.get(f"{key}_kwargs")}
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    recipe = next(
        (
            {"recipe": c["init_args"]["recipe"], "recipe_args": c["init_args"].get("recipe_args")}
            for c in callbacks
            if isinstance(c, dict) and str(c.get("class_path", "")).endswith("SparseMLRecipe")
        ),
        None,
    )
    return network, recipe


def checkpoint_sources(checkpoint: dict) -> tuple[dict | None, dict | None]:
    """The same two from the checkpoint: its hyperparameters and its SparseMLRecipe callback state."""
    hparams = checkpoint.get("hyper_parameters") or {}
    key = network_key(hparams)
    network = None
    if isinstance(hparams.get(key), (str, dict)):
        network = {"spec": hparams[key], "num_classes": hparams.get("num_classes", 10), "kwargs": hparams.get(f"{key}_kwargs")}
    state = next((v for k, v in (checkpoint.get("callbacks") or {}).items() if "SparseMLRecipe" in k), None)
    recipe = {"recipe": state["recipe"], "recipe_args": state.get("recipe_args")} if state and "recipe" in state else None
    return network, recipe


def load_for_export(ckpt: str, config: str | None = None, checkpoint: dict | None = None) -> tuple[nn.Module, bool]:
    """The checkpoint's network in eval mode, and whether it holds (SparseML) QAT modules. The config, when
    given, names the architecture and the recipe; the checkpoint fills in what the config lacks. ``checkpoint``: the
    file's content when the caller has read it already."""
    from lit_kd.sparse.recipe import build_manager, quiet_loggers, read_recipe, structure_epoch

    checkpoint = read_checkpoint(ckpt) if checkpoint is None else checkpoint
    network_src, recipe = checkpoint_sources(checkpoint)
    if config is not None:
        config_network, config_recipe = config_sources(config)
        network_src, recipe = config_network, config_recipe or recipe
    if network_src is None:
        raise ValueError(f"checkpoint {ckpt!r} does not say which architecture it holds; give the run's config with --config")
    network = instantiate_network(network_src["spec"], network_src["num_classes"], network_src["kwargs"])
    qat = any(m in k for k in network_state(checkpoint) for m in QAT_MARKERS)
    if qat:
        if recipe is None:
            raise ValueError(
                f"checkpoint {ckpt!r} holds fake-quantize modules but no SparseML recipe. A QuantizationAwareTraining "
                "(torch.ao FX) checkpoint cannot be exported: its fused observer op has no ONNX form. Export the float "
                "checkpoint it started from, or run its int8_model.pt in PyTorch (lit_kd.callbacks.load_int8_model)"
            )
        manager = build_manager(read_recipe(recipe["recipe"]), recipe["recipe_args"])
        start = structure_epoch(manager)
        if start is None:
            raise ValueError(f"checkpoint {ckpt!r} holds QAT modules but its recipe has no QuantizationModifier")
        manager.apply_structure(network, epoch=start, loggers=quiet_loggers())
    return load_weights(network, ckpt, checkpoint).eval(), qat


def is_local_path(path) -> bool:
    """Whether ``path`` is on the local file system (not ``s3://``, ``http://`` ...)."""
    protocol = get_filesystem(path).protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,)) and not str(path).startswith("http")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO of every ``lit-kd`` run: local checkpoints appear complete or not at all, and are read safely.

    - Saving writes to ``.<name>.tmp<pid>`` beside the target, fsyncs it, renames it over the target and fsyncs the
      directory (:func:`lit_kd.atomic.atomic_path`): a crash or SIGKILL while saving leaves the previous checkpoint
      intact, never a truncated ``.ckpt``. Temporary files of processes killed mid-write are removed the first time
      this IO writes into a directory (and by :class:`~lit_kd.callbacks.BestAndLastCheckpoint` at the start of a run).
    - Loading (``fit/validate/test/predict --ckpt_path``) goes through :func:`safe_load`: tensors and plain data
      only, a file with pickled objects is refused unless ``LIT_KD_TRUST_CHECKPOINTS=1`` (or Lightning's own
      ``weights_only=False`` is passed explicitly).
    - Remote paths (``s3://`` ...) go through Lightning's own writer and reader (``weights_only=True`` unless trusted).

    ``lit-kd`` adds it to the trainer's plugins unless the user gives a ``CheckpointIO`` of their own (then theirs is
    used as given, without these guarantees); a wrapping IO given without a base (``AsyncCheckpointIO()``) gets this
    one as its base. Precision, environment and other plugins are kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[str] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not is_local_path(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        from lit_kd.atomic import atomic_path, remove_stale_temps

        path = Path(path)
        if str(path.parent) not in self._cleaned:
            remove_stale_temps(path.parent)
            self._cleaned.add(str(path.parent))
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        trusted = weights_only is False or os.environ.get(TRUST_ENV) == "1"
        if not is_local_path(path):
            return super().load_checkpoint(
                path, **({"map_location": map_location} if map_location is not None else {}), weights_only=not trusted
            )
        return safe_load(path, map_location="cpu" if map_location is None else map_location, trust=trusted)
