"""``lit-kd export`` and ``lit-kd bench`` through the real CLI: dense, distilled and SparseML pruned + QAT checkpoints
to ONNX, run again here in real ONNX Runtime and DeepSparse sessions; clear errors; the export fix is needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lit_kd.cli import main
from lit_kd.data import CIFAR10DataModule
from lit_kd.modules import load_network
from tests.helpers import run_cli, write_config
from tests.test_sparseml_recipe import QAT_RECIPE, recipe_config

pytestmark = pytest.mark.sparse  # SparseML recipes, QAT-to-integer export and DeepSparse throughout


@pytest.fixture(scope="module")
def ckpts(tiny_zip, tmp_path_factory) -> dict[str, Path]:
    """A dense resnet8 (1 epoch), the SparseML GMP + QAT run of test_sparseml_recipe (4 epochs), a distilled student."""
    from lit_kd.modules import DistillationModule

    root, cwd = tmp_path_factory.mktemp("export"), os.getcwd()
    deterministic = torch.are_deterministic_algorithms_enabled()
    os.chdir(root)
    try:
        dense = run_cli("fit", "--config", write_config(root / "dense.yaml", tiny_zip, model="resnet8", epochs=1))
        sparse = run_cli("fit", "--config", recipe_config(root / "sparse.yaml", tiny_zip))
        distiller = DistillationModule(
            student="resnet8",
            teacher=load_network(dense.trainer.checkpoint_callback.last_model_path),
            losses=["ce", {"name": "regressor", "kernel_size": 1}],
            num_example_images=0,
            feature_pairs=[{"student": "layer1", "teacher": "layer1"}],
        )
        trainer = L.Trainer(
            max_steps=2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(distiller, CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=32))
        trainer.save_checkpoint(root / "distilled.ckpt")
    finally:
        os.chdir(cwd)
        torch.use_deterministic_algorithms(deterministic)
    return {
        "dense": root / dense.trainer.checkpoint_callback.last_model_path,
        "root": root,
        "sparse": root / sparse.trainer.checkpoint_callback.last_model_path,
        "distilled": root / "distilled.ckpt",
    }


def export(ckpt: Path, out: Path, data: Path, *extra: str) -> dict:
    main(["export", "--ckpt", str(ckpt), "--out", str(out), "--data", str(data), "--batch-size", "32", "--cores", "1", *extra])
    return json.loads(out.with_suffix(".validation.json").read_text())


@pytest.fixture(scope="module")
def exported(ckpts, tiny_zip) -> dict[str, tuple[Path, dict]]:
    out = ckpts["root"] / "onnx"
    return {name: (out / f"{name}.onnx", export(ckpts[name], out / f"{name}.onnx", tiny_zip)) for name in ("dense", "sparse")}


def read_test_set(data: Path) -> tuple[np.ndarray, np.ndarray]:
    batches = list(CIFAR10DataModule(str(data)).normalized_batches("test", 64))
    return torch.cat([x for x, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy()


def runtimes_top1(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Top-1 of ONNX Runtime (whole set) and a DeepSparse engine compiled for the whole set as one batch."""
    from deepsparse import Engine

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    engine = Engine(str(path), batch_size=len(x), num_cores=1)
    return {"onnxruntime": session.run(["logits"], {"input": x})[0].argmax(1), "deepsparse": engine([x])[0].argmax(1)}


def test_dense_export_agrees_with_pytorch_in_both_runtimes(exported, ckpts, tiny_zip):
    path, report = exported["dense"]
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert report["opset"] == 13 == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert report["precision"] == "fp32" and not report["integer_ops"]

    x, labels = read_test_set(tiny_zip)
    with torch.no_grad():
        reference = load_network(ckpts["dense"])(torch.from_numpy(x)).argmax(1).numpy()
    for runtime, top1 in runtimes_top1(path, x).items():
        assert (top1 == reference).mean() >= 0.995, runtime
        assert report["validation"][runtime]["agreement"] >= 0.995
        assert report["validation"][runtime]["acc"] == pytest.approx((top1 == labels).mean())
    assert report["validation"]["images"] == len(labels) == 60
    odd = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x[:7]})[0]
    assert odd.shape == (7, 10)  # any batch size


def test_sparse_qat_export_has_integer_ops_and_runs_in_both_runtimes(exported, ckpts, tiny_zip):
    path, report = exported["sparse"]
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops, ops  # sparseml's integer format for DeepSparse
    assert report["precision"] == "int8" and report["weight_sparsity"] == pytest.approx(0.8, abs=0.01)
    # the pruned zeros survive in the 8-bit conv weights (stored as uint8 codes equal to the weight zero point, 128)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "ConvInteger"]
    assert len(convs) == 7 and all(init[n.input[1]].dtype == np.uint8 for n in convs)
    assert all(abs((init[n.input[1]] == init[n.input[3]]).mean() - 0.8) < 0.01 for n in convs)

    x, _ = read_test_set(tiny_zip)
    top1 = runtimes_top1(path, x)
    assert (top1["onnxruntime"] == top1["deepsparse"]).mean() >= 0.95  # the same integer graph in two runtimes
    for runtime in ("onnxruntime", "deepsparse"):
        assert 0.9 <= report["validation"][runtime]["agreement"] <= 1.0  # versus the fake-quantized PyTorch model


def test_the_runs_config_can_name_architecture_and_recipe(exported, ckpts, tiny_zip):
    config = ckpts["sparse"].parents[1] / "config.yaml"  # recipe and recipe_args come from the config's callback here
    path = ckpts["root"] / "from_config.onnx"
    report = export(ckpts["sparse"], path, tiny_zip, "--config", str(config))
    x, _ = read_test_set(tiny_zip)
    ours, theirs = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0] for p in (path, exported["sparse"][0])
    )
    assert report["precision"] == "int8" and np.array_equal(ours, theirs)


def test_distilled_checkpoint_exports_its_student(ckpts, tiny_zip):
    state = torch.load(ckpts["distilled"], weights_only=False)["state_dict"]
    assert any(not k.startswith("model.") for k in state)  # the trained regressor is in the checkpoint ...
    report = export(ckpts["distilled"], ckpts["root"] / "distilled.onnx", tiny_zip)
    student_params = sum(p.numel() for p in load_network(ckpts["distilled"]).parameters())
    onnx_params = sum(int(np.prod(t.dims)) for t in onnx.load(str(ckpts["root"] / "distilled.onnx")).graph.initializer)
    assert onnx_params <= student_params + 1000  # ... but only the student is exported (plus a few shape constants)
    assert min(report["validation"][rt]["agreement"] for rt in ("onnxruntime", "deepsparse")) >= 0.995


def test_errors_are_clear(ckpts, tiny_zip, tmp_path, capsys, monkeypatch):
    def fails(*args, status: int = 1) -> str:
        """The error that ``lit-kd export`` reports: a usage error (exit status 2, on stderr) or a failure (exit status
        1: the message is the SystemExit's, printed by the interpreter); never an ONNX file."""
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--out", str(tmp_path / "m.onnx"), "--data", str(tiny_zip), *map(str, args)])
        assert not (tmp_path / "m.onnx").exists()
        if status == 2:
            assert exit_info.value.code == 2
            return capsys.readouterr().err
        assert isinstance(exit_info.value.code, str) and exit_info.value.code.startswith("lit-kd export: error: ")
        return exit_info.value.code

    assert "checkpoint '" + str(tmp_path / "missing.ckpt") + "' does not exist" in fails("--ckpt", tmp_path / "missing.ckpt", status=2)
    wrong = write_config(tmp_path / "resnet20.yaml", tiny_zip, model="resnet20")
    assert "does not fit CifarResNet" in fails("--ckpt", ckpts["dense"], "--config", wrong)
    checkpoint = torch.load(ckpts["dense"], weights_only=False)
    checkpoint["hyper_parameters"]["model"] = "resnet9"
    torch.save(checkpoint, tmp_path / "unknown.ckpt")
    assert "unknown model 'resnet9'" in fails("--ckpt", tmp_path / "unknown.ckpt")
    checkpoint["hyper_parameters"]["model"] = "resnet8"
    checkpoint["state_dict"]["model.activation_post_process_0.scale"] = torch.ones(1)  # as a torch.ao FX QAT run leaves it
    torch.save(checkpoint, tmp_path / "fx_qat.ckpt")
    assert "QuantizationAwareTraining (torch.ao FX) checkpoint cannot be exported" in fails("--ckpt", tmp_path / "fx_qat.ckpt")
    monkeypatch.delenv("LIT_KD_CIFAR10", raising=False)
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(ckpts["dense"]), "--out", str(tmp_path / "m.onnx")])
    assert "give --data" in capsys.readouterr().err


def test_fp32_disagreement_fails_the_command(ckpts, tiny_zip, tmp_path, monkeypatch):
    import lit_kd.onnx_export

    monkeypatch.setattr(lit_kd.onnx_export, "MIN_FP32_AGREEMENT", 1.01)  # no export can pass: the failure path runs
    with pytest.raises(SystemExit, match=r"FP32 export disagrees with PyTorch: top-1 agreement onnxruntime 100.00 %"):
        export(ckpts["dense"], tmp_path / "m.onnx", tiny_zip)
    assert json.loads((tmp_path / "m.validation.json").read_text())["validation"]["onnxruntime"]["agreement"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["m.validation.json"]  # the report, and neither --out nor a temp file


def test_sparseml_qat_export_needs_the_export_kwargs(tmp_path):
    """torch 2.14's default dynamo exporter fails on sparseml's QAT export (here: it needs onnxscript, which the pinned
    stack lacks); ``EXPORT_KWARGS`` (the TorchScript exporter) makes the same call work."""
    from sparseml.pytorch.utils import export_onnx

    from lit_kd.compat.sparseml import EXPORT_KWARGS
    from lit_kd.models import build_model
    from lit_kd.sparse.recipe import build_manager, quiet_loggers

    network = build_model("resnet8")
    build_manager(QAT_RECIPE).apply_structure(network, epoch=0.0, loggers=quiet_loggers())
    network.train()(torch.randn(8, 3, 32, 32))
    network.eval()
    with pytest.raises(Exception, match="onnxscript"):
        export_onnx(network, torch.zeros(1, 3, 32, 32), str(tmp_path / "bare.onnx"), opset=13, convert_qat=True)
    export_onnx(network, torch.zeros(1, 3, 32, 32), str(tmp_path / "fixed.onnx"), opset=13, convert_qat=True, **EXPORT_KWARGS)
    assert "ConvInteger" in {node.op_type for node in onnx.load(str(tmp_path / "fixed.onnx")).graph.node}


def test_bench_cli_on_the_exports(exported, ckpts, tmp_path):
    out = tmp_path / "bench.json"
    main(
        [
            "bench",
            "--baseline",
            str(exported["dense"][0]),
            "--sparse",
            str(exported["sparse"][0]),
            "--ckpt",
            str(ckpts["dense"]),
            "--cores",
            "1",
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
    settings = {
        ("dense fp32", "deepsparse"),
        ("dense fp32", "onnxruntime"),
        ("pruned-quantized", "deepsparse"),
        ("pruned-quantized", "onnxruntime"),
        *((m, rt) for m in ("dense fp32", "pruned-quantized") for rt in ("openvino", "openvino throughput")),  # the openvino extra
        ("dense fp32", "pytorch fp32 eager"),
        ("dense int8", "pytorch int8 (fx, x86)"),
    }
    assert {(r["model"], r["runtime"], r["batch"]) for r in result["rows"]} == {(*s, b) for s in settings for b in (1, 32)}
    for row in result["rows"]:
        assert row["latency_ms_p90"] >= row["latency_ms_median"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["latency_ms_median"])
    ips = {(r["model"], r["runtime"], r["batch"]): r["images_per_s"] for r in result["rows"]}
    key = "deepsparse pruned-quantized vs onnxruntime dense fp32, batch 32"
    assert result["ratios"][key] == pytest.approx(ips["pruned-quantized", "deepsparse", 32] / ips["dense fp32", "onnxruntime", 32])
    assert result["machine"]["cores_used"] == 1 and result["machine"]["cpu"] and result["machine"]["isa"]
    assert (
        f"deepsparse.benchmark {exported['sparse'][0]} --batch_size 32 --num_cores 1 --scenario sync"
        in result["deepsparse_benchmark_commands"]
    )


def test_bench_refuses_a_qat_checkpoint_for_the_pytorch_rows(exported, ckpts, capsys):
    with pytest.raises(SystemExit, match=r"is a SparseML pruning \+ QAT checkpoint: .* Give the dense checkpoint"):
        main(["bench", "--baseline", str(exported["dense"][0]), "--ckpt", str(ckpts["sparse"])])
