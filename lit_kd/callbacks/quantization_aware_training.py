"""QuantizationAwareTraining: train with fake quantization, end with a real INT8 model (x86): through PT2E
(``flow="pt2e"``, the default) or torch.ao FX (``flow="fx"``).

``flow="fx"`` stays selectable because it runs without a C++ toolchain: PT2E's INT8 program gets its INT8 kernels from
``torch.compile`` (inductor builds C++), and FX's ``freeze_bn_epoch`` has no PT2E form. The FX path:

- ``setup`` (every stage, before a checkpoint is restored and before the optimizer exists) replaces the module's
  network (``pl_module.model``) by ``prepare_qat_fx`` with torch's default QAT qconfig for the backend: conv,
  BatchNorm and ReLU fused, fake-quantize modules on weights (per-channel int8) and activations (uint8). x86/fbgemm
  activations keep torch's 7-bit ranges but are rounded onto all 256 codes, as the INT8 kernels do
  (:class:`~lit_kd.quant.torch_qat.Int8CodesFakeQuantize`), so the network trained is the INT8 model's. Training
  uses the module's own loss (cross-entropy, or the distillation loss with its frozen teacher).
- ``freeze_observers_epoch`` / ``freeze_bn_epoch``: from that epoch on the quantization ranges, and BatchNorm
  running statistics, stop moving (decided from the epoch number alone, so a resumed run behaves the same).
  Validation never moves the ranges.
- A checkpoint of a QAT run holds the prepared network's state: float weights, BatchNorm statistics, and every
  fake-quantize module's scale, zero point and observer ranges. Resuming from ``last.ckpt`` therefore continues QAT
  exactly, and ``lit-kd test`` with the same config evaluates the checkpoint converted to the real INT8 model.
- At fit end the best checkpoint (``ModelCheckpoint``'s ``best_model_path``; the final state when none was saved) is
  converted (``convert_fx``) and saved as ``int8_model.pt`` next to the checkpoints, so that the saved model is the
  one ``trainer.test(ckpt_path="best")`` measures: the converted state dict plus what rebuilds it (architecture,
  backend, input shape, the checkpoint it came from); :func:`load_int8_model` loads it.
  If no QAT step observed data (``trainer.max_epochs`` 0: post-training quantization through the same path), the
  ranges are first calibrated on ``calibration_batches`` training batches, and the log says so.
- ``flow="pt2e"`` (the default) does the same through PT2E (:mod:`lit_kd.quant.pt2e`): the network is captured with
  ``torch.export`` in train mode and prepared by ``prepare_qat_pt2e`` with ``X86InductorQuantizer``'s QAT config
  (activations on all 256 codes); its checkpoints hold the same kind of state (float weights, BatchNorm statistics,
  fake-quantize ranges under fixed names), so resume works the same way; at fit end ``convert_pt2e`` gives the
  INT8 program, saved with ``torch.export.save`` as ``int8_model.pt2`` (:func:`lit_kd.quant.pt2e.load_program`;
  run it through :func:`lit_kd.quant.pt2e.compile_int8` for INT8 kernels; :func:`lit_kd.artifacts.load_model`, and so
  ``lit-kd classify``, does both). ``test`` runs the converted program
  uncompiled. ``freeze_bn_epoch`` is FX-only (BatchNorm is a graph op there, not a module).
"""

from __future__ import annotations

import copy
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info

from lit_kd.checkpoints import load_weights, network_key
from lit_kd.quant import pt2e
from lit_kd.quant.torch_qat import INT8_FILE, OnCpu, activation_ranges_observed, calibrate, convert_int8, prepare_qat, save_int8_model


class QuantizationAwareTraining(L.Callback):
    """Prepare the module's network for QAT at setup, convert it to INT8 at fit end and for testing.

    Args:
        backend: torch quantized engine and default QAT qconfig (``x86``; ``qnnpack`` for ARM).
        freeze_observers_epoch: epoch from which activation and weight ranges are frozen (None: never).
        freeze_bn_epoch: epoch from which BatchNorm running statistics are frozen (None: never).
        input_shape: an example input shape for tracing (batch of 1 CIFAR image by default).
        attribute: the module attribute holding the network (``model`` for Classifier and Distillation modules).
        test_int8: run ``test`` (and ``predict``) on the converted INT8 model, on the CPU.
        init_ckpt: a lit-kd checkpoint (or state-dict file) whose float network weights QAT starts from when
            fitting (the best student of an earlier stage); a resumed run then restores its own QAT state over it.
        calibration_batches: training batches that set the quantization ranges at fit end when no QAT step did.
        flow: ``pt2e`` (torch.export + torchao's X86InductorQuantizer, the default; ``backend`` must be ``x86``) or
            ``fx`` (torch.ao FX graph mode, deprecated upstream; needs no C++ compiler, and has ``freeze_bn_epoch``).
    """

    def __init__(
        self,
        backend: str = "x86",
        freeze_observers_epoch: int | None = None,
        freeze_bn_epoch: int | None = None,
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
        attribute: str = "model",
        test_int8: bool = True,
        init_ckpt: str | None = None,
        calibration_batches: int = 8,
        flow: str = "pt2e",
    ):
        super().__init__()
        self.flow = pt2e.check_flow(flow)
        if flow == "pt2e" and backend != "x86":
            raise ValueError(f"flow 'pt2e' quantizes for x86 (X86InductorQuantizer); backend {backend!r} is FX-only")
        if flow == "pt2e" and freeze_bn_epoch is not None:
            raise ValueError("freeze_bn_epoch is supported by flow 'fx' only (PT2E BatchNorm is a graph op, not a module)")
        if freeze_observers_epoch is not None and freeze_observers_epoch < 1:
            raise ValueError(
                f"freeze_observers_epoch must be >= 1 or None, got {freeze_observers_epoch}: ranges frozen from epoch 0 never see data"
            )
        if calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {calibration_batches}")
        self.backend, self.input_shape, self.attribute, self.test_int8 = backend, tuple(input_shape), attribute, test_int8
        self.freeze_observers_epoch, self.freeze_bn_epoch = freeze_observers_epoch, freeze_bn_epoch
        self.init_ckpt, self.calibration_batches = init_ckpt, calibration_batches
        self.int8_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        network = getattr(pl_module, self.attribute)
        prepared = isinstance(network, (torch.fx.GraphModule, pt2e.QatProgram))
        if prepared and any("activation_post_process" in n for n, _ in network.named_modules()):
            return  # already prepared (a second trainer call on the same module)
        if stage == "fit" and self.init_ckpt:
            load_weights(network, self.init_ckpt)
        if self.flow == "pt2e":
            setattr(pl_module, self.attribute, pt2e.prepare_qat(network, self.input_shape))
        else:
            setattr(pl_module, self.attribute, prepare_qat(network, self.backend, self.input_shape))

    def _set_observers(self, network: nn.Module, enabled: bool) -> None:
        from torch.ao.quantization import disable_observer, enable_observer

        if self.flow == "pt2e":
            pt2e.set_observers(network, enabled)
        else:
            network.apply(enable_observer if enabled else disable_observer)

    def _convert(self, prepared: nn.Module) -> nn.Module:
        return pt2e.convert_qat(prepared) if self.flow == "pt2e" else convert_int8(prepared)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.ao.nn.intrinsic.qat import freeze_bn_stats

        network = getattr(pl_module, self.attribute)
        epoch = trainer.current_epoch
        if self.freeze_observers_epoch is not None and epoch >= self.freeze_observers_epoch:
            self._set_observers(network, False)
        if self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch:
            network.apply(freeze_bn_stats)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validation never moves the quantization ranges (torch's fake-quantize modules observe in eval mode too):
        ranges come from training data only, and the sanity check of a resumed run changes nothing."""
        self._set_observers(getattr(pl_module, self.attribute), False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self.freeze_observers_epoch is not None and trainer.current_epoch >= self.freeze_observers_epoch
        if trainer.state.fn == "fit" and not frozen:
            self._set_observers(getattr(pl_module, self.attribute), True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        network = getattr(pl_module, self.attribute)
        path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best = Path(path) if path and Path(path).is_file() else None
        if best:
            network = self._network_of(best, network)
        elif not (pt2e.activation_ranges_observed if self.flow == "pt2e" else activation_ranges_observed)(network):
            self._calibrate(trainer, network)
        int8 = self._convert(network)
        ckpt_dir = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else Path(trainer.default_root_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        source = best.name if best else "the final training state"
        if self.flow == "pt2e":
            self.int8_path = pt2e.save_program(int8, ckpt_dir / pt2e.INT8_PROGRAM_FILE, self.input_shape)
        else:
            self.int8_path = ckpt_dir / INT8_FILE
            save_int8_model(int8, self._recipe(pl_module) | {"converted_from": source}, self.int8_path)
        rank_zero_info(f"QAT: {source} converted to INT8 and saved to {self.int8_path}")

    def _network_of(self, ckpt: Path, prepared: nn.Module) -> nn.Module:
        """A copy of the prepared network holding the QAT state (weights, BatchNorm statistics, ranges) of ``ckpt``."""
        from lit_kd.checkpoints import read_checkpoint

        prefix = f"{self.attribute}."
        state = {k[len(prefix) :]: v for k, v in read_checkpoint(ckpt)["state_dict"].items() if k.startswith(prefix)}
        network = copy.deepcopy(prepared)
        network.load_state_dict(state)
        return network

    def _calibrate(self, trainer: L.Trainer, network: nn.Module) -> None:
        """No QAT step observed data: set the ranges from the first training batches (through the datamodule's batch
        hooks, as the training step sees them) rather than convert never-observed ranges (scale 1.0, zero point 0)."""
        loader = trainer.train_dataloader if trainer.train_dataloader is not None else ()
        batches = (trainer.strategy.batch_to_device(batch) for batch in islice(loader, self.calibration_batches))
        inputs = (b[0] if isinstance(b, (tuple, list)) else b for b in batches)
        count = (pt2e.calibrate if self.flow == "pt2e" else calibrate)(network, inputs)
        if not count:
            raise ValueError(
                "QAT: no training step observed the quantization ranges and there are no training batches to calibrate them on "
                "(trainer.limit_train_batches must be > 0)"
            )
        rank_zero_info(
            f"QAT: no training step observed the quantization ranges; calibrated them on {count} training batches before converting"
        )

    def _recipe(self, pl_module: L.LightningModule) -> dict[str, Any]:
        hp = pl_module.hparams
        key = network_key(hp)
        if isinstance(hp.get(key), nn.Module) or hp.get(key) is None:
            raise ValueError("QAT can save the INT8 model only for networks given by name or class_path (not in-memory modules)")
        return {
            "network": hp[key],
            "network_kwargs": hp.get(f"{key}_kwargs"),
            "num_classes": hp.get("num_classes", 10),
            "backend": self.backend,
            "input_shape": self.input_shape,
        }

    def _swap_to_int8(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.test_int8:
            return
        self._prepared = getattr(pl_module, self.attribute)
        int8 = self._convert(self._prepared)  # quantized kernels run on the CPU: batches on an accelerator go there and back
        setattr(pl_module, self.attribute, int8 if pl_module.device.type == "cpu" else OnCpu(int8))
        # quantized CPU kernels are not flagged deterministic (they are: fixed-point arithmetic on one thread
        # order); with deterministic=True torch would refuse them, so only warn while the INT8 model runs
        self._deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        if self._deterministic[0]:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _swap_back(self, pl_module: L.LightningModule) -> None:
        if getattr(self, "_prepared", None) is not None:
            setattr(pl_module, self.attribute, self._prepared)
            self._prepared = None
            torch.use_deterministic_algorithms(self._deterministic[0], warn_only=self._deterministic[1])

    def on_test_start(self, trainer, pl_module) -> None:
        self._swap_to_int8(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._swap_back(pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._swap_to_int8(trainer, pl_module)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._swap_back(pl_module)
