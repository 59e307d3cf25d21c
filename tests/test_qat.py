"""QuantizationAwareTraining through the real CLI: trains, resumes mid-QAT, converts to INT8, tests from checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.callbacks import load_int8_model
from lit_kd.quant.torch_qat import INT8_FILE, convert_int8, prepare_qat
from lit_kd.data import CIFAR10DataModule
from lit_kd.models import build_model
from lit_kd.checkpoints import load_weights
from lit_kd.commands.ptq import accuracy
from tests.helpers import load_state, run_cli, scalars, write_config

QAT_CALLBACK = {"class_path": "lit_kd.callbacks.QuantizationAwareTraining", "init_args": {"freeze_bn_epoch": 2}}


def qat_config(path: Path, data_dir: Path, epochs: int, **init_args) -> Path:
    write_config(path, data_dir, model="resnet8", epochs=epochs)
    config = yaml.safe_load(path.read_text())
    callback = {"class_path": QAT_CALLBACK["class_path"], "init_args": QAT_CALLBACK["init_args"] | init_args}
    config["trainer"]["callbacks"] = [callback]
    path.write_text(yaml.safe_dump(config))
    return path


def int8_accuracy(model, batches) -> float:
    torch.use_deterministic_algorithms(False)
    return accuracy(model, batches)


def test_qat_trains_resumes_converts_and_tests_int8(in_tmp, tiny_zip):
    config = qat_config(in_tmp / "qat.yaml", tiny_zip, epochs=3)
    full = run_cli("fit", "--config", config)
    run_dir = Path(full.trainer.logger.log_dir)
    losses = scalars(run_dir, "train/loss")
    assert losses[-1] < losses[0]
    state = load_state(run_dir / "checkpoints" / "last.ckpt")
    assert any("activation_post_process" in k and k.endswith(".scale") for k in state)  # fake-quant state is checkpointed
    assert any(k.endswith("conv1.bn.running_mean") for k in state)  # conv+bn fused for QAT

    # interrupted after epoch 1, resumed from last.ckpt: same weights and QAT ranges as the uninterrupted run
    short = run_cli("fit", "--config", config, "--trainer.max_epochs", "1")
    short_last = Path(short.trainer.logger.log_dir) / "checkpoints" / "last.ckpt"
    resumed = run_cli("fit", "--config", config, "--ckpt_path", short_last)
    resumed_state = load_state(Path(resumed.trainer.logger.log_dir) / "checkpoints" / "last.ckpt")
    assert resumed_state.keys() == state.keys()
    for key, value in state.items():
        assert torch.allclose(resumed_state[key].float(), value.float(), atol=1e-6), key

    # the converted INT8 model is saved next to the checkpoints and loads without Lightning
    int8 = load_int8_model(run_dir / "checkpoints" / INT8_FILE)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())
    data = CIFAR10DataModule(str(tiny_zip))
    int8_acc = int8_accuracy(int8, data.normalized_batches("test", 64))
    assert int8_acc > 0.2  # far above chance (0.1) on the learnable fixture

    # lit-kd test with the QAT config evaluates the checkpoint converted to INT8
    best = full.trainer.checkpoint_callback.best_model_path
    tested = run_cli("test", "--config", config, "--ckpt_path", best, "--trainer.logger", "false")
    prepared = prepare_qat(build_model("resnet8"), "x86", (1, 3, 32, 32))
    prepared.load_state_dict({k[len("model."):]: v for k, v in load_state(Path(best)).items() if k.startswith("model.")})
    expected = int8_accuracy(convert_int8(prepared), data.normalized_batches("test", 64))
    assert tested.trainer.callback_metrics["test/acc"].item() == pytest.approx(expected)


def test_qat_starts_from_the_float_checkpoint(in_tmp, tiny_zip, trained_ckpt):
    """With zero QAT epochs the saved INT8 model is the float student quantized: its accuracy stays close."""
    config = qat_config(in_tmp / "qat_init.yaml", tiny_zip, epochs=0, init_ckpt=str(trained_ckpt))
    cli = run_cli("fit", "--config", config)
    data = CIFAR10DataModule(str(tiny_zip))
    float_acc = accuracy(load_weights(build_model("resnet8"), trained_ckpt).eval(), data.normalized_batches("test", 64))
    int8 = load_int8_model(Path(cli.trainer.checkpoint_callback.dirpath) / INT8_FILE)
    assert float_acc > 0.3
    assert abs(int8_accuracy(int8, data.normalized_batches("test", 64)) - float_acc) <= 0.1


def test_qat_with_distillation_loss_and_feature_taps(in_tmp, tiny_zip, trained_ckpt):
    write_config(in_tmp / "qat_kd.yaml", tiny_zip, model="resnet8", epochs=1)
    config = yaml.safe_load((in_tmp / "qat_kd.yaml").read_text())
    init = config["model"]["init_args"]
    config["model"] = {"class_path": "lit_kd.modules.DistillationModule", "init_args": {
        "student": "resnet8", "teacher_ckpt": str(trained_ckpt), "optimizer": init["optimizer"], "num_example_images": 0,
        "losses": ["ce", "soft_ce", "feature_mse"], "feature_pairs": [{"student": "layer3", "teacher": "layer3"}],
    }}
    config["trainer"]["callbacks"] = [{"class_path": QAT_CALLBACK["class_path"], "init_args": {"init_ckpt": str(trained_ckpt)}}]
    config["trainer"]["limit_train_batches"] = 3
    (in_tmp / "qat_kd.yaml").write_text(yaml.safe_dump(config))
    cli = run_cli("fit", "--config", in_tmp / "qat_kd.yaml")
    log_dir = Path(cli.trainer.logger.log_dir)
    feature_losses = scalars(log_dir, "train/loss_feature_mse_layer3")
    assert feature_losses and all(v > 0 for v in feature_losses)  # the tap on a traced container captured features
    state = load_state(log_dir / "checkpoints" / "last.ckpt")
    assert not any(k.startswith("teacher.") for k in state)
    assert (log_dir / "checkpoints" / INT8_FILE).is_file()
