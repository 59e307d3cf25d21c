"""CIFAR-10 as a LightningDataModule: torchvision download, an image-folder tree, or a zip of one.

Images are decoded once into uint8 arrays (cached as an ``.npz``), kept as tensors and served in whole batches:
the loader indexes the arrays and draws the batch's augmentation parameters from a seed derived from the batch's
indices; ``on_after_batch_transfer`` applies them on the batch's device (the GPU when there is one) and normalises.
So there is no per-image PIL work in the training loop, and a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import os
import zlib

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lit_kd.augment import BatchAugmentation
from lit_kd.data_sources import (  # noqa: F401  (lit_kd.data names them too)
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGE_SUFFIXES,
    SPLITS,
    Arrays,
    load_cifar10_arrays,
    read_image_folder,
    read_torchvision_cifar10,
)


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
