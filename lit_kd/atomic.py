"""Atomic file outputs: written to a temporary file in the target's directory, flushed to disk, then renamed.

A reader (or a resumed run) sees the old file or the complete new one, never a truncated one; the temporary file
is removed on every error path. ``os.replace`` within one directory is atomic on POSIX and Windows. A process killed
mid-write (SIGKILL, power loss) cannot remove its temporary file: :func:`remove_stale_temps` removes those of
processes that no longer run (a checkpoint directory is cleaned so at the start of every run; a temporary file whose
pid now belongs to another live process stays until that one ends).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp"  # temporary files are named ``.<name>.tmp<pid>`` beside the target
_TEMP_NAME = re.compile(r"^\..+" + re.escape(TMP_MARK) + r"(\d+)$")


def temp_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (by any writer: ``torch.save``, an exporter ...); on
    success it is fsynced and renamed over ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """``Path.write_text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``Path.write_bytes``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, payload: Any, indent: int = 2) -> Path:
    """``payload`` as JSON (non-JSON values as ``str``), with a final newline, atomically."""
    return write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")


def copy_file(source: str | Path, target: str | Path) -> Path:
    """``shutil.copyfile``, atomically (the target's folder is created)."""
    import shutil

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (the format from ``path``'s suffix, PNG without one) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return Path(path)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: treat every pid as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(directory: str | Path, include_own: bool = False) -> list[Path]:
    """Remove the temporary files (``.<name>.tmp<pid>``) that processes killed mid-write left in ``directory``: those
    of processes that no longer run (and this process's own with ``include_own``, for a caller that knows none of
    its writes is under way, e.g. at the start of a run). Returns the removed paths."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = int(match.group(1))
        if (pid == os.getpid() and include_own) or (pid != os.getpid() and not _alive(pid)):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
