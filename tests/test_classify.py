"""``lit-kd classify`` through the installed console script: predictions for files and folders, test accuracy, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_kd.data import CIFAR10_CLASSES, CIFAR10DataModule
from lit_kd.modules import load_network
from tests.conftest import class_image
from tests.helpers import run_cli, write_config


def lit_kd(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lit-kd")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def expected_classes(ckpt: Path, arrays: list[np.ndarray]) -> list[str]:
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        logits = load_network(ckpt)(CIFAR10DataModule().normalize(images))
    return [CIFAR10_CLASSES[i] for i in logits.argmax(1).tolist()]


def test_classify_files_and_folders(trained_ckpt, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    arrays = [class_image(label, rng) for label in (0, 3, 7)]
    for i, array in enumerate(arrays[:2]):
        Image.fromarray(array).save(folder / f"img{i}.png")
    single = tmp_path / "single.png"
    Image.fromarray(arrays[2]).save(single)
    big = tmp_path / "big.jpg"
    Image.fromarray(np.kron(arrays[0], np.ones((2, 2, 1), dtype=np.uint8))).save(big, quality=100)

    proc = lit_kd("classify", "--ckpt", trained_ckpt, tmp_path / "photos", single, big, "--top-k", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in proc.stdout.splitlines() if line.startswith("│")]
    rows = {Path(row[0]).name: row for row in rows if row[0].endswith((".png", ".jpg"))}
    assert set(rows) == {"img0.png", "img1.png", "single.png", "big.jpg"}  # the folder was searched recursively
    for name, cls in zip(("img0.png", "img1.png", "single.png"), expected_classes(trained_ckpt, arrays)):
        assert rows[name][1] == cls, (name, rows[name])  # the top-1 class is the network's prediction
        assert rows[name][3] in CIFAR10_CLASSES and rows[name][3] != cls  # a different second guess
        assert float(rows[name][2].rstrip(" %")) >= float(rows[name][4].rstrip(" %"))
    assert rows["big.jpg"][-1] == "resized from 64x64"


def test_classify_reports_the_same_test_accuracy_as_lit_kd_test(trained_ckpt, tiny_zip, tmp_path, monkeypatch):
    proc = lit_kd("classify", "--ckpt", trained_ckpt, "--data", tiny_zip, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reported = float(proc.stdout.split("%")[0].split()[-1]) / 100
    monkeypatch.chdir(tmp_path)
    tested = run_cli("test", "--config", write_config(tmp_path / "t.yaml", tiny_zip, model="resnet8"), "--ckpt_path", trained_ckpt)
    assert reported == pytest.approx(tested.trainer.callback_metrics["test/acc"].item(), abs=1e-4)
    assert "of 60 test images correct" in proc.stdout


def test_classify_errors_are_clear(trained_ckpt, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    proc = lit_kd("classify", "--ckpt", trained_ckpt, not_image, cwd=tmp_path)
    assert proc.returncode != 0 and "notes.png' is not an image file" in proc.stderr
    proc = lit_kd("classify", "--ckpt", tmp_path / "nope.ckpt", not_image, cwd=tmp_path)
    assert proc.returncode != 0 and "nope.ckpt' does not exist" in proc.stderr
    proc = lit_kd("classify", "--ckpt", trained_ckpt, cwd=tmp_path)
    assert proc.returncode != 0 and "or --data DATA" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = lit_kd("classify", "--ckpt", trained_ckpt, tmp_path / "empty", cwd=tmp_path)
    assert proc.returncode != 0 and "holds no image files" in proc.stderr


class _WritesMarker:
    """A pickled object whose unpickling would create a file: what a crafted checkpoint can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, tiny_zip, capsys):
    import torch

    from lit_kd.checkpoints import read_checkpoint
    from lit_kd.commands.classify import main

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": "resnet8"}, "payload": _WritesMarker(marker)}, crafted)
    with pytest.raises(ValueError, match=r"refused to load .* pickled Python objects .* LIT_KD_TRUST_CHECKPOINTS=1"):
        read_checkpoint(crafted)
    with pytest.raises(SystemExit, match=r"lit-kd classify: error: --ckpt: refused to load") as exit:
        main(["--ckpt", str(crafted), "--data", str(tiny_zip)])
    assert isinstance(exit.value.code, str)  # a failure (exit status 1) with one line, not a usage error
    assert not marker.exists()
