"""Shared fixtures: a small on-disk CIFAR-10-style image-folder zip, so the real loader and CLI run in tests."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_kd.data import CIFAR10_CLASSES

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")


def class_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 RGB image whose colour and stripe orientation depend on the class, plus noise: learnable."""
    base = np.zeros((32, 32, 3), dtype=np.float32)
    base[..., label % 3] = 140 + 10 * label
    stripes = (np.arange(32) // 4) % 2 * 80
    base[..., (label + 1) % 3] += stripes[:, None] if label < 5 else stripes[None, :]
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder_zip(path: Path, per_class: dict[str, int], seed: int = 0, class_order=None) -> Path:
    """Write ``split/<class>/<i>.png`` for each split's count per class; classes written in ``class_order``."""
    rng = np.random.default_rng(seed)
    order = list(class_order or CIFAR10_CLASSES)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split, count in per_class.items():
            for cls in order:
                label = CIFAR10_CLASSES.index(cls)
                for i in range(count):
                    zf.writestr(f"{split}/{cls}/{cls}_{i:04d}.png", png_bytes(class_image(label, rng)))
    return path


@pytest.fixture(autouse=True)
def restore_torch_process_state():
    """Every test starts from the same torch process settings: Trainer(deterministic=True) turns deterministic
    algorithms on for the whole process (quantized kernels then refuse to run), benchmarks pin the thread count and
    the quantized engine. Without this a test's outcome would depend on which tests ran before it."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.backends.quantized.engine,
        torch.get_default_dtype(),
        torch.get_rng_state(),
    )
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.set_num_threads(saved[2])
    torch.backends.quantized.engine = saved[3]
    torch.set_default_dtype(saved[4])
    torch.set_rng_state(saved[5])


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Decoded-image caches of the tests go to a temporary folder, never to the user's ~/.cache."""
    os.environ["LIT_KD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_zip(tmp_path_factory) -> Path:
    """240 training and 60 test images (24 and 6 per class), classes stored in reverse order."""
    path = tmp_path_factory.mktemp("data") / "tiny-cifar.zip"
    return write_image_folder_zip(path, {"train": 24, "test": 6}, class_order=list(reversed(CIFAR10_CLASSES)))


@pytest.fixture(scope="session")
def real_cifar10() -> Path:
    """The real CIFAR-10 zip from $LIT_KD_CIFAR10 (default ../shared/data/cifar10-png.zip); missing is a failure."""
    path = Path(os.environ.get("LIT_KD_CIFAR10") or REPO.parent / "shared" / "data" / "cifar10-png.zip").resolve()
    assert path.is_file(), f"real CIFAR-10 not found at {path} (set LIT_KD_CIFAR10 to the cifar10-png.zip)"
    return path


@pytest.fixture(scope="session")
def real_subset(real_cifar10, tmp_path_factory) -> Path:
    """The first 60 training and 40 test PNGs of each class of the real CIFAR-10, as a zip in the same layout."""
    path = tmp_path_factory.mktemp("real") / "cifar10-subset.zip"
    per_split = {"train": 60, "test": 40}
    with zipfile.ZipFile(real_cifar10) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        names = sorted(n for n in src.namelist() if n.lower().endswith(".png"))
        for split, count in per_split.items():
            for cls in CIFAR10_CLASSES:
                chosen = [n for n in names if f"{split}/{cls}/" in n][:count]
                assert len(chosen) == count, f"{real_cifar10} lacks {split}/{cls} images"
                for name in chosen:
                    dst.writestr(f"{split}/{cls}/{Path(name).name}", src.read(name))
    return path


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a temporary directory (Lightning writes lightning_logs/ into the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def trained_ckpt(tiny_zip, tmp_path_factory) -> Path:
    """best.ckpt of a resnet8 trained for 3 epochs on the fixture data through the real CLI (shared by the tests
    of the commands that read checkpoints)."""
    from tests.helpers import run_cli_in, write_config

    root = tmp_path_factory.mktemp("trained")
    cli = run_cli_in(root, "fit", "--config", write_config(root / "trained_resnet8.yaml", tiny_zip, model="resnet8", epochs=3))
    return Path(root, cli.trainer.checkpoint_callback.best_model_path)


def pytest_configure(config):
    config.addinivalue_line("markers", "sparse: needs the sparse extra (sparseml/deepsparse); `make test-core` deselects it")
    config.addinivalue_line(
        "markers", "openvino: needs the openvino extra (openvino, nncf); both make environments install it, so it always runs"
    )
    config.addinivalue_line("markers", "cuda: needs a CUDA device; not collected where torch sees none")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are not collected without a CUDA device (deselected, not skipped)."""
    if torch.cuda.is_available():
        return
    deselected = [item for item in items if item.get_closest_marker("cuda")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
