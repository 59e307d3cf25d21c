"""Compact weights (.npz) of pruned networks, ``lit-kd summary`` and ``lit-kd predict -w``: sizes, exact round trips,
the real console script, and clear errors on files that are not ours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_kd.artifacts import ModelFileError, load_model
from lit_kd.cli import weights_predict
from lit_kd.compact_weights import CompactWeightsError, read_compact_weights, write_compact_weights
from lit_kd.data import CIFAR10_CLASSES, CIFAR10DataModule
from lit_kd.evaluation import test_set_accuracy
from lit_kd.models import build_model, model_summary
from tests.conftest import class_image


def lit_kd(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lit-kd")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def magnitude_pruned(network: torch.nn.Module, keep: int) -> torch.nn.Module:
    """Keep the ``keep`` largest conv/linear weights (global magnitude), zero the rest; BatchNorm statistics randomised
    so that they are not the defaults a fresh network would load anyway."""
    weights = [m.weight for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    threshold = magnitudes.kthvalue(magnitudes.numel() - keep).values
    with torch.no_grad():
        for w in weights:
            w.mul_(w.abs() > threshold)
        for m in network.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_()
    return network.eval()


@pytest.fixture(scope="module")
def pruned_resnet18():
    """ResNet-18 with the ImageNet stem (11.2 M parameters) pruned to 100,000 parameters in all."""
    torch.manual_seed(0)
    network = build_model("resnet18", stem="imagenet")
    others = sum(p.numel() for n, p in network.named_parameters() if not (n.endswith("weight") and p.dim() > 1))
    return magnitude_pruned(network, 100_000 - others)


def test_a_pruned_resnet18_is_stored_in_about_4_bytes_per_parameter_and_loads_back_exactly(pruned_resnet18, tmp_path):
    total = sum(r.nonzero for r in model_summary(pruned_resnet18))
    assert total == 100_000
    path = write_compact_weights(pruned_resnet18, "resnet18", tmp_path / "r18_100k.npz", model_kwargs={"stem": "imagenet"})
    assert path.stat().st_size < 0.6e6  # a dense state dict is 45 MB; 100,000 float32 values are 0.4 MB
    loaded, kind = load_model(path)
    assert kind == "float" and not loaded.training
    for key, value in pruned_resnet18.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned_resnet18(x))
    assert loaded.maxpool is not None and loaded.conv1.kernel_size == (7, 7)  # the ImageNet stem came back


def test_files_that_are_not_compact_weights_are_refused_in_one_line(pruned_resnet18, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ModelFileError, match=r"not a \.npz zip archive"):
        load_model(junk)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="not lit-kd compact weights"):
        load_model(foreign)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"format": "lit-kd compact weights"}], dtype=object))
    with pytest.raises(ModelFileError, match="Object arrays cannot be loaded"):  # never unpickled
        load_model(pickled)
    newer = tmp_path / "newer.npz"
    meta = {"format": "lit-kd compact weights", "version": 99}
    np.savez(newer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(ModelFileError, match="version 99"):
        load_model(newer)
    with pytest.raises(CompactWeightsError, match=r"a \.npz file"):
        write_compact_weights(pruned_resnet18, "resnet18", tmp_path / "weights.pt")
    small = write_compact_weights(build_model("resnet8"), "resnet20", tmp_path / "mislabelled.npz")
    with pytest.raises(CompactWeightsError, match="does not fit resnet20"):
        read_compact_weights(small)


def test_weights_predict_routes_only_w_to_the_weights_command():
    assert weights_predict(["predict", "-w", "x.npz", "a.png"])
    assert weights_predict(["predict", "a.png", "--weights=x.npz"])
    assert not weights_predict(["predict", "--config", "c.yaml"])  # LightningCLI's predict
    assert not weights_predict(["fit", "-w", "x"])


def test_predict_and_summary_through_the_console_script(trained_ckpt, tiny_zip, tmp_path):
    network = load_model(trained_ckpt)[0]
    magnitude_pruned(network, 20_000)
    path = write_compact_weights(network, "resnet8", tmp_path / "resnet8_pruned.npz")
    correct, total = test_set_accuracy(network, str(tiny_zip), 64)

    proc = lit_kd("predict", "-w", path, "--data", tiny_zip, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"({correct} of {total} test images correct)" in proc.stdout

    rng = np.random.default_rng(3)
    arrays = {cls: class_image(CIFAR10_CLASSES.index(cls), rng) for cls in ("cat", "ship", "truck")}
    for cls, array in arrays.items():
        (tmp_path / "photos" / cls).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "photos" / cls / "0.png")
    images = torch.from_numpy(np.stack(list(arrays.values()))).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        predicted = network(CIFAR10DataModule().normalize(images)).argmax(1).tolist()
    right = sum(CIFAR10_CLASSES[p] == cls for p, cls in zip(predicted, arrays))
    proc = lit_kd("predict", "-w", path, tmp_path / "photos", "--topk", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in proc.stdout.splitlines() if ".png" in line]
    assert [row[1] for row in rows] == [CIFAR10_CLASSES[p] for p in predicted] and len(rows[0]) == 1 + 2 * 3 + 1
    assert f"({right} of 3 images correct)" in proc.stdout  # labels read from the class folders

    proc = lit_kd("summary", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = sum(r.nonzero for r in model_summary(network))
    assert f"Total params: {left:,}" in proc.stdout and f"Params size (MB): {left * 4 / 1e6:.2f}" in proc.stdout
    assert "layer3.0.conv1" in proc.stdout and "64x8x8" in proc.stdout  # per-layer rows with output shapes

    proc = lit_kd("predict", "-w", tmp_path / "missing.npz", "--data", tiny_zip, cwd=tmp_path)
    assert proc.returncode == 2 and "--weights: checkpoint" in proc.stderr and "does not exist" in proc.stderr
