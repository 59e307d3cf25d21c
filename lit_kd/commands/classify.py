"""``lit-kd classify``: the predicted classes of image files with a trained checkpoint, or its test-set accuracy.

    lit-kd classify --ckpt best.ckpt cat.png photos/ [--top-k 3]
    lit-kd classify --ckpt best.ckpt --data data/cifar10-png.zip

Any lit-kd checkpoint or weights file works (dense, distilled, pruned), and so do the INT8 model a QAT run writes
(``int8_model.pt``, torch's quantized CPU kernels), an ``.onnx`` file (ONNX Runtime, FP32 or QDQ INT8), an OpenVINO
IR ``.xml`` (the ``openvino`` extra), a TorchScript program (``pytorch_int8.pt`` from ``lit-kd ptq --export-dir
--torch-flow fx``), a PT2E ``.pt2`` program (``pytorch_int8.pt2`` from ``lit-kd ptq --export-dir``, ``int8_model.pt2``
from a QAT run; checked before it loads, compiled by ``torch.compile`` on its first batch) and compact ``.npz`` weights
of a pruned network; INT8, ONNX and OpenVINO models run on the CPU. Folders are searched
recursively for image files (by suffix); when every image sits in a folder named after its class
(``test/cat/0001.png``) the accuracy over them is printed too. An image that is not 32x32 is centre-cropped to a square and
resized to 32x32 (noted in the table); every image is converted to RGB and normalised like the training data
(``CIFAR10DataModule.normalize``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lit_kd.artifacts import PREDICT_QAT_ADVICE as QAT_ADVICE
from lit_kd.commands.arguments import fail, load_trained_model, require_data, require_file, require_positive
from lit_kd.data import CIFAR10_CLASSES, IMAGE_SUFFIXES, CIFAR10DataModule
from lit_kd.evaluation import test_set_accuracy

SIZE = (32, 32)
# the model kinds that run on the CPU only, as an error names them
CPU_ONLY = {"int8": "an INT8", "onnx": "an ONNX", "openvino": "an OpenVINO", "torchscript": "a TorchScript INT8", "pt2e": "a PT2E INT8"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="image files (PNG, JPEG, ...) and folders of them")
    p.add_argument(
        "--ckpt",
        required=True,
        help="lit-kd checkpoint or weights file (classifier, distilled student, pruned), int8_model.pt, .onnx, OpenVINO .xml, "
        "TorchScript .pt or PT2E .pt2 program",
    )
    p.add_argument("--top-k", type=int, default=1, help="show the K most probable classes per image")
    p.add_argument("--data", metavar="DATA", help="report accuracy on the test split of this CIFAR-10 source instead")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="torch device (default: cuda when available for float networks, else cpu)")
    return p


def image_files(paths: list[str]) -> list[Path]:
    """The given files, and the image files under the given folders (recursively, sorted, hidden ones skipped)."""
    files = []
    for given in map(Path, paths):
        if not given.exists():
            raise FileNotFoundError(f"{str(given)!r} does not exist")
        if given.is_dir():
            found = sorted(
                p
                for p in given.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )
            if not found:
                raise ValueError(f"folder {str(given)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(given)
    return files


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """A 32x32 RGB uint8 array, and a note when the image had to be resized."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{str(path)!r} is not an image file that PIL can read ({type(err).__name__})") from err
    note = ""
    if img.size != SIZE:
        note = f"resized from {img.size[0]}x{img.size[1]}"
        img = ImageOps.fit(img, SIZE, Image.Resampling.BICUBIC)  # centre crop to a square, then resize
    return np.asarray(img, dtype=np.uint8), note


def class_names(count: int) -> list[str]:
    return list(CIFAR10_CLASSES) if count == len(CIFAR10_CLASSES) else [str(i) for i in range(count)]


@torch.no_grad()
def classify(network: torch.nn.Module, files: list[Path], top_k: int, batch_size: int, device: str) -> list[dict]:
    """One row per file: ``{"image", "note", "top": [(class name, probability), ...]}``."""
    normalize = CIFAR10DataModule().normalize
    rows = []
    for start in range(0, len(files), batch_size):
        batch = [read_image(f) for f in files[start : start + batch_size]]
        images = torch.from_numpy(np.stack([a for a, _ in batch])).permute(0, 3, 1, 2).to(device).float().div_(255)
        probs = network(normalize(images)).float().softmax(dim=1).cpu()
        names = class_names(probs.shape[1])
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for f, (_, note), v, i in zip(files[start:], batch, values, indices):
            rows.append({"image": str(f), "note": note, "top": [(names[c], p) for c, p in zip(i.tolist(), v.tolist())]})
    return rows


def print_rows(rows: list[dict], ckpt: str) -> None:
    from rich.console import Console
    from rich.table import Table

    k = len(rows[0]["top"])
    table = Table(title=f"Predictions of {ckpt}")
    table.add_column("image")
    for rank in range(1, k + 1):
        table.add_column("class" if k == 1 else f"top-{rank}")
        table.add_column("probability" if k == 1 else "p", justify="right")
    table.add_column("note")
    for row in rows:
        cells = [c for name, p in row["top"] for c in (name, f"{100 * p:.1f} %")]
        table.add_row(row["image"], *cells, row["note"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # logs and pipes get the full table


def labelled_accuracy(rows: list[dict]) -> tuple[int, int] | None:
    """(correct, images) when every image sits in a folder named after its CIFAR-10 class (``test/cat/0001.png``):
    the labels are known; else None."""
    labels = [Path(row["image"]).parent.name for row in rows]
    if not rows or any(label not in CIFAR10_CLASSES for label in labels) or len(rows[0]["top"]) == 0:
        return None
    correct = sum(label == row["top"][0][0] for label, row in zip(labels, rows))
    return correct, len(rows)


def run(cli: argparse.ArgumentParser, args: argparse.Namespace, model_file: str, flag: str = "--ckpt") -> None:
    """Classify ``args.paths`` (or measure test accuracy on ``args.data``) with the model in ``model_file``, named by
    ``flag`` in errors; ``args`` carries ``paths``, ``data``, ``top_k``, ``batch_size`` and ``device``."""
    if bool(args.paths) == bool(args.data):
        cli.error("give image files or folders to classify, or --data DATA (not both)")
    require_positive(cli, args, "top_k", "batch_size")
    try:
        device = torch.device(args.device or "cpu")
    except RuntimeError:
        cli.error(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        cli.error(f"--device {args.device}: no such CUDA device here; use --device cpu")
    require_file(cli, flag, model_file)
    require_data(cli, args.data)
    try:
        files = image_files(args.paths)
    except (FileNotFoundError, ValueError) as err:
        cli.error(str(err))
    network, kind = load_trained_model(cli.prog, model_file, QAT_ADVICE, flag=flag)
    if kind != "float" and device.type != "cpu":
        cli.error(f"--device {args.device}: {CPU_ONLY[kind]} model runs on the CPU only; use --device cpu")
    if args.device is None and kind == "float" and torch.cuda.is_available():
        device = torch.device("cuda")
    network = network.to(device)
    try:
        if args.data:
            correct, total = test_set_accuracy(network, args.data, args.batch_size, str(device))
            print(f"test accuracy of {model_file} on {args.data}: {100 * correct / total:.2f} % ({correct} of {total} test images correct)")
        else:
            rows = classify(network, files, args.top_k, args.batch_size, str(device))
            print_rows(rows, model_file)
            known = labelled_accuracy(rows)
            if known:
                correct, total = known
                print(f"accuracy (labels from the class folders): {100 * correct / total:.2f} % ({correct} of {total} images correct)")
    except (FileNotFoundError, ValueError) as err:
        fail(cli.prog, f"--data: {err}" if args.data else str(err))


def main(argv: list[str] | None = None) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    run(cli, args, args.ckpt)
