"""benchmarks/sparse_speed.py end to end with tiny settings: it makes a dense and a pruned-quantized resnet8, times
them in DeepSparse, ONNX Runtime, OpenVINO and PyTorch, and writes the JSON it promises (no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from benchmarks import sparse_speed
from lit_kd import speed


@pytest.mark.sparse
def test_sparse_speed_json(tmp_path):
    torch.set_num_threads(2)  # so --cores 1 must really pin torch (conftest restores the count after)
    out = tmp_path / "s.json"
    sparse_speed.main(
        [
            "--model",
            "resnet8",
            "--sparsity",
            "0.75",
            "--cores",
            "1",
            "--warmup",
            "1",
            "--iterations-b1",
            "3",
            "--iterations-b32",
            "2",
            "--onnx-dir",
            str(tmp_path / "onnx"),
            "--out",
            str(out),
        ]
    )
    assert torch.get_num_threads() == 1
    result = json.loads(out.read_text())
    # every installed engine by default: the full environment has the sparse and openvino extras
    engines = ("deepsparse", "onnxruntime", "openvino", "openvino throughput")
    assert speed.available(speed.ENGINES) == engines
    runtimes = {(model, engine) for model in ("dense fp32", "pruned-quantized") for engine in engines} | {
        ("dense fp32", "pytorch fp32 eager"),
        ("dense int8", "pytorch int8 (fx, x86)"),
    }
    assert {(r["model"], r["runtime"], r["batch"]) for r in result["rows"]} == {(*rt, b) for rt in runtimes for b in (1, 32)}
    # medians over the requested timed calls (p90 at or above the median)
    assert all(r["iterations"] == {1: 3, 32: 2}[r["batch"]] for r in result["rows"])
    assert all(0 < r["latency_ms_median"] <= r["latency_ms_p90"] for r in result["rows"])
    assert all(r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["latency_ms_median"]) for r in result["rows"])
    ips = {(r["model"], r["runtime"], r["batch"]): r["images_per_s"] for r in result["rows"]}
    for batch in (1, 32):
        assert result["ratios"][f"deepsparse pruned-quantized vs pytorch dense int8, batch {batch}"] == pytest.approx(
            ips["pruned-quantized", "deepsparse", batch] / ips["dense int8", "pytorch int8 (fx, x86)", batch]
        )
    assert result["machine"]["cores_used"] == 1 and isinstance(result["machine"]["vnni"], bool)
    assert result["made_here"] == {"model": "resnet8", "sparsity": 0.75, "weights": "initial (speed only)"}
    # the ONNX models it says it timed are the ones it made, in --onnx-dir, and the DeepSparse commands name them
    assert set(result["onnx"]) == {"dense fp32", "pruned-quantized"}
    assert all(Path(p).parent == tmp_path / "onnx" and Path(p).is_file() for p in result["onnx"].values())
    dense = onnx.load(result["onnx"]["dense fp32"])
    assert sum(n.op_type == "Conv" for n in dense.graph.node) == 7  # resnet8: stem + 3 blocks x 2 (option A shortcuts pad)
    pruned = onnx.load(result["onnx"]["pruned-quantized"])
    init = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    convs = [n for n in pruned.graph.node if n.op_type == "ConvInteger"]
    assert convs and all(abs((init[n.input[1]] == init[n.input[3]]).mean() - 0.75) < 0.01 for n in convs)
    assert sorted(result["deepsparse_benchmark_commands"]) == sorted(
        f"deepsparse.benchmark {p} --batch_size {b} --num_cores 1 --scenario sync" for p in result["onnx"].values() for b in (1, 32)
    )


def test_sparse_speed_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sparse_speed.main(["--help"])
    assert exit_info.value.code == 0 and "--sparsity" in capsys.readouterr().out
