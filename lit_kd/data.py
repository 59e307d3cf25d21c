"""CIFAR-10 as a LightningDataModule: torchvision download, an image-folder tree, or a zip of one.

Images are decoded once into uint8 arrays (cached as an ``.npz``), kept as tensors and served in whole batches:
the loader indexes the arrays and draws the batch's augmentation parameters from a seed derived from the batch's
indices; ``on_after_batch_transfer`` applies them on the batch's device (the GPU when there is one) and normalises.
So there is no per-image PIL work in the training loop, and a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lit_kd.atomic import atomic_path
from lit_kd.augment import BatchAugmentation

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


def class_interleaved(labels: np.ndarray) -> np.ndarray:
    """Indices that visit the classes in turn (first image of each class, then the second of each, ...), keeping
    the stored order within a class: image folders store the test set class by class, and a prefix of it
    (``limit_val_batches``, a few example images) would otherwise see one or two classes only."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def stratified_split(labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``n`` items with each class represented in proportion to its count, and the remaining indices."""
    if not 0 < n <= len(labels):
        raise ValueError(f"cannot take {n} stratified samples from {len(labels)} images")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]] += 1
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
    picked = np.sort(picked)
    return picked, np.setdiff1d(np.arange(len(labels)), picked)


# ----------------------------------------------------------------------------------------------------------------
# Serving batches
# ----------------------------------------------------------------------------------------------------------------


class TensorBatches(Dataset):
    """Images (uint8, N x C x H x W) and labels served a whole batch at a time through ``__getitems__``.

    With an ``augmentation``, each batch also carries its random augmentation parameters, drawn from a generator
    seeded by the batch's indices (and ``seed``): deterministic and independent of loader workers and resumption.
    """

    def __init__(self, images: Tensor, labels: Tensor, augmentation: BatchAugmentation | None = None, seed: int = 0):
        self.images, self.labels, self.augmentation, self.seed = images, labels, augmentation, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = (self.images[idx], self.labels[idx])
        if self.augmentation is None:
            return batch
        seed = zlib.crc32(idx.numpy().tobytes(), self.seed & 0xFFFFFFFF)
        return (*batch, self.augmentation.sample(len(idx), torch.Generator().manual_seed(seed)))


def _keep_batch(batch):
    """collate_fn for datasets that already return whole batches."""
    return batch


class EpochSeededSampler(RandomSampler):
    """A random permutation per epoch from ``seed + epoch``, so a resumed run shuffles like an uninterrupted one.

    Lightning calls ``set_epoch`` at every epoch; under DDP it swaps this sampler for a DistributedSampler, which
    is seeded the same way.
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from ``data_dir``: a torchvision root, an image-folder directory, or a ``.zip`` of one.

    Args:
        data_dir: where the data is (see :func:`load_cifar10_arrays`).
        download: fetch the torchvision archive into ``data_dir`` when it is not there (needs internet).
        cache_dir: where decoded image folders are cached (default ``$LIT_KD_CACHE`` or ``~/.cache/lit-kd``).
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        train_size: train on a stratified subset of this many training images (None: all).
        val_split: 0 validates on the test set (the study protocol); N > 0 holds out N stratified training images
            for validation and keeps the test set for ``test``.
        padding, hflip, random_resized_crop, rrc_scale, mixup_alpha: training augmentation (:class:`BatchAugmentation`).
        channels_last: hand batches to the model in channels-last memory format (faster convolutions: eager ResNet-20
            training 1.3x on 2 CPU cores here, as fast as torch.compile; also on GPUs).
    """

    classes = CIFAR10_CLASSES
    mean = CIFAR10_MEAN
    std = CIFAR10_STD

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        download: bool = False,
        cache_dir: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_size: int | None = None,
        val_split: int = 0,
        seed: int = 0,
        padding: int = 4,
        hflip: bool = True,
        random_resized_crop: bool = False,
        rrc_scale: tuple[float, float] = (0.35, 1.0),
        mixup_alpha: float = 0.0,
        channels_last: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        if val_split < 0:
            raise ValueError(f"val_split must be 0 (validate on the test set) or a positive count, got {val_split}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be >= 1 (or None: all training images), got {train_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path, got {type(data_dir).__name__}")
        self.save_hyperparameters()
        self.augmentation = BatchAugmentation(
            padding=padding,
            hflip=hflip,
            random_resized_crop=random_resized_crop,
            rrc_scale=tuple(rrc_scale),
            mixup_alpha=mixup_alpha,
            num_classes=len(self.classes),
        )
        self.splits: dict[str, TensorBatches] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        """Download (torchvision source) or decode and cache (image folders) once, on the main process."""
        load_cifar10_arrays(self.hparams.data_dir, self.hparams.download, self.hparams.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        arrays = load_cifar10_arrays(hp.data_dir, hp.download, hp.cache_dir)
        (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
        train_idx = np.arange(len(train_y))
        val_idx = None
        if hp.val_split:
            if hp.val_split >= len(train_y):
                raise ValueError(f"val_split={hp.val_split} leaves no training images (only {len(train_y)})")
            val_idx, train_idx = stratified_split(train_y, hp.val_split, hp.seed)
        if hp.train_size is not None:
            if not 0 < hp.train_size <= len(train_idx):
                raise ValueError(f"train_size must be in 1..{len(train_idx)} (images available), got {hp.train_size}")
            keep, _ = stratified_split(train_y[train_idx], hp.train_size, hp.seed + 1)
            train_idx = train_idx[keep]

        def tensors(x: np.ndarray, y: np.ndarray, idx=None):
            if idx is not None:
                x, y = x[idx], y[idx]
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)

        self.splits["train"] = TensorBatches(*tensors(train_x, train_y, train_idx), self.augmentation, hp.seed)
        self.splits["test"] = TensorBatches(*tensors(test_x, test_y, class_interleaved(test_y)))
        self.splits["val"] = TensorBatches(*tensors(train_x, train_y, val_idx)) if val_idx is not None else self.splits["test"]

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochSeededSampler(dataset, self.hparams.seed) if shuffle else None,
            drop_last=shuffle and len(dataset) > batch_size,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=_keep_batch,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size or self.hparams.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size or self.hparams.batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the batch's device: uint8 -> float, augmentation (training batches only), normalisation."""
        images, labels, *params = batch
        images = images.float().div_(255)
        if params:
            images, labels = self.augmentation.apply(images, labels, params[0])
        images = self.normalize(images)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def normalized_batches(self, split: str, batch_size: int = 256, max_images: int | None = None, shuffle: bool = False, device=None):
        """Yield ``(images, labels)`` of ``split``, normalised and never augmented (for calibration and evaluation
        outside a Trainer): at most ``max_images`` images, shuffled with the module's seed, or else a stratified
        subset in stored order (image folders store the test set class by class, so a plain prefix would be biased)."""
        self.setup()
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        dataset = self.splits[split]
        if shuffle:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.hparams.seed))[:max_images]
        elif max_images is not None and max_images < len(dataset):
            order = torch.from_numpy(stratified_split(dataset.labels.numpy(), max_images, self.hparams.seed)[0])
        else:
            order = torch.arange(len(dataset))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            images = dataset.images[idx].to(device).float().div_(255)
            yield self.normalize(images), dataset.labels[idx].to(device)

    def normalize(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """Back to [0, 1] for display."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)
