"""``lit-kd ptq`` through the installed console script on a checkpoint trained on the fixture data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_kd.data import CIFAR10DataModule
from lit_kd.evaluation import accuracy
from lit_kd.modules import load_network


def lit_kd(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lit-kd")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ptq_table_and_json(trained_ckpt, tiny_zip, tmp_path):
    out = tmp_path / "ptq.json"
    proc = lit_kd(
        "ptq",
        "--ckpt",
        trained_ckpt,
        "--data",
        tiny_zip,
        "--bits",
        "16",
        "8",
        "2",
        "--observer",
        "minmax",
        "mse",
        "--calib-batches",
        "2",
        "--batch-size",
        "32",
        "--first-last-8bit",
        "both",
        "--pytorch-fp16",
        "--torch-flow",
        "fx",  # no compile step here; PT2E, the default, is tests/test_pt2e_deploy.py's
        "--out",
        out,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Post-training quantization" in proc.stdout and "drop vs FP32" in proc.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    # fp32 + pytorch fp16 + pytorch int8 + 3 widths x 2 observers x 2 first/last choices + W8A8 in integers x 2 observers
    assert len(rows) == 3 + 12 + 2
    assert {r["runtime"] for r in rows} == {"fp32", "pytorch", "ours", "ours int"}
    assert [r["method"] for r in rows if r["runtime"] == "pytorch"] == ["fp16", "fx x86 histogram"]  # fp16 only on --pytorch-fp16
    assert all(r["agree_simulation"] >= 0.99 for r in rows if r["runtime"] == "ours int")
    expected_fp32 = accuracy(load_network(trained_ckpt), CIFAR10DataModule(str(tiny_zip)).normalized_batches("test", 1000))
    assert result["fp32_acc"] == pytest.approx(expected_fp32) and result["test_images"] == 60
    assert result["fp32_acc"] > 0.3  # the fixture is learnable: quantization effects are visible
    w16 = [r for r in rows if r["runtime"] == "ours" and r["weight_bits"] == 16]
    assert all(abs(r["acc"] - result["fp32_acc"]) <= 1 / 60 and r["agree_fp32"] >= 59 / 60 for r in w16)
    w2 = [r["acc"] for r in rows if r["runtime"] == "ours" and r["weight_bits"] == 2]
    assert min(w2) < result["fp32_acc"]


def test_ptq_rejects_bad_bit_width_and_missing_checkpoint(trained_ckpt, tmp_path):
    proc = lit_kd("ptq", "--ckpt", trained_ckpt, "--bits", "8", "1", cwd=tmp_path)
    assert proc.returncode != 0 and "integer from 2 to 16, got 1" in proc.stderr
    proc = lit_kd("ptq", "--ckpt", tmp_path / "nope.ckpt", cwd=tmp_path)
    assert proc.returncode != 0 and "nope.ckpt' does not exist" in proc.stderr


def test_weight_observer_option_quantizes_weights_with_its_own_observer(trained_ckpt, tiny_zip, tmp_path):
    from lit_kd.commands.ptq import main
    from lit_kd.quant import quantize

    result = main(
        [
            "--ckpt",
            str(trained_ckpt),
            "--data",
            str(tiny_zip),
            "--bits",
            "3",
            "--observer",
            "minmax",
            "--weight-observer",
            "mse",
            "--calib-batches",
            "2",
            "--batch-size",
            "32",
            "--first-last-8bit",
            "no",
            "--no-pytorch",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    row = next(r for r in result["rows"] if r["runtime"] == "ours")
    assert row["method"] == "minmax (weights mse)"
    data = CIFAR10DataModule(str(tiny_zip))
    calib = list(data.normalized_batches("train", 32, 64, shuffle=True))
    test = list(data.normalized_batches("test", 1000))
    model = load_network(trained_ckpt)
    mse = quantize(model, calib, 3, 3, "minmax", weight_observer="mse")
    assert row["acc"] == pytest.approx(accuracy(mse, test))
    # and the weights did get a different grid than the plain minmax row would give them
    plain = quantize(model, calib, 3, 3, "minmax")
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), mse.state_dict().values()) if a.dtype.is_floating_point)
