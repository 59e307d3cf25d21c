"""DeepSparse on a pruned-quantized model versus the dense FP32 model (ONNX Runtime, DeepSparse, PyTorch FP32/INT8).

With ``--baseline``/``--sparse`` (``lit-kd export`` of the dense checkpoint and of the SparseML pruned + QAT one)
this is ``lit-kd bench`` (see ``lit_kd/commands/bench.py``). Without them it makes both models from an architecture: the
dense network with its initial weights, and a copy pruned by SparseML's GMP to ``--sparsity`` with 8-bit QAT
modules (``experiments/recipes/gmp_qat.yaml`` applied one-shot), activation ranges calibrated on random inputs, then
exported with integer ops. Speed depends on the sparsity pattern and the ops, not on trained values; accuracy is
not measured here (``lit-kd export`` validates real exports).

    python -m benchmarks.sparse_speed --model resnet20 --sparsity 0.9 --cores 2
    python -m benchmarks.sparse_speed --baseline dense.onnx --sparse pq.onnx --ckpt dense.ckpt --cores 2
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from lit_kd import speed
from lit_kd.commands import bench
from lit_kd.onnx_export import export_onnx_model

RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "recipes" / "gmp_qat.yaml"


def pruned_quantized(dense: nn.Module, sparsity: float, calib_batches: int = 4) -> nn.Module:
    """A copy of ``dense`` pruned by magnitude to ``sparsity`` (every conv and linear) with SparseML QAT modules."""
    from torch.ao.quantization import disable_observer, enable_observer

    from lit_kd.sparse.recipe import build_manager, quiet_loggers, read_recipe

    network = copy.deepcopy(dense).train()  # QAT fusion (fuse_modules_qat) happens in training mode, as in a real run
    build_manager(read_recipe(str(RECIPE)), {"final_sparsity": sparsity}).apply(network, loggers=quiet_loggers())
    network.train().apply(enable_observer)
    with torch.no_grad():
        for _ in range(calib_batches):
            network(torch.randn(32, 3, 32, 32))
    return network.apply(disable_observer).eval()


def synthetic_models(name: str, sparsity: float, onnx_dir: Path, opset: int = 13) -> tuple[dict[str, str], nn.Module]:
    from lit_kd.models import build_model

    torch.manual_seed(0)
    dense = build_model(name).eval()
    sparse_path = onnx_dir / f"{name}_pruned{round(100 * sparsity)}_quant.onnx"
    files = {
        speed.BASELINE: export_onnx_model(dense, onnx_dir / f"{name}_dense.onnx", opset),
        speed.SPARSE: export_onnx_model(pruned_quantized(dense, sparsity), sparse_path, opset, qat=True),
    }
    return {label: str(path) for label, path in files.items()}, dense


def main(argv: list[str] | None = None) -> dict:
    cli = bench.parser("python -m benchmarks.sparse_speed", "results/sparse_speed.json")
    cli.description = __doc__
    cli.add_argument("--model", default="resnet20", help="architecture for the models made here (without --baseline/--sparse)")
    cli.add_argument("--sparsity", type=float, default=0.9, help="fraction of zero conv/linear weights of the pruned model")
    cli.add_argument("--onnx-dir", default="results/sparse_speed_onnx", help="where the models made here are written")
    args = cli.parse_args(argv)
    if not 0 <= args.sparsity < 1:
        cli.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    onnx_files, torch_model = bench.inputs_from_args(cli, args)
    if args.ckpt and not onnx_files:
        cli.error("--ckpt goes with --baseline (the ONNX export of that checkpoint)")
    made = None
    if not onnx_files:
        onnx_files, torch_model = synthetic_models(args.model, args.sparsity, Path(args.onnx_dir))
        made = {"model": args.model, "sparsity": args.sparsity, "weights": "initial (speed only)"}
    result = bench.run_bench(onnx_files, torch_model, args)
    result["made_here"] = made
    return speed.report(result, args.out)


if __name__ == "__main__":
    main()
