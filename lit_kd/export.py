"""``lit-kd export``: a lit-kd checkpoint to ONNX, checked and validated in ONNX Runtime and DeepSparse.

    lit-kd export --ckpt best.ckpt --out model.onnx [--config run/config.yaml] [--opset 13] [--data DATA --images N]

Checkpoints: a classifier, a distilled student (only the student is exported), a pruned network, and a
SparseMLRecipe run whose network holds QAT modules. For the last, the recipe saved in the checkpoint (or the
config's SparseMLRecipe callback) gives the fresh network its QAT structure before the weights load, and
sparseml's exporter converts fake quantization into integer ops (QuantizeLinear, ConvInteger, MatMulInteger: the
format DeepSparse runs as INT8). ``--config`` (a run's ``config.yaml``) names the architecture and the recipe
instead of the checkpoint. Every export goes through sparseml's exporter with torch's TorchScript ONNX exporter
(:mod:`lit_kd.compat.sparseml`). The ONNX model takes ``input`` (N x 3 x 32 x 32, N dynamic) and returns ``logits``.

Every export is validated: ``onnx.checker``, then test images (``--images``, a stratified subset of the test split)
through PyTorch, ONNX Runtime and DeepSparse (batch size fixed per engine; the last batch is padded). The top-1
agreement of each runtime with PyTorch and each one's accuracy go to a table and to ``<out>.validation.json``
(``model.onnx`` -> ``model.validation.json``). An FP32 export agreeing on fewer than 99.5 % of the images is an
error (exit status 1); an INT8 export is compared with its fake-quantized PyTorch model and only reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

MIN_FP32_AGREEMENT = 0.995
QAT_MARKERS = ("activation_post_process", "weight_fake_quant")
INTEGER_OPS = ("QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="lit-kd checkpoint (dense, distilled, pruned, SparseML pruned + QAT)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--config", help="the run's config.yaml: architecture and SparseMLRecipe callback (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13 for QAT exports)")
    p.add_argument("--data", default=os.environ.get("LIT_KD_CIFAR10"), help="CIFAR-10 source for validation (default $LIT_KD_CIFAR10)")
    p.add_argument("--images", type=int, default=1000, help="test images to validate on")
    p.add_argument("--batch-size", type=int, default=64, help="validation batch size (DeepSparse compiles for it)")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores for DeepSparse and ONNX Runtime threads")
    return p


# ---------------------------------------------------------------------------------------------- loading
def config_sources(config_path: str) -> tuple[dict, Optional[dict]]:
    """From a run's config.yaml: the network ``{"spec", "num_classes", "kwargs"}`` and the SparseMLRecipe
    callback's ``{"recipe", "recipe_args"}`` (None without one)."""
    import yaml

    config = yaml.safe_load(Path(config_path).read_text()) or {}
    init = (config.get("model") or {}).get("init_args") or {}
    key = "student" if "student" in init else "model"
    if not isinstance(init.get(key), (str, dict)):
        raise ValueError(f"config {config_path!r} names no network (model.init_args.model or .student)")
    network = {"spec": init[key], "num_classes": init.get("num_classes", 10), "kwargs": init.get(f"{key}_kwargs")}
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    recipe = next(({"recipe": c["init_args"]["recipe"], "recipe_args": c["init_args"].get("recipe_args")}
                   for c in callbacks if isinstance(c, dict) and str(c.get("class_path", "")).endswith("SparseMLRecipe")), None)
    return network, recipe


def checkpoint_sources(checkpoint: dict) -> tuple[Optional[dict], Optional[dict]]:
    """The same two from the checkpoint: its hyperparameters and its SparseMLRecipe callback state."""
    hparams = checkpoint.get("hyper_parameters") or {}
    key = "student" if "student" in hparams else "model"
    network = None
    if isinstance(hparams.get(key), (str, dict)):
        network = {"spec": hparams[key], "num_classes": hparams.get("num_classes", 10), "kwargs": hparams.get(f"{key}_kwargs")}
    state = next((v for k, v in (checkpoint.get("callbacks") or {}).items() if "SparseMLRecipe" in k), None)
    recipe = {"recipe": state["recipe"], "recipe_args": state.get("recipe_args")} if state and "recipe" in state else None
    return network, recipe


def load_for_export(ckpt: str, config: Optional[str] = None) -> tuple[nn.Module, bool]:
    """The checkpoint's network in eval mode, and whether it holds (SparseML) QAT modules. The config, when
    given, names the architecture and the recipe; the checkpoint fills in what the config lacks."""
    from lit_kd.callbacks.sparseml_recipe import build_manager, quiet_loggers, read_recipe, structure_epoch
    from lit_kd.modules.loading import instantiate_network, load_weights, network_state, read_checkpoint

    checkpoint = read_checkpoint(ckpt)
    network_src, recipe = checkpoint_sources(checkpoint)
    if config is not None:
        config_network, config_recipe = config_sources(config)
        network_src, recipe = config_network, config_recipe or recipe
    if network_src is None:
        raise ValueError(f"checkpoint {ckpt!r} does not say which architecture it holds; give the run's config with --config")
    network = instantiate_network(network_src["spec"], network_src["num_classes"], network_src["kwargs"])
    qat = any(m in k for k in network_state(checkpoint) for m in QAT_MARKERS)
    if qat:
        if recipe is None:
            raise ValueError(
                f"checkpoint {ckpt!r} holds fake-quantize modules but no SparseML recipe. A QuantizationAwareTraining "
                "(torch.ao FX) checkpoint cannot be exported: its fused observer op has no ONNX form. Export the float "
                "checkpoint it started from, or run its int8_model.pt in PyTorch (lit_kd.callbacks.load_int8_model)")
        manager = build_manager(read_recipe(recipe["recipe"]), recipe["recipe_args"])
        start = structure_epoch(manager)
        if start is None:
            raise ValueError(f"checkpoint {ckpt!r} holds QAT modules but its recipe has no QuantizationModifier")
        manager.apply_structure(network, epoch=start, loggers=quiet_loggers())
    return load_weights(network, ckpt, checkpoint).eval(), qat


# ---------------------------------------------------------------------------------------------- export
def export_onnx_model(network: nn.Module, out: str | Path, opset: int = 13, qat: bool = False) -> Path:
    """Export ``network`` (eval mode) with a dynamic batch dimension; a QAT network becomes integer ops."""
    from lit_kd.compat.sparseml import EXPORT_KWARGS, apply_sparseml_compat

    apply_sparseml_compat()
    from sparseml.pytorch.utils import export_onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.zeros(1, 3, 32, 32)
    sparseml_log = logging.getLogger("sparseml")
    level = sparseml_log.level
    sparseml_log.setLevel(logging.WARNING)  # one INFO line per graph transform otherwise
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's tracing notes are expected here, not news
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            export_onnx(network.eval(), sample, str(out), opset=opset, convert_qat=qat, input_names=["input"],
                        output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **EXPORT_KWARGS)
    finally:
        sparseml_log.setLevel(level)
    return out


def graph_facts(path: Path) -> dict:
    """``onnx.checker`` passes; the opset, op counts and dynamic batch of the written model."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = Counter(node.op_type for node in model.graph.node)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return {"opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "inputs": [i.name for i in model.graph.input], "outputs": [o.name for o in model.graph.output],
            "dynamic_batch": bool(batch_dim.dim_param), "integer_ops": {op: ops[op] for op in INTEGER_OPS if ops[op]},
            "op_counts": dict(sorted(ops.items()))}


# ---------------------------------------------------------------------------------------------- validation
def padded(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``x`` padded with zero images to a full batch (DeepSparse engines have a fixed batch size)."""
    missing = batch_size - len(x)
    return x if missing == 0 else np.concatenate([x, np.zeros((missing, *x.shape[1:]), dtype=x.dtype)])


def validate(path: Path, network: nn.Module, batches: list, batch_size: int, cores: int) -> dict:
    """Top-1 agreement with ``network`` and accuracy of ONNX Runtime and DeepSparse on ``batches``."""
    import onnxruntime as ort
    from deepsparse import compile_model

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = cores, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    engine = compile_model(str(path), batch_size=batch_size, num_cores=cores)
    logits = {"pytorch": [], "onnxruntime": [], "deepsparse": []}
    with torch.no_grad():
        for images, _ in batches:
            x = images.numpy().astype(np.float32)
            logits["pytorch"].append(network(images).numpy())
            logits["onnxruntime"].append(session.run(["logits"], {"input": x})[0])
            logits["deepsparse"].append(engine([padded(x, batch_size)])[0][: len(x)])
    labels = torch.cat([y for _, y in batches]).numpy()
    reference = np.concatenate(logits["pytorch"])
    result = {"images": len(labels), "batch_size": batch_size, "cores": cores,
              "pytorch": {"acc": float((reference.argmax(1) == labels).mean())}}
    for runtime in ("onnxruntime", "deepsparse"):
        out = np.concatenate(logits[runtime])
        result[runtime] = {"acc": float((out.argmax(1) == labels).mean()),
                           "agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
                           "max_abs_logit_diff": float(np.abs(out - reference).max())}
    return result


def weight_sparsity(network: nn.Module) -> float:
    from lit_kd.callbacks.sparseml_recipe import sparsity_counts

    zeros, total = sparsity_counts(network)
    return zeros / total if total else 0.0


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    v = result["validation"]
    table = Table(title=f"{Path(result['onnx']).name}: {result['precision']}, opset {result['opset']}, weight sparsity "
                        f"{100 * result['weight_sparsity']:.1f} %, {v['images']} test images")
    for col in ("runtime", "test acc", "same top-1 as PyTorch", "max |logit diff|"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    table.add_row("pytorch" + (" (fake-quantized)" if result["precision"] == "int8" else ""), f"{100 * v['pytorch']['acc']:.2f} %", "-", "-")
    for runtime in ("onnxruntime", "deepsparse"):
        r = v[runtime]
        table.add_row(runtime, f"{100 * r['acc']:.2f} %", f"{100 * r['agreement']:.2f} %", f"{r['max_abs_logit_diff']:.4f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


# ---------------------------------------------------------------------------------------------- command
def main(argv: Optional[list[str]] = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    if not Path(args.ckpt).is_file():
        cli.error(f"checkpoint {args.ckpt!r} does not exist")
    if args.config and not Path(args.config).is_file():
        cli.error(f"config {args.config!r} does not exist")
    if not args.data:
        cli.error("every export is validated on test images: give --data (a CIFAR-10 source) or set LIT_KD_CIFAR10")
    if args.images < 1 or args.batch_size < 1:
        cli.error("--images and --batch-size must be >= 1")
    from lit_kd.data import CIFAR10DataModule

    try:
        network, qat = load_for_export(args.ckpt, args.config)
        batches = list(CIFAR10DataModule(args.data).normalized_batches("test", args.batch_size, max_images=args.images))
    except (FileNotFoundError, ValueError, TypeError) as err:
        cli.error(str(err))
    if qat and args.opset < 13:
        cli.error(f"a QAT network is exported with integer ops from opset 13 on; got --opset {args.opset}")
    out = export_onnx_model(network, args.out, args.opset, qat)
    facts = graph_facts(out)
    if qat and not facts["integer_ops"]:
        raise SystemExit(f"error: the QAT export {out} holds no integer ops; sparseml's conversion did not apply")
    result = {"checkpoint": str(args.ckpt), "onnx": str(out), "precision": "int8" if qat else "fp32",
              "weight_sparsity": weight_sparsity(network), **facts,
              "validation": validate(out, network, batches, args.batch_size, args.cores)}
    print_table(result)
    json_path = out.with_suffix(".validation.json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} (opset {facts['opset']}, {result['precision']}, input 'input' with dynamic batch, output 'logits') and {json_path}")
    low = {rt: result["validation"][rt]["agreement"] for rt in ("onnxruntime", "deepsparse")
           if result["validation"][rt]["agreement"] < MIN_FP32_AGREEMENT}
    if low and not qat:
        raise SystemExit("error: the FP32 export disagrees with PyTorch: top-1 agreement "
                         + ", ".join(f"{rt} {100 * a:.2f} %" for rt, a in low.items()) + f" < {100 * MIN_FP32_AGREEMENT} %")
    return result
