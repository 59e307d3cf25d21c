"""The core without the ``sparse`` extra: with sparseml and deepsparse made unimportable (as in an environment that
lacks them), FP32 export and the benchmark run and say "not installed"; features that need the extra fail with one
line naming it. Runs in both environments (``make test-full`` and ``make test-core``)."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest

from lit_kd.compat.extras import MissingExtra, installed, require
from lit_kd.data import CIFAR10DataModule
from lit_kd.modules import load_network

SPARSE_STACK = ("sparseml", "sparsezoo", "deepsparse")


@pytest.fixture
def without_sparse_stack(monkeypatch):
    """``import sparseml`` / ``import deepsparse`` raise ImportError and ``find_spec`` finds neither."""
    for name in [m for m in sys.modules if m.split(".")[0] in SPARSE_STACK]:
        monkeypatch.delitem(sys.modules, name)
    for name in SPARSE_STACK:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra_to_install(without_sparse_stack):
    assert not installed("deepsparse") and not installed("sparseml")
    with pytest.raises(MissingExtra, match=r"^a SparseML recipe needs sparseml: pip install 'lit-kd\[sparse\]'"):
        require("sparseml", "a SparseML recipe")
    require("numpy", "anything")  # an installed package passes


def test_sparseml_recipe_without_the_extra_is_one_line(without_sparse_stack):
    from lit_kd.sparse.recipe import build_manager

    with pytest.raises(MissingExtra) as caught:
        build_manager("modifiers: []")
    assert "\n" not in str(caught.value) and "lit-kd[sparse]" in str(caught.value)


def test_fp32_export_without_sparseml_and_deepsparse(without_sparse_stack, trained_ckpt, tiny_zip, tmp_path, capsys):
    from lit_kd.cli import main

    out = tmp_path / "dense.onnx"
    main(["export", "--ckpt", str(trained_ckpt), "--out", str(out), "--data", str(tiny_zip), "--images", "60", "--batch-size", "16"])
    validation = json.loads(out.with_suffix(".validation.json").read_text())
    assert validation["precision"] == "fp32"
    assert validation["validation"]["deepsparse"] == {"installed": False}
    assert validation["validation"]["onnxruntime"]["agreement"] >= 0.995
    assert "not installed" in capsys.readouterr().out
    # the file runs in ONNX Runtime and gives the network's logits
    network = load_network(str(trained_ckpt)).eval()
    images, _ = next(CIFAR10DataModule(str(tiny_zip)).normalized_batches("test", 8))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input": images.numpy()})[0]
    np.testing.assert_allclose(onnx_logits, network(images).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_bench_without_deepsparse_times_the_other_engines(without_sparse_stack, trained_ckpt, tiny_zip, tmp_path):
    from lit_kd.cli import main

    onnx_file = tmp_path / "dense.onnx"
    main(["export", "--ckpt", str(trained_ckpt), "--out", str(onnx_file), "--data", str(tiny_zip), "--images", "30", "--batch-size", "16"])
    out = tmp_path / "bench.json"
    main(
        [
            "bench",
            "--baseline",
            str(onnx_file),
            "--cores",
            "1",
            "--warmup",
            "1",
            "--iterations-b1",
            "2",
            "--iterations-b32",
            "1",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["engines_not_installed"] == ["deepsparse"]
    assert {r["runtime"] for r in result["rows"]} == {"onnxruntime", "openvino", "openvino throughput"}  # the openvino extra
    assert {r["batch"] for r in result["rows"]} == {1, 32}
    assert result["machine"]["isa"] and isinstance(result["machine"]["vnni"], bool)
