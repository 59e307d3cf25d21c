"""``lit-kd predict -w WEIGHTS``: the class of each image with a weights file (a compact pruned ``.npz`` too), as the
ResNet-50 -> ResNet-18 project's users call it; with ``--data`` the test accuracy.

    lit-kd predict -w weights/resnet18_100k.npz cat.png photos/ [--topk 3]
    lit-kd predict -w weights/resnet18_100k.npz --data $LIT_KD_CIFAR10

The same model files and image handling as ``lit-kd classify`` (it runs the same code); ``lit-kd predict --config
...`` without ``-w`` is LightningCLI's predict subcommand.
"""

from __future__ import annotations

import argparse

from lit_kd.commands import classify


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="image files (PNG, JPEG, ...) and folders of them")
    p.add_argument(
        "-w", "--weights", required=True, help="weights file (.pt, compact .npz), checkpoint, int8_model.pt, .onnx or .pt2 program"
    )
    p.add_argument("--topk", "--top-k", dest="top_k", type=int, default=1, help="show the K most probable classes per image")
    p.add_argument("--data", metavar="DATA", help="report accuracy on the test split of this CIFAR-10 source instead")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="torch device (default: cuda when available for float networks, else cpu)")
    return p


def main(argv: list[str] | None = None) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    classify.run(cli, args, args.weights, flag="--weights")
