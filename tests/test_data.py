"""CIFAR10DataModule: sources, class order, caching, splits, batched augmentation and bad-input errors."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lit_kd.data as data_mod
import lit_kd.data_sources as data_sources
from lit_kd.augment import BatchAugmentation, random_crop
from lit_kd.data import CIFAR10_CLASSES, CIFAR10DataModule, load_cifar10_arrays, stratified_split
from tests.conftest import class_image, png_bytes, write_image_folder_zip


def test_zip_loads_with_torchvision_class_order(tiny_zip, tmp_path):
    arrays = load_cifar10_arrays(tiny_zip, cache_dir=tmp_path)
    x, y = arrays["train"]
    assert x.shape == (240, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [24] * 10
    # The zip lists classes in reverse order; labels must still follow torchvision's order.
    rng = np.random.default_rng(0)
    first_written = class_image(CIFAR10_CLASSES.index("truck"), rng)  # first image the fixture wrote
    truck_rows = np.flatnonzero(y == 9)
    assert np.array_equal(x[truck_rows[0]], first_written)
    assert arrays["test"][0].shape == (60, 32, 32, 3)


def test_directory_tree_equals_zip_and_cache_is_used(tiny_zip, tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    with zipfile.ZipFile(tiny_zip) as zf:
        zf.extractall(tree)
    from_zip = load_cifar10_arrays(tiny_zip, cache_dir=tmp_path / "c1")
    from_dir = load_cifar10_arrays(tree, cache_dir=tmp_path / "c2")
    for split in ("train", "test"):
        assert np.array_equal(from_zip[split][0], from_dir[split][0])
        assert np.array_equal(from_zip[split][1], from_dir[split][1])
    assert len(list((tmp_path / "c1").glob("*.npz"))) == 1

    def no_decoding(path):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(data_sources, "read_image_folder", no_decoding)
    cached = load_cifar10_arrays(tiny_zip, cache_dir=tmp_path / "c1")
    assert np.array_equal(cached["train"][0], from_zip["train"][0])


def test_zip_with_single_top_level_folder(tmp_path):
    path = tmp_path / "nested.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for label, cls in enumerate(CIFAR10_CLASSES):
                zf.writestr(f"cifar10/{split}/{cls}/0.png", png_bytes(class_image(label, np.random.default_rng(label))))
    arrays = load_cifar10_arrays(path, cache_dir=tmp_path)
    assert arrays["train"][1].tolist() == list(range(10))


def test_stratified_split_is_balanced_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    picked, rest = stratified_split(labels, 100, seed=3)
    assert np.bincount(labels[picked]).tolist() == [10] * 10
    assert len(np.intersect1d(picked, rest)) == 0 and len(picked) + len(rest) == 500
    assert np.array_equal(picked, stratified_split(labels, 100, seed=3)[0])
    assert not np.array_equal(picked, stratified_split(labels, 100, seed=4)[0])
    odd, _ = stratified_split(labels, 15, seed=0)
    assert sorted(np.bincount(labels[odd], minlength=10).tolist()) == [1] * 5 + [2] * 5


def test_datamodule_subset_and_holdout(tiny_zip):
    dm = CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=16, train_size=100, val_split=40)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 100 and len(dm.splits["val"]) == 40 and len(dm.splits["test"]) == 60
    assert torch.bincount(dm.splits["val"].labels).tolist() == [4] * 10
    assert torch.bincount(dm.splits["train"].labels).tolist() == [10] * 10
    # validation images come from the training images, never from the test set; none is also trained on
    val = {bytes(im.numpy()) for im in dm.splits["val"].images}
    train = {bytes(im.numpy()) for im in dm.splits["train"].images}
    assert not val & train
    dm0 = CIFAR10DataModule(data_dir=str(tiny_zip), val_split=0)
    dm0.setup("fit")
    assert dm0.splits["val"] is dm0.splits["test"]


def test_training_batches_are_reproducible_and_normalised(tiny_zip):
    dm = CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=32)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    first = [dm.on_after_batch_transfer(b, 0) for b in loader]
    loader.sampler.set_epoch(1)
    again = [dm.on_after_batch_transfer(b, 0) for b in loader]
    loader.sampler.set_epoch(2)
    other = next(iter(loader))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][1], dm.on_after_batch_transfer(other, 0)[1])
    assert len(first) == 240 // 32  # drop_last on training batches
    # evaluation batches: exactly the normalisation formula, no augmentation
    x, y = next(iter(dm.test_dataloader()))
    out, labels = dm.on_after_batch_transfer((x, y), 0)
    mean = torch.tensor(data_mod.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data_mod.CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (x.float() / 255 - mean) / std)
    assert torch.equal(labels, y)


def test_normalized_batches_subset_is_stratified_and_shuffle_is_seeded(tiny_zip):
    import torch

    dm = CIFAR10DataModule(data_dir=str(tiny_zip))
    labels = torch.cat([y for _, y in dm.normalized_batches("test", 7, max_images=20)])
    assert torch.bincount(labels, minlength=10).tolist() == [2] * 10  # a plain prefix would hold 3-4 classes only
    everything = torch.cat([x for x, _ in dm.normalized_batches("test", 64)])
    assert len(everything) == 60 and abs(everything.mean().item()) < 1.0
    first = [y for _, y in dm.normalized_batches("train", 16, max_images=32, shuffle=True)]
    again = [y for _, y in dm.normalized_batches("train", 16, max_images=32, shuffle=True)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == 2


def test_random_crop_matches_per_image_reference():
    images = torch.rand(5, 3, 8, 8)
    offsets = torch.tensor([[0, 0], [4, 4], [2, 3], [4, 0], [1, 2]])
    out = random_crop(images, offsets, padding=2)
    padded = F.pad(images, (2, 2, 2, 2))
    for i, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, r : r + 8, c : c + 8])


def test_flip_and_mixup_follow_their_formulas():
    aug = BatchAugmentation(padding=0, hflip=True, mixup_alpha=0.4, num_classes=4)
    params = aug.sample(6, torch.Generator().manual_seed(0))
    images, labels = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    out, soft = aug.apply(images, labels, params)
    flipped = torch.where(params["flip"][:, None, None, None], images.flip(-1), images)
    lam, perm = params["lam"], params["perm"]
    assert torch.allclose(out, lam * flipped + (1 - lam) * flipped[perm])
    onehot = F.one_hot(labels, 4).float()
    assert torch.allclose(soft, lam * onehot + (1 - lam) * onehot[perm])
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_random_resized_crop_full_area_is_identity_and_crops_otherwise():
    images = torch.rand(4, 3, 32, 32)
    full = BatchAugmentation(hflip=False, random_resized_crop=True, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))
    out, _ = full.apply(images, torch.zeros(4, dtype=torch.long), full.sample(4, torch.Generator().manual_seed(0)))
    assert torch.allclose(out, images, atol=1e-5)
    small = BatchAugmentation(hflip=False, random_resized_crop=True, rrc_scale=(0.1, 0.2))
    out, _ = small.apply(images, torch.zeros(4, dtype=torch.long), small.sample(4, torch.Generator().manual_seed(0)))
    assert out.shape == images.shape and not torch.allclose(out, images, atol=1e-2)


# --------------------------------------------------------------------------------------------------------------
# Bad input: each error names what was looked for
# --------------------------------------------------------------------------------------------------------------


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _all_classes(split_prefix="", skip=(), extra=(), image=None):
    img = image if image is not None else png_bytes(class_image(0, np.random.default_rng(0)))
    members = {}
    for split in ("train", "test"):
        for cls in [c for c in CIFAR10_CLASSES if c not in skip] + list(extra):
            members[f"{split_prefix}{split}/{cls}/0.png"] = img
    return members


def test_missing_path_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*torchvision CIFAR-10 root.*image-folder"):
        load_cifar10_arrays(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.zip"):
        load_cifar10_arrays(tmp_path / "nowhere.zip")


def test_torchvision_root_without_archive_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no torchvision CIFAR-10 found.*download: true"):
        load_cifar10_arrays(tmp_path)


def test_zip_without_train_and_test(tmp_path):
    path = _zip(tmp_path / "flat.zip", {"images/airplane/0.png": b"x"})
    with pytest.raises(ValueError, match=r"expected an image-folder tree with train/<class>.*images"):
        load_cifar10_arrays(path, cache_dir=tmp_path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"not a valid zip"):
        load_cifar10_arrays(path, cache_dir=tmp_path)


def test_missing_and_unexpected_class_folders(tmp_path):
    path = _zip(tmp_path / "classes.zip", _all_classes(skip=("cat",), extra=("kitten",)))
    with pytest.raises(ValueError, match=r"missing or empty: \['cat'\], unexpected: \['kitten'\]"):
        load_cifar10_arrays(path, cache_dir=tmp_path)


def test_wrong_image_size_and_mode_named(tmp_path):
    members = _all_classes()
    members["train/dog/0.png"] = png_bytes(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match=r"train/dog/0.png: expected a 32x32 RGB image, got 28x28 RGB"):
        load_cifar10_arrays(_zip(tmp_path / "size.zip", members), cache_dir=tmp_path)
    members = _all_classes()
    members["test/frog/0.png"] = png_bytes(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"test/frog/0.png: expected a 32x32 RGB image, got 32x32 L"):
        load_cifar10_arrays(_zip(tmp_path / "gray.zip", members), cache_dir=tmp_path)


def test_corrupt_file_named(tmp_path):
    members = _all_classes()
    members["train/ship/0.png"] = png_bytes(class_image(8, np.random.default_rng(0)))[:60]
    with pytest.raises(ValueError, match=r"train/ship/0.png: corrupt or unreadable image"):
        load_cifar10_arrays(_zip(tmp_path / "corrupt.zip", members), cache_dir=tmp_path)


def test_bad_datamodule_arguments(tiny_zip):
    with pytest.raises(ValueError, match=r"val_split must be 0"):
        CIFAR10DataModule(data_dir=str(tiny_zip), val_split=-1)
    dm = CIFAR10DataModule(data_dir=str(tiny_zip), train_size=10_000)
    with pytest.raises(ValueError, match=r"train_size must be in 1..240"):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"rrc_scale"):
        CIFAR10DataModule(data_dir=str(tiny_zip), rrc_scale=(0.5, 2.0))


def test_fixture_writer_round_trip(tmp_path):
    path = write_image_folder_zip(tmp_path / "one.zip", {"train": 1, "test": 1})
    assert load_cifar10_arrays(path, cache_dir=tmp_path)["test"][1].tolist() == list(range(10))


def test_test_split_visits_the_classes_in_turn(tiny_zip):
    from lit_kd.data import CIFAR10DataModule

    dm = CIFAR10DataModule(str(tiny_zip))
    dm.setup("test")
    labels = dm.splits["test"].labels
    assert labels[:10].tolist() == list(range(10)) and labels[10:20].tolist() == list(range(10))  # any prefix is balanced
    assert torch.bincount(labels).tolist() == [6] * 10  # nothing lost or repeated
