"""The ``lit-kd`` console script: LightningCLI subcommands (``fit``/``validate``/``test``/``predict``, driven by YAML
configs: :mod:`lit_kd.lightning_cli`) and the extra subcommands of :data:`EXTRA_COMMANDS` (``lit_kd.commands.*``)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from lit_kd.lightning_cli import CkptPathError, run
from lit_kd.run_config import yaml_error

EXTRA_COMMANDS = {  # name -> (module with main(argv), one line for `lit-kd --help`)
    "study": ("lit_kd.commands.study", "run a whole study (stages, checkpoint reuse, resume) and write its report"),
    "ptq": ("lit_kd.commands.ptq", "post-training quantization of a checkpoint at several widths and methods"),
    "export": ("lit_kd.commands.export", "a checkpoint to ONNX, validated in ONNX Runtime and DeepSparse"),
    "bench": ("lit_kd.commands.bench", "DeepSparse / ONNX Runtime / PyTorch speed at batch 1 and 32"),
    "classify": ("lit_kd.commands.classify", "predictions for image files, or test accuracy"),
    "summary": ("lit_kd.commands.summary", "per-layer output shapes, parameters left and MACs of a model file"),
}
# `lit-kd predict -w WEIGHTS ...` is this command; `lit-kd predict --config ...` stays LightningCLI's predict
PREDICT_WEIGHTS = ("lit_kd.commands.predict", "predict -w WEIGHTS [IMAGES...|--data DATA] [--topk K]: classes of images")


def weights_predict(argv: list[str]) -> bool:
    """``argv`` asks for ``lit-kd predict -w WEIGHTS`` (not LightningCLI's config-driven predict)."""
    return bool(argv) and argv[0] == "predict" and any(a in ("-w", "--weights") or a.startswith("--weights=") for a in argv[1:])


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point ``lit-kd``: LightningCLI subcommands, plus the EXTRA_COMMANDS (``ptq``, ``classify``,
    ``export``, ``bench``), each a module with its own ``main(argv)``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and (argv[0] in EXTRA_COMMANDS or weights_predict(argv)):
        os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
        module = PREDICT_WEIGHTS[0] if argv[0] == "predict" else EXTRA_COMMANDS[argv[0]][0]
        status = importlib.import_module(module).main(argv[1:])
        if isinstance(status, int):
            sys.exit(status)
        return
    if not argv or argv[0] in ("-h", "--help"):
        try:
            run(["--help"])
        except SystemExit:
            pass
        print(
            "\nmore subcommands (each with its own --help):\n"
            + "\n".join(f"  {name:9s} {text}" for name, (_, text) in EXTRA_COMMANDS.items())
            + f"\n  {'predict':9s} {PREDICT_WEIGHTS[1]}"
        )
        if not argv:
            sys.exit(2)
        return
    prog = "lit-kd " + next((a for a in argv if not a.startswith("-")), "")
    for path in config_files(argv):
        problem = yaml_error(path)
        if problem:
            print(f"{prog}: error: --config {problem}", file=sys.stderr)
            sys.exit(2)
    try:
        run(argv)
    except CkptPathError as err:
        raise SystemExit(f"{prog}: error: {err}") from None


def config_files(argv: list[str]) -> list[str]:
    """The existing files given to ``--config``/``-c`` (``--config=FILE`` too): checked for YAML syntax before
    LightningCLI reads them (its message names neither the file nor the line)."""
    found = []
    for i, arg in enumerate(argv):
        value = (
            argv[i + 1]
            if arg in ("--config", "-c") and i + 1 < len(argv)
            else arg.partition("=")[2]
            if arg.startswith("--config=")
            else None
        )
        if value and Path(value).is_file():
            found.append(value)
    return found


if __name__ == "__main__":
    main()
