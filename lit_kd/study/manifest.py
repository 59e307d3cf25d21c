"""The manifest of a study stage (``<out>/<stage>/manifest.json``): status, inputs and their hashes, outputs, metrics.

A stage is finished when its manifest says ``done`` and the hash of its inputs (its resolved settings, its config
file, and the content of every file it consumes) is the one recorded. File hashes are cached by path, size and
modification time in ``<out>/.hashes.json``, so checking a finished study reads no large file twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import threading
import time
from pathlib import Path

from lit_kd.atomic import write_json

MANIFEST = "manifest.json"


def read_manifest(stage_dir: Path) -> dict | None:
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a manifest that cannot be read counts as never run


def write_manifest(stage_dir: Path, manifest: dict) -> None:
    write_json(stage_dir / MANIFEST, manifest)


class StageClock:
    """Keeps ``manifest["wall_s"]`` (a stage's seconds over all its attempts) current on disk while the stage runs.

    A background thread rewrites the manifest every ``interval`` seconds, so an attempt that is killed still has its
    time counted when the stage resumes (to within one interval). The caller must not change ``manifest`` inside the
    ``with`` block; :meth:`seconds` gives the total when it ends.
    """

    def __init__(self, stage_dir: Path, manifest: dict, base_s: float = 0.0, interval: float = 30.0):
        self.stage_dir, self.manifest, self.base_s, self.interval = stage_dir, manifest, base_s, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="stage-clock", daemon=True)

    def seconds(self) -> float:
        return round(self.base_s + time.perf_counter() - self._start, 2)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.manifest["wall_s"] = self.seconds()
            write_manifest(self.stage_dir, self.manifest)

    def __enter__(self) -> StageClock:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class FileHashes:
    """sha256 of files, cached by (path, size, mtime) in one JSON file."""

    def __init__(self, cache_path: Path):
        self.cache_path = cache_path
        try:
            self.cache = json.loads(cache_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.cache = {}
        self.dirty = False

    def __call__(self, path: str | Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        stamp = [stat.st_size, stat.st_mtime_ns]
        cached = self.cache.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.cache[key] = [stamp, digest.hexdigest()]
        self.dirty = True
        return self.cache[key][1]

    def save(self) -> None:
        if self.dirty:
            write_json(self.cache_path, self.cache)
            self.dirty = False


def input_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


VERSIONS = ("lit-kd", "torch", "torchvision", "lightning", "torchmetrics", "onnx", "onnxruntime", "numpy")
OPTIONAL_VERSIONS = ("sparseml", "deepsparse", "openvino", "nncf", "torchao")  # recorded when installed


def package_versions() -> dict[str, str | None]:
    """The installed versions of :data:`VERSIONS` (None when missing) and of those :data:`OPTIONAL_VERSIONS` installed."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in VERSIONS + OPTIONAL_VERSIONS:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            if package in VERSIONS:
                versions[package] = None
    return versions


def environment() -> dict:
    """Machine, code and library versions, recorded in every manifest."""
    from lit_kd.speed import cpu_info

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "cpu": cpu_info(cores),
        "accelerator": accelerator(),
        "code": code_version(),
        "versions": package_versions(),
    }


def accelerator() -> str | None:
    """The GPU torch sees (name and count), or None on a CPU-only machine."""
    import torch

    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    return f"{torch.cuda.get_device_name(0)}" + (f" x{count}" if count > 1 else "")


def code_version() -> dict:
    """The lit-kd source the stage ran: ``{"commit": <git rev-parse HEAD>, "dirty": <tracked files changed>}`` when it
    runs from a git checkout, else ``{"version": <installed package version>}``, else ``{}`` (a copy without .git)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():  # a checkout (a worktree's .git is a file), not a package inside someone's repository

        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

        try:
            return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return {"version": version("lit-kd")}
    except PackageNotFoundError:
        return {}


def describe_code(code: dict | str | None) -> str:
    """A manifest's ``code`` in words: ``lit-kd git <commit> (dirty)``, ``lit-kd <version>`` or ``lit-kd (unknown
    version)``; older manifests recorded a ``git describe`` string, shown after ``lit-kd``."""
    if isinstance(code, str):
        return f"lit-kd {code}"
    if code and code.get("commit"):
        return f"lit-kd git {code['commit'][:12]}" + (" (dirty)" if code.get("dirty") else "")
    return f"lit-kd {code['version']}" if code and code.get("version") else "lit-kd (unknown version)"


def portable_command(command: str, out: Path, data: str | None, data_name: str) -> str:
    """A stage's command free of this machine's paths: ``<out>`` for the study's folder, ``data_name`` for its data."""
    command = command.replace(str(out.resolve()), "<out>")
    return command.replace(data, data_name) if data else command


def wall_time(manifest: dict) -> str:
    """A stage's wall time, all its attempts together: an interrupted and resumed stage says how many there were."""
    from lit_kd.study.render import minutes

    attempts = manifest.get("attempts") or 1
    return minutes(manifest.get("wall_s")) + (f" ({attempts} attempts)" if attempts > 1 else "")
