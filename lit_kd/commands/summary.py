"""``lit-kd summary WEIGHTS``: the per-layer table of a model file: output shape, parameters, the parameters left
after pruning, MACs, and the totals (``Total params`` counts every parameter left in the whole network, BatchNorm
included, as the pruning budget does; ``Params size (MB)`` is that count in float32, 10^6 bytes per MB).

    lit-kd summary weights/resnet18_100k.npz
    lit-kd summary best.ckpt --input-size 64
"""

from __future__ import annotations

import argparse
import sys

from lit_kd.artifacts import PREDICT_QAT_ADVICE
from lit_kd.commands.arguments import load_float_network, require_file, require_positive
from lit_kd.models.summary import print_summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="weights file (.pt, compact .npz) or lit-kd checkpoint")
    p.add_argument("--input-size", type=int, default=32, help="height and width of the input image (default 32: CIFAR-10)")
    return p


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    cli = parser()
    args = cli.parse_args(argv)
    require_positive(cli, args, "input_size")
    require_file(cli, "WEIGHTS", args.weights, what="model file")
    network = load_float_network(cli.prog, args.weights, PREDICT_QAT_ADVICE, flag="WEIGHTS")
    console = Console(width=None if sys.stdout.isatty() else 200)  # logs and pipes get the full table
    totals = print_summary(network, (1, 3, args.input_size, args.input_size), console=console)
    console.print(f"Total params: {totals['nonzero']:,}")
    console.print(f"Params before pruning: {totals['params']:,}")
    console.print(f"Params size (MB): {totals['nonzero'] * 4 / 1e6:.2f}")
    console.print(f"MACs per image: {totals['macs']:,}")
