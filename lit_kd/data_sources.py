"""Reading CIFAR-10 sources into arrays: a zip or folder of images (``train/<class>/*``, ``test/<class>/*``) or a
torchvision CIFAR-10 root, decoded once and cached as ``.npz`` (:func:`load_cifar10_arrays`)."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lit_kd.atomic import atomic_path

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images N x 32 x 32 x 3, int64 labels N)


# ----------------------------------------------------------------------------------------------------------------
# Reading the sources
# ----------------------------------------------------------------------------------------------------------------


class _FolderTree:
    """Uniform access to an image-folder tree on disk or inside a zip: ``files()`` and ``read(name)``."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path) if path.is_file() else None
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"data_dir {str(path)!r} is not a readable zip file ({err})") from err
        if self.zip is not None:
            names = [n for n in self.zip.namelist() if not n.endswith("/")]
        else:
            names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        self.names = [n for n in names if not _is_hidden(n)]
        self.root = self._find_root()

    def _find_root(self) -> str:
        """The prefix under which train/ and test/ live ('' or one top-level folder such as 'cifar10/')."""
        tops = {n.split("/")[0] for n in self.names}
        if set(SPLITS) <= tops:
            return ""
        for top in sorted(tops):
            seconds = {n.split("/")[1] for n in self.names if n.startswith(top + "/") and n.count("/") >= 2}
            if set(SPLITS) <= seconds:
                return top + "/"
        raise ValueError(
            f"{self.path}: expected an image-folder tree with train/<class>/* and test/<class>/* "
            f"(optionally under one top-level folder), found top-level entries {sorted(tops)[:10]}"
        )

    def split_files(self, split: str) -> dict[str, list[str]]:
        """class folder name -> sorted member names of image files, for one split."""
        prefix = self.root + split + "/"
        by_class: dict[str, list[str]] = {}
        for name in self.names:
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" not in rest:
                raise ValueError(f"{self.path}: {name} lies directly in {split}/; expected {split}/<class>/<image>")
            cls = rest.split("/")[0]
            if name.lower().endswith(IMAGE_SUFFIXES):
                by_class.setdefault(cls, []).append(name)
        return {c: sorted(v) for c, v in by_class.items()}

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.path / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as err:
            damaged = " (the zip is damaged: copy or download it again)" if self.zip is not None else ""
            raise ValueError(f"{self.path}: {name} cannot be read: {err}{damaged}") from err


def _is_hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _decode_32x32_rgb(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != (32, 32) or img.mode != "RGB":
                raise ValueError(f"{where}: expected a 32x32 RGB image, got {img.size[0]}x{img.size[1]} {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{where}: corrupt or unreadable image file ({err})") from err


def read_image_folder(path: str | Path) -> Arrays:
    """Decode a ``train/<class>/*``, ``test/<class>/*`` tree (directory or zip) into uint8 arrays.

    Labels follow torchvision's CIFAR-10 class order whatever the folder order; the class folders must be exactly
    the ten CIFAR-10 class names.
    """
    tree = _FolderTree(Path(path))
    arrays: Arrays = {}
    for split in SPLITS:
        files = tree.split_files(split)
        missing = [c for c in CIFAR10_CLASSES if c not in files]
        unexpected = sorted(set(files) - set(CIFAR10_CLASSES))
        if missing or unexpected:
            raise ValueError(
                f"{path}: {split}/ must hold one folder per CIFAR-10 class {list(CIFAR10_CLASSES)}; "
                f"missing or empty: {missing}, unexpected: {unexpected}"
            )
        images, labels = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            for name in files[cls]:
                images.append(_decode_32x32_rgb(tree.read(name), f"{path}: {name}"))
                labels.append(label)
        arrays[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return arrays


def read_torchvision_cifar10(root: str | Path, download: bool) -> Arrays:
    """The torchvision CIFAR-10 (``root/cifar-10-batches-py``), downloaded there first when ``download``."""
    from torchvision.datasets import CIFAR10

    arrays: Arrays = {}
    for split in SPLITS:
        try:
            ds = CIFAR10(str(root), train=split == "train", download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
            raise FileNotFoundError(
                f"{root}: no torchvision CIFAR-10 found ({err}). Pass download: true to fetch it (needs internet), "
                "or point data_dir to an image-folder tree or .zip with train/<class>/* and test/<class>/*"
            ) from err
        arrays[split] = (np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))
    return arrays


def load_cifar10_arrays(data_dir: str | Path, download: bool = False, cache_dir: str | Path | None = None) -> Arrays:
    """Load CIFAR-10 from any supported source; image folders are decoded once and cached in ``cache_dir``."""
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path, got {type(data_dir).__name__}")
    path = Path(data_dir).expanduser()
    if path.is_file() and path.suffix.lower() != ".zip":
        raise ValueError(
            f"data_dir {str(path)!r} is a file but not a .zip: expected a torchvision CIFAR-10 root directory, "
            "an image-folder directory with train/<class>/* and test/<class>/*, or a .zip of such a tree"
        )
    is_folder_tree = path.suffix.lower() == ".zip" or (path.is_dir() and (path / "train").is_dir())
    if not is_folder_tree:
        if not path.exists() and not download:
            raise FileNotFoundError(
                f"data_dir {str(path)!r} does not exist. Expected a torchvision CIFAR-10 root (holding "
                "cifar-10-batches-py/; download: true fetches it), an image-folder directory with train/<class>/* "
                "and test/<class>/*, or a .zip of such a tree"
            )
        return read_torchvision_cifar10(path, download)
    if not path.exists():
        raise FileNotFoundError(f"data_dir {str(path)!r} does not exist (expected a .zip with train/ and test/)")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValueError(f"data_dir {str(path)!r} is not a valid zip file")
    cache = _cache_path(path, cache_dir)
    if cache.exists():
        with np.load(cache) as npz:
            return {s: (npz[f"{s}_x"], npz[f"{s}_y"]) for s in SPLITS}
    arrays = read_image_folder(path)
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:  # a concurrent or interrupted run never sees half a cache
        np.savez(f, **{f"{s}_{k}": a for s, (x, y) in arrays.items() for k, a in (("x", x), ("y", y))})
    return arrays


def _cache_path(path: Path, cache_dir: str | Path | None) -> Path:
    """Cache file named after the source's absolute path, size and modification time."""
    stat = path.stat()
    newest = stat.st_mtime_ns if path.is_file() else max(p.stat().st_mtime_ns for p in path.rglob("*"))
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{newest}".encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("LIT_KD_CACHE") or Path.home() / ".cache" / "lit-kd").expanduser()
    return root / f"cifar10-{path.stem}-{key}.npz"
