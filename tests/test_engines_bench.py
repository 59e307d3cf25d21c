"""benchmarks/engines.py end to end: every engine setting built from the shipped ResNet-20 teacher (a real model, so
INT8 accuracy drops mean something) on conftest's real CIFAR-10 subset, accuracy beside speed, timed round-robin;
and the round-robin timer and speed helpers it is made of."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import engines
from lit_kd import speed
from lit_kd.compat.extras import installed
from lit_kd.onnx_export import export_onnx_model
from lit_kd.round_robin import round_robin, spread_rows
from tests.conftest import REPO

TEACHER = REPO / "weights" / "resnet20_teacher.pt"

DENSE = {
    "pytorch fp32 eager": "fp32",
    "pytorch int8 fx (x86)": "int8",
    "pytorch int8 pt2e (inductor)": "int8",
    "onnxruntime fp32": "fp32",
    "onnxruntime int8 (ours w8a8 qdq)": "int8",
}
OPENVINO = {
    "openvino fp32": "fp32",
    engines.NNCF: "int8",
    "openvino int8 (ours w8a8 qdq)": "int8",
    engines.THROUGHPUT: "int8",
}
DEEPSPARSE = {"deepsparse fp32": "fp32", engines.SPARSE: "int8 sparse"}


def test_engines_json(real_subset, tmp_path):
    """All settings on 400 real test images (INT8 calibrated on 128 training images), 2 rounds of few calls; the JSON's
    rows, accuracies, fastest settings and ratios are checked against each other (no speed is asserted: the cores are
    shared)."""
    from lit_kd.artifacts import load_model

    sparse = export_onnx_model(load_model(TEACHER, kinds=("float",))[0], tmp_path / "dense.onnx")  # stands in for a pruned file
    out = tmp_path / "engines.json"
    argv = ["--ckpt", str(TEACHER), "--data", str(real_subset), "--sparse", str(sparse), "--threads", "1", "--rounds", "2"]
    argv += ["--warmup", "1", "--iterations-b1", "3", "--iterations-b32", "2", "--calib-images", "128", "--out", str(out)]
    engines.main(argv)
    result = json.loads(out.read_text())
    expected = DENSE | (OPENVINO if installed("openvino") and installed("nncf") else {}) | (DEEPSPARSE if installed("deepsparse") else {})
    assert {(r["setting"], r["precision"]) for r in result["rows"]} == set(expected.items())
    assert sorted((r["setting"], r["batch"]) for r in result["rows"]) == sorted((s, b) for s in expected for b in (1, 32))
    assert result["engines_not_installed"] == [e for e in ("openvino", "deepsparse") if not any(e in s for s in expected)]
    assert result["test_images"] == 400 and result["calib_images"] == 128 and result["machine"]["torch_threads"] == 1
    for r in result["rows"]:
        assert r["rounds"] == 2 and len(r["latency_ms_per_round"]) == 2 and r["iterations"] == {1: 3, 32: 2}[r["batch"]]
        assert r["latency_ms_min"] <= r["latency_ms_median"] <= r["latency_ms_max"]
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["latency_ms_median"])
        assert 0 <= r["accuracy"] <= 1
    acc = {r["setting"]: r["accuracy"] for r in result["rows"]}
    fp32 = acc["pytorch fp32 eager"]
    assert fp32 >= 0.85, acc  # the teacher: 91.13 % on the full test set
    assert all(abs(acc[s] - fp32) <= 2 / 400 for s, p in expected.items() if p == "fp32"), acc  # same network, other engines
    # INT8 calibrated on training images: measured within 0.6 points of FP32 on 500 test images, 3 points allowed here
    assert all(abs(acc[s] - fp32) <= 0.03 for s, p in expected.items() if p == "int8"), acc
    if engines.SPARSE in acc:  # the --sparse file is the dense network: DeepSparse classifies it as its FP32 setting
        assert acc[engines.SPARSE] == acc["deepsparse fp32"]
    if engines.THROUGHPUT in acc:
        assert acc[engines.THROUGHPUT] == acc[engines.NNCF]
    # the fastest setting per precision and batch is the row with the most images/s
    for f in result["fastest"]:
        same = [r for r in result["rows"] if (r["precision"], r["batch"]) == (f["precision"], f["batch"])]
        assert f["setting"] == max(same, key=lambda r: r["images_per_s"])["setting"]
    assert {(f["precision"], f["batch"]) for f in result["fastest"]} == {(p, b) for p in set(expected.values()) for b in (1, 32)}
    # ratios are quotients of rows of the same run
    ips = {(r["setting"], r["batch"]): r["images_per_s"] for r in result["rows"]}
    reference = engines.NNCF if engines.NNCF in expected else None
    int8_ratios = [k for k in result["ratios"] if f" vs {reference}, " in k]
    assert len(int8_ratios) == (2 * (sum(p == "int8" for p in expected.values()) - 1) if reference else 0)
    for batch in (1, 32):
        key = f"onnxruntime fp32 vs pytorch fp32 eager, batch {batch}"
        assert result["ratios"][key] == pytest.approx(ips["onnxruntime fp32", batch] / ips["pytorch fp32 eager", batch])
        if reference:
            key = f"pytorch int8 pt2e (inductor) vs {reference}, batch {batch}"
            assert result["ratios"][key] == pytest.approx(ips["pytorch int8 pt2e (inductor)", batch] / ips[reference, batch])
    m = result["machine"]
    assert set(m["isa_flags"]) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx"} and m["cores_used"] == 1
    assert len(result["load_average_before"]) == len(result["load_average_after"]) == 3
    before, after = result["load_average_before"][0], result["load_average_after"][0]
    assert result["load_warning"] == (before > m["logical_cpus"] - 1 + 0.5 or after > m["logical_cpus"] + 0.5)


def test_engines_refuses_bad_counts_in_one_line(capsys):
    with pytest.raises(SystemExit) as err:
        engines.main(["--rounds", "0"])
    assert err.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith("error: --rounds must be >= 1, got 0")


def test_round_robin_rotates_the_order_and_keeps_each_rounds_median():
    calls = []
    runs = {name: (lambda x, name=name: calls.append((name, len(x)))) for name in "abc"}
    inputs = {1: np.zeros((1, 3, 32, 32), np.float32), 32: np.zeros((32, 3, 32, 32), np.float32)}
    times = round_robin(runs, inputs, rounds=3, warmup=2, iterations={1: 4, 32: 1})
    assert calls[: 3 * 2 * 2] == [(n, b) for n in "abc" for b in (1, 32) for _ in range(2)]  # warm-up of every setting first
    timed = calls[12:]
    assert len(timed) == 3 * 3 * (4 + 1)
    firsts = [timed[i * 15][0] for i in range(3)]  # each round starts one setting later
    assert firsts == ["a", "b", "c"]
    assert {k: len(v) for k, v in times.items()} == {(n, b): 3 for n in "abc" for b in (1, 32)}
    rows = spread_rows({("a", 32): [0.002, 0.001, 0.004]}, {32: 1})
    assert rows[0]["latency_ms_median"] == pytest.approx(2) and rows[0]["images_per_s_min"] == pytest.approx(8000)
    assert rows[0]["images_per_s"] == pytest.approx(16000) and rows[0]["images_per_s_max"] == pytest.approx(32000)
    with pytest.raises(ValueError, match="rounds >= 1"):
        round_robin(runs, inputs, rounds=0, warmup=0, iterations={1: 1, 32: 1})


def test_isa_flags_fastest_and_load_check():
    assert speed.isa_flags({"avx2", "avx512f", "avx512_vnni", "amx_tile"}) == {
        "avx2": True,
        "avx512f": True,
        "avx512_vnni": True,
        "avx_vnni": False,
        "amx": True,
    }
    machine = {"isa": "avx2", "vnni": False, "amx": False}  # a record written before isa_flags
    assert speed.isa_text(machine) == "AVX2 yes, AVX-512 no, VNNI no, AMX no"
    rows = [{"model": "m", "runtime": r, "batch": 32, "images_per_s": v} for r, v in (("a", 10.0), ("b", 30.0), ("c", 20.0))]
    assert speed.fastest(rows) == [{"model": "m", "batch": 32, "runtime": "b", "images_per_s": 30.0}]
    assert speed.overloaded(0.4, 2, 2) is False and speed.overloaded(0.6, 2, 2) is True
    assert speed.overloaded(2.4, 2, 2, own=2) is False  # the benchmark's own threads in the load read after it
