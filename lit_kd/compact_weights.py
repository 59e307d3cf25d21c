"""Compact weights: a pruned network stored by what is left of it, not as a state dict full of zeros.

A ``.npz`` file (numpy's zip of arrays, read with ``allow_pickle=False``: nothing in it is unpickled). A tensor that
is mostly zeros is stored as its non-zero values (in their own dtype) and a bitmask of where they go
(``numpy.packbits``, deflated by the zip); every other tensor as it is. ``__meta__`` is a JSON text naming the
architecture that rebuilds the network. A ResNet-18 pruned to 100,000 parameters (of 11.2 M) takes about 0.5 MB
instead of 45 MB, and loads back bit-exact.

    >>> write_compact_weights(network, "resnet18", "resnet18_100k.npz", model_kwargs={"stem": "imagenet"})
    >>> network = read_compact_weights("resnet18_100k.npz")   # or lit_kd.artifacts.load_model(path)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

FORMAT = "lit-kd compact weights"
VERSION = 1
SUFFIX = ".npz"
SPARSE_BELOW = 0.5  # a tensor with fewer non-zero entries than this fraction is stored as values + mask
META = "__meta__"
MASK, VALUES = ".mask", ".values"


class CompactWeightsError(ValueError):
    """A file that is not lit-kd compact weights, or does not fit the network it names."""


def write_compact_weights(
    network: nn.Module, architecture: str, path: str | Path, num_classes: int = 10, model_kwargs: dict | None = None
) -> Path:
    """Save ``network``'s state dict compactly (see the module docstring), atomically; returns the path."""
    from lit_kd.atomic import atomic_path

    path = Path(path)
    if path.suffix != SUFFIX:
        raise CompactWeightsError(f"compact weights are written to a {SUFFIX} file, got {str(path)!r}")
    arrays: dict[str, np.ndarray] = {}
    shapes = {}
    for key, tensor in network.state_dict().items():
        values = tensor.detach().cpu().numpy()
        shapes[key] = list(values.shape)
        nonzero = values != 0
        if values.size and nonzero.mean() < SPARSE_BELOW:
            arrays[key + MASK] = np.packbits(nonzero.reshape(-1))
            arrays[key + VALUES] = values[nonzero]
        else:
            arrays[key] = values
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        "num_classes": num_classes,
        "model_kwargs": model_kwargs or {},
        "shapes": shapes,
    }
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def read_meta(path: str | Path) -> dict:
    """The ``__meta__`` record of a compact weights file; anything else is a :class:`CompactWeightsError`."""
    if not zipfile.is_zipfile(path):
        raise CompactWeightsError(f"{str(path)!r} is not a lit-kd compact weights file (not a .npz zip archive)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if META not in arrays:
                raise CompactWeightsError(f"{str(path)!r} is a .npz file but not lit-kd compact weights (no {META!r} record)")
            meta = json.loads(arrays[META].tobytes().decode())
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        if isinstance(err, CompactWeightsError):
            raise
        raise CompactWeightsError(f"{str(path)!r} is not a lit-kd compact weights file ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CompactWeightsError(f"{str(path)!r} is a .npz file but not lit-kd compact weights (its record names no {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CompactWeightsError(f"{str(path)!r} is compact weights version {meta.get('version')}; this lit-kd reads version {VERSION}")
    return meta


def read_state(path: str | Path, meta: dict) -> dict[str, torch.Tensor]:
    """The full state dict stored in ``path`` (zeros restored)."""
    state = {}
    with np.load(path, allow_pickle=False) as arrays:
        for key, shape in meta["shapes"].items():
            if key in arrays:
                state[key] = torch.from_numpy(arrays[key].copy())
                continue
            try:
                mask = np.unpackbits(arrays[key + MASK], count=int(np.prod(shape))).astype(bool)
                values = arrays[key + VALUES]
            except KeyError:
                raise CompactWeightsError(f"{str(path)!r} lacks the tensor {key!r} its record lists") from None
            if int(mask.sum()) != values.size:
                raise CompactWeightsError(f"{str(path)!r}: tensor {key!r} has {values.size} values for {int(mask.sum())} mask entries")
            dense = np.zeros(mask.size, dtype=values.dtype)
            dense[mask] = values
            state[key] = torch.from_numpy(dense.reshape(shape))
    return state


def read_compact_weights(path: str | Path) -> nn.Module:
    """The network stored in a compact weights file, in eval mode."""
    from lit_kd.checkpoints import instantiate_network, state_mismatch

    meta = read_meta(path)
    network = instantiate_network(meta["architecture"], meta["num_classes"], meta["model_kwargs"])
    state = read_state(path, meta)
    missing, unexpected, wrong = state_mismatch(network.state_dict(), state)
    if missing or unexpected or wrong:
        detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}, shape differs {wrong[:3]}"
        raise CompactWeightsError(f"{str(path)!r} does not fit {meta['architecture']} ({detail})")
    network.load_state_dict(state)
    return network.eval()
