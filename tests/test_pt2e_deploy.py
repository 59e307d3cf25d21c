"""The deployable PT2E INT8 program: ``lit-kd ptq --export-dir`` (PT2E is the default flow) writes
``pytorch_int8.pt2``, which ``load_model``, ``lit-kd classify`` and ``lit-kd bench --int8`` read back; a tampered
archive is refused with one line. A resnet8 trained on the fixture data, 60 test images."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest

from lit_kd.artifacts import ModelFileError, load_model
from lit_kd.data import CIFAR10DataModule
from lit_kd.evaluation import fraction_equal, labels, predictions
from lit_kd.quant import pt2e
from lit_kd.speed import PT2E_RUNTIME


@pytest.fixture(scope="module")
def exported(trained_ckpt, tiny_zip, tmp_path_factory) -> tuple[dict, Path]:
    """``lit-kd ptq`` (its main) with the default PyTorch flow and ``--export-dir``: (the JSON, the program file)."""
    from lit_kd.commands.ptq import main

    root = tmp_path_factory.mktemp("pt2e_deploy")
    main(
        [
            *("--ckpt", str(trained_ckpt), "--data", str(tiny_zip), "--bits", "8", "--first-last-8bit", "no"),
            *("--calib-batches", "2", "--batch-size", "32", "--threads", "2"),
            *("--export-dir", str(root / "models"), "--out", str(root / "ptq.json")),
        ]
    )
    return json.loads((root / "ptq.json").read_text()), root / "models" / "pytorch_int8.pt2"


def tiny_test(tiny_zip: Path) -> list:
    return list(CIFAR10DataModule(str(tiny_zip)).normalized_batches("test", 250))


def test_ptq_writes_a_pt2_program_that_predicts_as_its_row(exported, tiny_zip):
    result, program = exported
    row = next(r for r in result["rows"] if r["runtime"] == "pytorch")
    assert row["method"] == "pt2e x86 histogram"  # PT2E is the default flow
    entry = next(d for d in result["deployables"] if d["file"] == str(program))
    assert program.is_file() and entry["kind"] == "pt2e" and entry["from_row"]["method"] == "pt2e x86 histogram"
    assert entry["agree_row"] == 1.0 and entry["acc"] == row["acc"]
    assert not (program.parent / "pytorch_int8.pt").exists()  # no TorchScript file from the PT2E flow

    # read back as a user would: checked, loaded, compiled; it scores the row's accuracy and agrees with FP32 as the row did
    network, kind = load_model(program)
    assert kind == "pt2e" and isinstance(network, pt2e.CompiledInt8)
    test = tiny_test(tiny_zip)
    fp32 = predictions(load_model(result["checkpoint"], kinds=("float",))[0], test)
    pred = predictions(network, test)
    assert fraction_equal(pred, labels(test)) == row["acc"] and fraction_equal(pred, fp32) == row["agree_fp32"]
    assert row["agree_fp32"] >= 55 / 60  # INT8 of a 3-epoch resnet8 (measured 59 of 60)


def test_classify_on_the_program_gives_the_accuracy_ptq_recorded(exported, tiny_zip, tmp_path):
    result, program = exported
    row = next(r for r in result["rows"] if r["runtime"] == "pytorch")
    exe = Path(sys.executable).with_name("lit-kd")
    proc = subprocess.run(
        [str(exe), "classify", "--ckpt", str(program), "--data", str(tiny_zip)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    correct = round(row["acc"] * 60)
    assert f"{100 * row['acc']:.2f} % ({correct} of 60 test images correct)" in proc.stdout


def tampered_copy(program: Path, target: Path, name: str, data: bytes) -> Path:
    """``program`` with one more archive entry ``<root>/<name>`` holding ``data``."""
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr(f"{src.namelist()[0].split('/')[0]}/{name}", data)
    return target


def test_a_tampered_program_is_refused_with_one_line(exported, tiny_zip, tmp_path):
    from lit_kd.commands import bench, classify

    _, program = exported
    tampered = tampered_copy(program, tmp_path / "tampered.pt2", "data/constants/custom_obj_0", pickle.dumps(Fraction(1, 3)))
    with pytest.raises(ModelFileError, match=r"^'.*tampered\.pt2' has entries that are unknown or would be unpickled") as err:
        load_model(tampered)
    assert "custom_obj_0" in str(err.value) and "expected a PT2E INT8 program" in str(err.value)
    for main, argv in (
        (classify.main, ["--ckpt", str(tampered), "--data", str(tiny_zip)]),
        (bench.main, ["--int8", str(tampered), "--out", str(tmp_path / "b.json")]),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        message = str(exit_.value.code)
        assert len(message.splitlines()) == 1 and "tampered.pt2' has entries" in message and "custom_obj_0" in message
        assert message.startswith(("lit-kd classify: error: --ckpt '", "lit-kd bench: error: --int8 '"))
    assert not (tmp_path / "b.json").exists()

    # a pickled sample input in place of a tensor one is refused too
    with zipfile.ZipFile(program) as src:
        sample = next(n for n in src.namelist() if "/data/sample_inputs/" in n)
    swapped = tmp_path / "swapped.pt2"
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(swapped, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item) if item.filename != sample else pickle.dumps(Fraction(1, 3)))
    with pytest.raises(ModelFileError, match="sample_inputs"):
        load_model(swapped)
    (tmp_path / "empty.pt2").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"'.*empty\.pt2' is not a torch\.export archive \(\.pt2\); expected a PT2E INT8 program"):
        load_model(tmp_path / "empty.pt2")


def test_bench_times_the_program_in_pytorch(exported, tmp_path):
    from lit_kd.commands.bench import main

    _, program = exported
    out = tmp_path / "bench.json"
    main(
        [
            "--int8",
            str(program),
            "--engines",
            "onnxruntime",
            "--warmup",
            "1",
            "--iterations-b1",
            "3",
            "--iterations-b32",
            "2",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    rows = [(r["model"], r["runtime"], r["batch"], r["iterations"]) for r in result["rows"]]
    assert rows == [("dense int8 file", PT2E_RUNTIME, 1, 3), ("dense int8 file", PT2E_RUNTIME, 32, 2)]  # PyTorch only
    assert all(r["images_per_s"] > 0 for r in result["rows"]) and result["deepsparse_benchmark_commands"] == []
