"""PT2E INT8 (torch.export + torchao's X86InductorQuantizer): PTQ on real CIFAR-10, the saved program, QAT through the
real CLI with resume, and the errors of bad options. Measured values (torch 2.14.1, torchao 0.18.0, an Intel Xeon with
AVX-512 VNNI, 2 threads) are quoted next to each bound."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.artifacts import load_model
from lit_kd.callbacks import QuantizationAwareTraining
from lit_kd.data import CIFAR10DataModule
from lit_kd.evaluation import fraction_equal, predictions, top1
from lit_kd.models import build_model
from lit_kd.models.feature_taps import FeatureTaps
from lit_kd.quant import pt2e
from lit_kd.quant.torch_ptq import quantize_int8
from tests.helpers import load_state, run_cli, write_config

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "weights" / "resnet20_teacher.pt"


@pytest.fixture(scope="module")
def teacher_int8(real_cifar10):
    """(FP32 teacher, its PT2E INT8 program calibrated on 256 training images, 300 test batches of real CIFAR-10)."""
    torch.set_num_threads(2)
    model = load_model(TEACHER, kinds=("float",))[0].eval()
    data = CIFAR10DataModule(str(real_cifar10))
    calib = [x for x, _ in data.normalized_batches("train", 128, 256, shuffle=True)]
    test = list(data.normalized_batches("test", 100, 300))
    return model, pt2e.quantize_pt2e_ptq(model, calib), test


def test_pt2e_int8_agrees_with_fp32_on_real_cifar10(teacher_int8):
    """The converted program (quantize/dequantize reference, uncompiled) predicts as the FP32 teacher on 300 real test
    images (measured 0.993; a broken calibration: 0.05, see the next test), and the compiled program (INT8 kernels)
    predicts as the reference on a batch of 32 (measured 32 of 32, and as FP32 on all 32)."""
    model, program, test = teacher_int8
    with torch.no_grad():
        fp32, int8 = predictions(model, test), predictions(program, test)
    assert fraction_equal(int8, fp32) >= 0.97

    x = test[0][0][:32]
    compiled = pt2e.compile_int8(program)
    with torch.no_grad():
        assert fraction_equal(top1(compiled(x)), top1(program(x))) >= 30 / 32


def test_uncalibrated_pt2e_int8_is_far_from_fp32(teacher_int8):
    """What the agreement bound above guards against: observers calibrated on one blank image give a broken program
    (measured agreement 0.05 on these 100 images)."""
    model, _, test = teacher_int8
    broken = pt2e.quantize_pt2e_ptq(model, [torch.zeros(2, 3, 32, 32)])
    with torch.no_grad():
        assert fraction_equal(predictions(broken, test[:1]), predictions(model, test[:1])) < 0.5


def test_saved_program_round_trips_and_unsafe_archives_are_refused(teacher_int8, tmp_path):
    _, program, test = teacher_int8
    path = pt2e.save_program(program, tmp_path / "int8_model.pt2")
    assert pt2e.unsafe_entries(path) == []
    loaded = pt2e.load_program(path).eval()  # mode calls are allowed (torch's exported modules refuse them)
    x = test[0][0][:7]  # any batch size: the batch dimension stays dynamic
    with torch.no_grad():
        assert torch.equal(loaded(x), program(x))

    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        root = src.namelist()[0].split("/")[0]
        dst.writestr(f"{root}/data/constants/custom_obj_0", b"not a tensor")
    with pytest.raises(ValueError, match=r"custom_obj_0\); expected a PT2E INT8 program of plain tensors"):
        pt2e.load_program(tampered)
    (tmp_path / "plain.pt2").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a torch\.export archive"):
        pt2e.load_program(tmp_path / "plain.pt2")


def qat_config(path: Path, data_dir: Path, epochs: int) -> Path:
    write_config(path, data_dir, model="resnet8", epochs=epochs)
    config = yaml.safe_load(path.read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lit_kd.callbacks.QuantizationAwareTraining"}]  # PT2E: the default flow
    config["trainer"]["limit_train_batches"] = 3
    path.write_text(yaml.safe_dump(config))
    return path


def test_pt2e_qat_trains_resumes_and_converts(in_tmp, tiny_zip):
    """Two QAT epochs of 3 steps through the CLI; the same run interrupted after epoch 1 and resumed from last.ckpt
    ends with the same weights and ranges; the saved INT8 program loads and scores what ``lit-kd test`` measures on
    the best checkpoint."""
    config = qat_config(in_tmp / "qat.yaml", tiny_zip, epochs=2)
    full = run_cli("fit", "--config", config)
    ckpt_dir = Path(full.trainer.checkpoint_callback.dirpath)
    state = load_state(ckpt_dir / "last.ckpt")
    assert any(k.startswith("model.program.activation_post_process_") and k.endswith(".scale") for k in state)

    short = run_cli("fit", "--config", config, "--trainer.max_epochs", "1")
    resumed = run_cli("fit", "--config", config, "--ckpt_path", Path(short.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    resumed_state = load_state(Path(resumed.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    assert resumed_state.keys() == state.keys()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # counts validation calls too (the resumed run's sanity check)
            continue
        assert torch.allclose(resumed_state[key].float(), value.float(), atol=1e-6), key

    # the saved INT8 program (the conversion of best.ckpt at fit end) scores what `lit-kd test` measures converting
    # best.ckpt again
    int8 = pt2e.load_program(ckpt_dir / pt2e.INT8_PROGRAM_FILE)
    best = Path(full.trainer.checkpoint_callback.best_model_path)
    batches = list(CIFAR10DataModule(str(tiny_zip)).normalized_batches("test", 64))
    truth = torch.cat([y for _, y in batches])
    with torch.no_grad():
        saved_acc = fraction_equal(predictions(int8, batches), truth)
    tested = run_cli("test", "--config", config, "--ckpt_path", best, "--trainer.logger", "false")
    assert tested.trainer.callback_metrics["test/acc"].item() == pytest.approx(saved_acc)
    # and load_model (lit-kd classify's loader) reads it as a compiled PT2E program that predicts as the reference
    compiled, kind = load_model(ckpt_dir / pt2e.INT8_PROGRAM_FILE)
    assert kind == "pt2e" and isinstance(compiled, pt2e.CompiledInt8)
    assert fraction_equal(predictions(compiled, batches), predictions(int8, batches)) >= 59 / 60


def test_bad_flow_options_give_one_line_errors():
    model = build_model("resnet8").eval()
    for make in (
        lambda: QuantizationAwareTraining(flow="pt3e"),
        lambda: quantize_int8(model, [torch.randn(2, 3, 32, 32)], flow="pt3e"),
    ):
        with pytest.raises(ValueError, match=r"^unknown quantization flow 'pt3e'; expected one of: pt2e, fx$"):
            make()
    with pytest.raises(ValueError, match=r"^freeze_bn_epoch is supported by flow 'fx' only"):
        QuantizationAwareTraining(flow="pt2e", freeze_bn_epoch=1)
    with pytest.raises(ValueError, match=r"backend 'qnnpack' is FX-only$"):
        QuantizationAwareTraining(flow="pt2e", backend="qnnpack")
    # a distillation loss on features cannot hook an exported graph: the error says to use the FX flow
    with pytest.raises(ValueError, match=r"^cannot tap 'layer3': a PT2E QAT program calls no submodules.*\(flow='fx'\)"):
        FeatureTaps(pt2e.prepare_qat(model, (1, 3, 32, 32)), ["layer3"])
