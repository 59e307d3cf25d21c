"""The resume file of a mixed-precision search: every measurement (a layer's sensitivities, an allocation's
accuracy) is written as it is made, so an interrupted search (hours with AdaRound on 2 cores) continues where it
stopped. :func:`search_key` names what the measurements depend on; :class:`SearchCache` keeps them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch.nn as nn

from lit_kd.atomic import write_text


def search_key(model: nn.Module, act_bits: int | dict[str, int], calib: list, eval_batches: list, options: dict) -> str:
    """A hash of what a search's measurements depend on: the model's weights, the activation width, the calibration
    and evaluation images and the quantizer options (not the candidate widths: each measurement names its widths, so a
    search with more candidates reuses those of one with fewer).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(4, 2)
        >>> calib, held_out = [torch.zeros(8, 4)], [(torch.ones(8, 4), torch.zeros(8, dtype=torch.long))]
        >>> key = search_key(model, 8, calib, held_out, {"observer": "minmax"})
        >>> len(key), key == search_key(model, 4, calib, held_out, {"observer": "minmax"})
        (64, False)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(["others float", act_bits, options], sort_keys=True).encode())
    for x in [*calib, *(x for x, _ in eval_batches)]:
        digest.update(x.cpu().numpy().tobytes()[:4096])
        digest.update(str(tuple(x.shape)).encode())
    return digest.hexdigest()


class SearchCache:
    """The measurements of a search, kept in a JSON file as they are made (written atomically after each), so an
    interrupted search resumes where it stopped: per-layer sensitivities and the accuracy of every allocation
    evaluated. Entries are used only when the file's key (:func:`search_key`) is this search's; ``path=None``
    keeps them in memory.

    Example::

        >>> cache = SearchCache(None, "key")
        >>> cache.put_sensitivity("conv1", {2: 0.31, 8: 0.0}, seconds=1.5)
        >>> cache.put_accuracy({"conv1": 2, "linear": 8}, 0.9, seconds=2.0)
        >>> cache.sensitivity("conv1"), cache.sensitivity("linear")
        ({2: 0.31, 8: 0.0}, None)
        >>> cache.accuracy({"linear": 8, "conv1": 2}), cache.measured_seconds()
        (0.9, 3.5)
    """

    def __init__(self, path: Path | None, key: str):
        self.path, self.key = path, key
        self.data: dict = {"key": key, "sensitivity": {}, "accuracy": {}, "seconds": {}}
        if path is not None and Path(path).is_file():
            try:
                stored = json.loads(Path(path).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                stored = {}  # unreadable: measured again
            if isinstance(stored, dict) and stored.get("key") == key:
                self.data["sensitivity"] = stored.get("sensitivity") or {}
                self.data["accuracy"] = stored.get("accuracy") or {}
                self.data["seconds"] = stored.get("seconds") or {}

    def sensitivity(self, path: str) -> dict[int, float] | None:
        found = self.data["sensitivity"].get(path)
        return {int(b): v for b, v in found.items()} if found is not None else None

    def accuracy(self, widths: dict[str, int | None]) -> float | None:
        return self.data["accuracy"].get(json.dumps(widths, sort_keys=True))

    def put_sensitivity(self, path: str, values: dict[int, float], seconds: float) -> None:
        """Add a layer's sensitivities at some widths (kept beside those stored at other widths)."""
        self.data["sensitivity"].setdefault(path, {}).update({str(b): v for b, v in values.items()})
        self.data["seconds"]["sensitivity " + path] = self.data["seconds"].get("sensitivity " + path, 0.0) + seconds
        self._save()

    def put_accuracy(self, widths: dict[str, int | None], acc: float, seconds: float) -> None:
        key = json.dumps(widths, sort_keys=True)
        self.data["accuracy"][key] = acc
        self.data["seconds"]["accuracy " + key] = seconds
        self._save()

    def measured_seconds(self) -> float:
        """The time the stored measurements took, whichever attempt made them."""
        return float(sum(self.data["seconds"].values()))

    def _save(self) -> None:
        if self.path is not None:
            write_text(self.path, json.dumps(self.data, indent=1))
