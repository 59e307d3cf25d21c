"""OpenVINO and NNCF beside our own PTQ (the ``openvino`` extra, installed in both make environments): the deployable
files ``lit-kd ptq --export-dir`` writes, NNCF's rows, ``lit-kd export --openvino``, ``classify`` and ``bench`` on them.

Everything runs the shipped ResNet-20 teacher on a subset of the real CIFAR-10 (conftest's ``real_subset``: 60 training
and 40 test images per class) so that ``classify --data`` sees the very test images ptq did.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TEACHER = REPO / "weights" / "resnet20_teacher.pt"
pytestmark = pytest.mark.openvino


def run_console_script(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lit-kd")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900)


def lit_kd(*args, cwd: Path) -> subprocess.CompletedProcess:
    proc = run_console_script(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ptq_run(real_subset, tmp_path_factory) -> tuple[dict, Path]:
    """``lit-kd ptq --engine ours nncf --export-dir`` on the teacher (W8A8, NNCF mixed + accuracy control)."""
    root = tmp_path_factory.mktemp("ptq")
    out = root / "ptq.json"
    lit_kd(
        "ptq",
        *("--ckpt", TEACHER, "--data", real_subset, "--bits", "8", "--first-last-8bit", "no"),
        *("--calib-batches", "4", "--batch-size", "64", "--engine", "ours", "nncf", "--nncf-preset", "mixed"),
        *("--nncf-max-drop", "1.0", "--eval-images", "200", "--export-dir", root / "models", "--out", out),
        *("--torch-flow", "fx"),  # the TorchScript file; the PT2E program (the default) is tests/test_pt2e_deploy.py's
        cwd=root,
    )
    return json.loads(out.read_text()), root / "models"


def test_ptq_writes_deployable_int8_files_that_classify_like_their_rows(ptq_run):
    result, models = ptq_run
    assert result["test_images"] == 400 and result["fp32_acc"] > 0.85  # the teacher is 91 % on the full test set
    files = {Path(d["file"]).name: d for d in result["deployables"]}
    expected = {"ours_w8a8.onnx", "ours_w8a8.xml", "pytorch_int8.pt", "nncf_mixed.xml", "nncf_mixed_accuracy_control.xml"}
    assert set(files) == expected
    assert all((models / name).is_file() for name in expected)
    assert all((models / name).with_suffix(".bin").is_file() for name in expected if name.endswith(".xml"))
    # our W8A8 as QDQ (ONNX Runtime) and as IR (OpenVINO) agrees with our simulated W8A8 on >= 99 % of the images
    assert files["ours_w8a8.onnx"]["agree_row"] >= 0.99 and files["ours_w8a8.xml"]["agree_row"] >= 0.99
    assert files["ours_w8a8.onnx"]["from_row"]["runtime"] == "ours"
    # the TorchScript program is PyTorch's INT8 model itself; the IR files are NNCF's models read back
    assert files["pytorch_int8.pt"]["agree_row"] == 1.0
    assert files["nncf_mixed.xml"]["agree_row"] >= 0.995
    assert sorted(p.name for p in models.iterdir() if ".tmp" in p.name) == []  # the uint8 ONNX behind the IR is gone


def test_our_openvino_file_runs_int8_kernels_as_nncf_files_do(ptq_run):
    """OpenVINO ran the int8-activation form of our QDQ in f32 (no INT8 speed): every convolution of the written IR,
    like NNCF's, compiles to u8/i8 kernels."""
    from lit_kd.openvino_engine import kernel_precisions

    _, models = ptq_run
    for name in ("ours_w8a8.xml", "nncf_mixed.xml"):
        counts = kernel_precisions(models / name)
        assert sum(counts.values()) == 20, (name, counts)  # ResNet-20: 19 convolutions and the classifier
        assert all(key.endswith((" u8", " i8")) for key in counts), (name, counts)


def test_nncf_rows_sit_beside_ours_within_a_point_of_fp32(ptq_run):
    result, _ = ptq_run
    rows = [r for r in result["rows"] if r["runtime"] == "openvino"]
    assert [r["method"] for r in rows] == ["nncf mixed", "nncf mixed + accuracy control (<= 1.00 pts)"]
    keys = set(next(r for r in result["rows"] if r["runtime"] == "ours"))
    assert all(set(r) == keys for r in rows)  # the same row format as ours and PyTorch's
    assert all(result["fp32_acc"] - r["acc"] <= 0.015 and r["weight_bits"] == r["act_bits"] == 8 for r in rows)
    assert result["held_out_images"] == 200 and result["engines"] == ["ours", "nncf"]


def test_classify_on_the_ir_gives_the_accuracy_ptq_recorded(ptq_run, real_subset, tmp_path):
    result, models = ptq_run
    row = next(d for d in result["deployables"] if d["file"].endswith("nncf_mixed.xml"))
    proc = lit_kd("classify", "--ckpt", models / "nncf_mixed.xml", "--data", real_subset, cwd=tmp_path)
    assert f"{100 * row['acc']:.2f} %" in proc.stdout and "of 400 test images" in proc.stdout
    qdq = next(d for d in result["deployables"] if d["file"].endswith("ours_w8a8.onnx"))
    proc = lit_kd("classify", "--ckpt", models / "ours_w8a8.onnx", "--data", real_subset, cwd=tmp_path)
    assert f"{100 * qdq['acc']:.2f} %" in proc.stdout


def test_export_writes_an_ir_that_classifies_like_pytorch_and_bench_times_it(real_subset, tmp_path, ptq_run):
    onnx_path = tmp_path / "teacher.onnx"
    lit_kd("export", "--ckpt", TEACHER, "--out", onnx_path, "--data", real_subset, "--images", "400", "--openvino", cwd=tmp_path)
    validation = json.loads(onnx_path.with_suffix(".validation.json").read_text())
    assert validation["openvino_ir"] == str(onnx_path.with_suffix(".xml"))
    assert validation["validation"]["openvino"]["agreement"] >= 0.995  # FP32 IR vs PyTorch on 400 real test images
    assert onnx_path.with_suffix(".bin").is_file()
    _, models = ptq_run
    out = tmp_path / "bench.json"
    lit_kd(
        "bench",
        *("--baseline", onnx_path, "--int8", models / "nncf_mixed.xml", "--engines", "onnxruntime", "openvino", "openvino throughput"),
        *("--warmup", "1", "--iterations-b1", "3", "--iterations-b32", "2", "--out", out),
        cwd=tmp_path,
    )
    rows = json.loads(out.read_text())["rows"]
    seen = {(r["model"], r["runtime"], r["batch"]) for r in rows}
    for runtime in ("onnxruntime", "openvino", "openvino throughput"):
        assert {("dense fp32", runtime, 1), ("dense fp32", runtime, 32)} <= seen
    # an IR runs in OpenVINO only
    assert {r["runtime"] for r in rows if r["model"] == "dense int8 file"} == {"openvino", "openvino throughput"}
    assert all(r["images_per_s"] > 0 for r in rows)


def test_bad_engine_inputs_are_one_line(tmp_path, real_subset):
    bad_ir = tmp_path / "model.xml"
    bad_ir.write_text("<net/>")
    proc = run_console_script("classify", "--ckpt", str(bad_ir), "--data", str(real_subset), cwd=tmp_path)
    assert proc.returncode == 1 and "model.bin" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_console_script("ptq", "--ckpt", str(TEACHER), "--data", str(real_subset), "--nncf-max-drop", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "--nncf-max-drop applies to NNCF's accuracy control: add --engine nncf" in proc.stderr
    proc = run_console_script("ptq", "--ckpt", str(TEACHER), "--data", str(real_subset), "--engine", "tflite", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'tflite'" in proc.stderr


def test_a_missing_openvino_extra_is_one_line_naming_it(monkeypatch):
    from lit_kd.compat import extras

    monkeypatch.setattr(extras, "installed", lambda package: package not in ("openvino", "nncf"))
    for package in ("openvino", "nncf"):
        with pytest.raises(extras.MissingExtra, match=rf"needs {package}: pip install 'lit-kd\[openvino\]'$"):
            extras.require(package, "NNCF post-training quantization")


def test_the_exported_w8a8_row_is_chosen_on_held_out_images_never_on_the_test_set():
    from lit_kd.quant.sweep import deployable_w8a8

    def row(test, held=None):
        return ({"acc": test, **({"held_out_acc": held} if held is not None else {})}, f"model {test}", None)

    # the best test accuracy (0.95) loses to the best held-out accuracy (0.91); the first of equals wins
    assert deployable_w8a8([row(0.90, 0.89), row(0.95, 0.88), row(0.91, 0.91), row(0.92, 0.91)])[1] == "model 0.91"
    assert deployable_w8a8([row(0.90), row(0.95)])[1] == "model 0.9"  # no held-out images: the first row, as listed
