"""Model zoo: CIFAR adaptation, truncated student, CIFAR ResNets, weight loading, per-layer summary."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.nn.utils import prune

from lit_kd.models import MODELS, build_model, model_summary, summary_totals
from lit_kd.models.cifar_resnet import ZeroPadShortcut


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_32x32_to_logits(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_torchvision_resnet_cifar_stem_and_untouched_body():
    model = build_model("resnet50")
    reference = torchvision.models.resnet50()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10 and model.fc.in_features == 2048
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        ours = [p.shape for p in getattr(model, layer).parameters()]
        assert ours == [p.shape for p in getattr(reference, layer).parameters()]
    # with the CIFAR stem, a 32x32 image reaches layer4 at 4x4
    features = {}
    model.layer4.register_forward_hook(lambda m, i, o: features.update(l4=o.shape))
    model(torch.zeros(1, 3, 32, 32))
    assert features["l4"] == (1, 2048, 4, 4)


def test_imagenet_stem_is_kept_on_request():
    model = build_model("resnet18", stem="imagenet")
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    with pytest.raises(ValueError, match="stem must be"):
        build_model("resnet18", stem="tiny")


def test_resnet20_with_its_last_stage_cut_to_one_block_is_under_half_the_teacher():
    student, teacher = build_model("resnet20_trunc3"), build_model("resnet20")
    assert [len(s) for s in (student.layer1, student.layer2, student.layer3)] == [3, 3, 1]
    # the stage cut is the one that holds most parameters; two identical 64 -> 64 blocks go
    stage = {n: sum(p.numel() for p in getattr(teacher, n).parameters()) for n in ("layer1", "layer2", "layer3")}
    assert max(stage, key=stage.get) == "layer3"
    per_block = 2 * (64 * 64 * 9 + 2 * 64)
    total = sum(p.numel() for p in teacher.parameters())
    assert sum(p.numel() for p in student.parameters()) == total - 2 * per_block == 121_754 < total / 2
    taps = {}
    for tag, m in (("s", student), ("t", teacher)):
        for layer in ("layer1", "layer2", "layer3"):
            getattr(m, layer).register_forward_hook(lambda mod, i, o, key=(tag, layer): taps.__setitem__(key, o.shape))
        m(torch.randn(2, 3, 32, 32))
    assert all(taps["s", layer] == taps["t", layer] for layer in ("layer1", "layer2", "layer3"))  # feature pairs still match


def test_truncated_resnet101_student():
    student, teacher = build_model("resnet101_trunc"), build_model("resnet101")
    assert len(student.layer3) == 1 and len(teacher.layer3) == 23
    block = student.layer3[0]
    assert block.conv1.in_channels == 512 and block.conv3.out_channels == 1024 and block.conv2.stride == (2, 2)
    downsample = block.downsample[0]  # the branch that maps layer2's output to the block's shape
    assert (downsample.in_channels, downsample.out_channels, downsample.kernel_size, downsample.stride) == (512, 1024, (1, 1), (2, 2))
    # a downsample branch (1x1 conv + BN) exactly where a block changes resolution or width, the first block of each
    # stage; elsewhere the fusion-safe blocks hold an Identity (never None, so "is not None" would always hold)
    for model in (student, teacher):
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            for i, b in enumerate(getattr(model, layer)):
                changes = b.conv2.stride != (1, 1) or b.conv1.in_channels != b.conv3.out_channels
                assert changes == (i == 0), f"{layer}.{i}"
                if changes:
                    conv, bn = b.downsample
                    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (b.conv1.in_channels, b.conv3.out_channels, (1, 1))
                    assert conv.stride == b.conv2.stride and isinstance(bn, nn.BatchNorm2d), f"{layer}.{i}"
                else:
                    assert isinstance(b.downsample, nn.Identity), f"{layer}.{i}"
    # the student is the teacher less 22 of layer3's 23 blocks (identical blocks, 1024 -> 256 -> 256 -> 1024)
    per_block = 1024 * 256 + 256 * 256 * 9 + 256 * 1024 + 2 * (256 + 256 + 1024)
    assert sum(p.numel() for p in teacher.layer3[1].parameters()) == per_block
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in teacher.parameters()) - 22 * per_block
    for layer in ("layer1", "layer2", "layer4"):
        assert [p.shape for p in getattr(student, layer).parameters()] == [p.shape for p in getattr(teacher, layer).parameters()]
    shapes = {}
    for layer in ("layer1", "layer2", "layer4"):
        for tag, m in (("s", student), ("t", teacher)):
            getattr(m, layer).register_forward_hook(lambda mod, i, o, k=(tag, layer): shapes.__setitem__(k, o.shape))
    x = torch.zeros(1, 3, 32, 32)
    student.eval()(x), teacher.eval()(x)
    assert all(shapes[("s", n)] == shapes[("t", n)] for n in ("layer1", "layer2", "layer4"))


@pytest.mark.parametrize("depth,params", [(20, 269_722), (32, 464_154), (56, 853_018)])
def test_cifar_resnet_depth_and_size(depth, params):
    model = build_model(f"resnet{depth}")
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth  # option A adds no layers: 6n + 1 convs + 1 linear
    # 3x3 convs: stem 3*16*9, per stage n blocks of two c*c*9 (first of stages 2/3 from c/2), BN 4 per channel
    n = (depth - 2) // 6
    convs = 3 * 16 * 9 + sum(9 * c * c * (2 * n) - (9 * c * c // 2 if c > 16 else 0) for c in (16, 32, 64))
    bn = 2 * (16 + sum(2 * n * c for c in (16, 32, 64)))
    assert convs + bn + 64 * 10 + 10 == params == sum(p.numel() for p in model.parameters())


def test_zero_pad_shortcut_subsamples_and_pads_channels():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4)
    out = ZeroPadShortcut(4, 8, 2)(x)
    assert out.shape == (2, 8, 2, 2)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert not out[:, :2].any() and not out[:, 6:].any()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet_shortcut_changes_shape_only_between_stages(shortcut):
    """Identity where a block keeps resolution and width; option A (zero padding, no parameters) or option B (1x1
    conv with stride 2 + BatchNorm) exactly where it halves the resolution and doubles the width."""
    model = build_model("resnet20", shortcut=shortcut)
    for layer in ("layer1", "layer2", "layer3"):
        for i, block in enumerate(getattr(model, layer)):
            changes = block.conv1.stride != (1, 1) or block.conv1.in_channels != block.conv2.out_channels
            assert changes == (layer != "layer1" and i == 0), f"{layer}.{i}"
            if not changes:
                assert isinstance(block.shortcut, nn.Identity)
            elif shortcut == "A":
                assert isinstance(block.shortcut, ZeroPadShortcut) and not list(block.shortcut.parameters())
            else:
                conv, bn = block.shortcut
                assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
                    block.conv1.in_channels,
                    block.conv2.out_channels,
                    (1, 1),
                    (2, 2),
                )
                assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
            x = torch.zeros(2, block.conv1.in_channels, 16, 16)
            assert block.eval()(x).shape == (2, block.conv2.out_channels, *((8, 8) if changes else (16, 16)))
    # option B adds a 1x1 conv + BN at the two stage transitions (16 -> 32, 32 -> 64): 269,722 + 2,752 = 272,474
    extra = 0 if shortcut == "A" else sum(c_in * c_out + 2 * c_out for c_in, c_out in ((16, 32), (32, 64)))
    assert sum(p.numel() for p in model.parameters()) == 269_722 + extra == {"A": 269_722, "B": 272_474}[shortcut]
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        build_model("resnet20", shortcut="C")


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet7'.*resnet20"):
        build_model("resnet7")


def test_imagenet_weights_load_from_local_cache(tmp_path, monkeypatch):
    """The real torchvision loading path, fed from $TORCH_HOME instead of the internet."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    source = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model("resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert model.fc.out_features == 10 and model.conv1.kernel_size == (3, 3)
    kept = build_model("resnet18", weights="IMAGENET1K_V1", stem="imagenet")
    assert torch.equal(kept.conv1.weight, source.conv1.weight)  # only the final linear layer is new


def test_imagenet_weights_offline_error_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"could not load ImageNet weights resnet50/IMAGENET1K_V2.*internet.*hub/checkpoints"):
        build_model("resnet50", weights="IMAGENET1K_V2")


def test_summary_counts_params_nonzero_and_macs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    rows = {r.name: r for r in model_summary(model)}
    assert rows["0"].params == 3 * 8 * 9 + 8 and rows["0"].macs == 8 * 32 * 32 * 3 * 9
    assert rows["4"].macs == 8 * 32 * 32 * 10 and rows["1"].macs == 0
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    rows = {r.name: r for r in model_summary(model)}
    assert rows["0"].params == 224 and rows["0"].nonzero == 108 + int((model[0].bias != 0).sum())
    totals = summary_totals(model_summary(build_model("resnet20")))
    assert totals["params"] == 269_722 and 40e6 < totals["macs"] < 42e6  # ResNet-20: about 41M MACs
