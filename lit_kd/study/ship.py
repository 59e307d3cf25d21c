"""Ship a finished study's products into the repository: trained model files under ``weights/`` (each measured on the
full test set the way ``lit-kd classify`` measures it, recorded with its sha256 in ``weights/weights.json``, and the
table of ``weights/README.md`` regenerated from that file), and the report under ``results/<study>/``.

    python -m lit_kd.study.ship ~/lit-kd-runs/cifar_cpu --data $LIT_KD_CIFAR10 \\
        resnet20_trunc_student.pt=best_student resnet20_trunc_int8.pt=qat:int8 resnet20_trunc_gmp90_int8.onnx=export_sparse:onnx

An entry is ``FILE=STAGE[:OUTPUT]``: a stage's float checkpoint (``ckpt``, the default) becomes a portable weights
file (:func:`lit_kd.checkpoints.write_weights_file`, loadable with ``weights_only=True``); an ``int8`` output (a QAT
run's ``int8_model.pt``), an ``onnx`` output and ``compact`` (a pruned run's ``compact_weights.npz``: its non-zero
weights only, :mod:`lit_kd.compact_weights`) are copied as they are. A file already shipped under that name with
other content is kept unless ``--replace`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lit_kd.atomic import copy_file, write_bytes, write_json
from lit_kd.study.manifest import portable_command, read_manifest

TABLE_START, TABLE_END = "<!-- weights:start -->", "<!-- weights:end -->"
OUTPUTS = ("ckpt", "int8", "onnx", "compact")
COMPACT_FILE = "compact_weights.npz"  # IterativePruning writes it into the run folder
REPORT_FILES = ("report.md", "report.html", "results.json")


class ShipError(Exception):
    """A study output that cannot be shipped; the message says which and why."""


def parse_entry(text: str) -> tuple[str, str, str]:
    """``FILE=STAGE[:OUTPUT]`` -> (file name, stage, output)."""
    name, sep, source = text.partition("=")
    stage, _, output = source.partition(":")
    output = output or "ckpt"
    if not sep or not name or not stage:
        raise ShipError(f"{text!r}: expected FILE=STAGE[:OUTPUT], e.g. resnet20_trunc_int8.pt=qat:int8")
    if "/" in name or name in ("weights.json", "README.md"):
        raise ShipError(f"{text!r}: FILE is a plain file name inside the weights folder")
    if output not in OUTPUTS:
        raise ShipError(f"{text!r}: OUTPUT must be one of {', '.join(OUTPUTS)}, got {output!r}")
    expected = {"ckpt": ".pt", "int8": ".pt", "onnx": ".onnx", "compact": ".npz"}[output]
    if not name.endswith(expected):
        raise ShipError(f"{text!r}: a shipped {output} file is named *{expected}")
    return name, stage, output


def stage_manifest(study_out: Path, stage: str) -> dict:
    manifest = read_manifest(study_out / stage)
    if manifest is None:
        raise ShipError(f"stage {stage!r}: no manifest in {study_out / stage} (not a stage of this study, or never run)")
    if manifest.get("status") != "done":
        raise ShipError(f"stage {stage!r} is not finished (status {manifest.get('status')!r}); run the study to the end first")
    return manifest


def source_stage(study_out: Path, stage: str, manifest: dict) -> tuple[str, dict]:
    """The stage that trained the model: a ``select`` stage (e.g. ``best_student``) points to the stage it chose."""
    chosen = manifest.get("metrics", {}).get("chosen")
    return (chosen, stage_manifest(study_out, chosen)) if manifest.get("kind") == "select" and chosen else (stage, manifest)


def measure(path: Path, data: str) -> tuple[int, int]:
    """(correct, images) of the shipped file on the full test split, loaded as ``lit-kd classify`` loads it."""
    from lit_kd.artifacts import PREDICT_KINDS, PREDICT_QAT_ADVICE, ModelFileError, QatCheckpointError, load_model
    from lit_kd.evaluation import test_set_accuracy

    prog = "lit_kd.study.ship"
    try:
        network, _ = load_model(str(path), PREDICT_KINDS)
    except QatCheckpointError as err:  # an unusable file is reported as one line
        raise ShipError(f"{prog}: error: {err.advice_line(prog, PREDICT_QAT_ADVICE)}") from None
    except ModelFileError as err:
        raise ShipError(f"{prog}: error: {err.line()}") from None
    try:
        return test_set_accuracy(network, data, 250, "cpu")
    except (FileNotFoundError, ValueError) as err:
        raise ShipError(f"measuring {path.name} on {data}: {err}") from None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_content(a: Path, b: Path) -> bool:
    """Whether two shipped files hold the same model: equal bytes, or equal tensors and data (``torch.save`` writes
    the file's own name and a random serialization id into every file, so equal weights differ in bytes)."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix in (".onnx", ".npz"):
        return False
    from lit_kd.checkpoints import safe_load

    return _equal(safe_load(a), safe_load(b))


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y))
    return x == y


def write_shipped_file(source: Path, output: str, target: Path) -> None:
    """The float network of a checkpoint as a portable weights file, or an INT8 / ONNX file copied as it is."""
    if output != "ckpt":
        copy_file(source, target)
        return
    from lit_kd.checkpoints import build_network, load_weights, network_key, read_checkpoint, write_weights_file

    checkpoint = read_checkpoint(source)  # read once: the network and the hyperparameters that name it
    network = load_weights(build_network(checkpoint, source), source, checkpoint)
    hparams = checkpoint["hyper_parameters"]
    key = network_key(hparams)
    write_weights_file(network, hparams[key], target, hparams.get("num_classes", 10), hparams.get(f"{key}_kwargs"))


def ship_model(study_out: Path, entry: str, weights_dir: Path, data: str, replace: bool) -> dict:
    """Write one shipped file and return its ``weights.json`` entry."""
    name, stage, output = parse_entry(entry)
    manifest = stage_manifest(study_out, stage)
    outputs = dict(manifest.get("outputs", {}))
    if output == "compact" and "run_dir" in outputs:
        outputs["compact"] = str(Path(outputs["run_dir"]) / COMPACT_FILE)
        if not Path(outputs["compact"]).is_file():
            raise ShipError(f"stage {stage!r} wrote no {COMPACT_FILE} (only a run pruned by IterativePruning does)")
    if output not in outputs:
        raise ShipError(f"stage {stage!r} has no {output!r} output (it has: {', '.join(manifest.get('outputs', {})) or 'none'})")
    if output == "onnx" and len(manifest.get("needs", [])) == 1:  # an export: the network is that of its source stage
        trained_by, trained = source_stage(study_out, manifest["needs"][0], stage_manifest(study_out, manifest["needs"][0]))
    else:
        trained_by, trained = source_stage(study_out, stage, manifest)
    source = Path(outputs[output])
    target = weights_dir / name
    staged = target.with_name(f".new.{name}")  # same suffix: how it is loaded depends on it
    try:
        write_shipped_file(source, output, staged)
        keep = target.exists() and same_content(target, staged)  # then the shipped file stays as it is (its sha256 too)
        if target.exists() and not keep and not replace:
            raise ShipError(f"{target} exists with other content; pass --replace to overwrite it")
        correct, total = measure(staged, data)  # before it takes the name: a file that fails to load is never shipped
        if not keep:
            staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    facts = trained.get("metrics", {})
    return {
        "architecture": facts.get("architecture"),
        "format": {"ckpt": "float weights", "int8": "INT8 (torch)", "onnx": "ONNX", "compact": "compact (non-zero weights)"}[output],
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "correct": correct,
        "test_images": total,
        "test_acc": correct / total,
        "stage_test_acc": facts.get("test_acc"),
        "epochs": facts.get("epochs"),
        "nonzero_params": facts.get("nonzero_params"),
        "params": facts.get("params"),
        "study": str(study_out.name),
        "stage": trained_by if trained_by == stage else f"{stage} ({trained_by})",
        "command": stage_command(manifest if output == "onnx" else trained, study_out),
    }


def stage_command(manifest: dict, study_out: Path) -> str:
    """A stage's command as ``weights/README.md`` shows it: the data set as ``$LIT_KD_CIFAR10``."""
    return portable_command(manifest.get("command", ""), study_out, manifest.get("inputs", {}).get("data"), "$LIT_KD_CIFAR10")


def weights_table(shipped: dict) -> str:
    """The table of ``weights/README.md``, one row per entry of ``weights.json``."""
    rows = [
        "| file | architecture | format | test accuracy (full CIFAR-10 test set) | size | non-zero params | trained by | sha256 "
        "| produced by (`<out>`: the study's --out) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in sorted(shipped.items()):
        nonzero = f"{e['nonzero_params']:,} of {e['params']:,}" if e.get("nonzero_params") and e.get("params") else ""
        trained = ", ".join(x for x in (e.get("stage"), e.get("epochs") is not None and f"{e['epochs']} epochs") if x)
        rows.append(
            f"| `{name}` | {e['architecture']} | {e.get('format', 'float weights')} | {100 * e['test_acc']:.2f} % "
            f"({e['correct']} of {e['test_images']}) | {e['bytes'] / 1024:,.0f} KiB | {nonzero} | {trained} | "
            f"`{e['sha256'][:16]}...` | `{e['command']}` |"
        )
    return "\n".join(rows)


def update_weights_readme(readme: Path, shipped: dict) -> None:
    from lit_kd.study.headline import HeadlineError, replace_between_markers

    try:
        text = readme.read_text(encoding="utf-8")
        new = replace_between_markers(text, weights_table(shipped), str(readme), TABLE_START, TABLE_END)
    except (FileNotFoundError, HeadlineError) as err:
        raise ShipError(str(err)) from None
    if new != text:
        write_bytes(readme, new.encode("utf-8"))


def ship_report(study_out: Path, results_dir: Path) -> list[Path]:
    """Copy the study's report (``report.md``, ``report.html``, ``results.json``, ``report_files/*.png``)."""
    missing = [f for f in REPORT_FILES if not (study_out / f).is_file()]
    if missing:
        raise ShipError(f"{study_out} has no {', '.join(missing)}: the study's report stage has not run")
    copied = []
    for source in [study_out / f for f in REPORT_FILES] + sorted((study_out / "report_files").glob("*.png")):
        copied.append(copy_file(source, results_dir / source.relative_to(study_out)))
    return copied


def default_data(study_out: Path) -> str | None:
    for manifest_path in sorted(study_out.glob("*/manifest.json")):
        data = json.loads(manifest_path.read_text()).get("inputs", {}).get("data")
        if data:
            return data
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lit_kd.study.ship", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study_out", type=Path, help="the study's --out folder")
    parser.add_argument("entries", nargs="*", help="FILE=STAGE[:OUTPUT] (OUTPUT: ckpt (default), int8, onnx, compact)")
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="folder of shipped weights (default weights/)")
    parser.add_argument("--results", type=Path, help="copy the report here (e.g. results/cifar_cpu)")
    parser.add_argument("--data", help="CIFAR-10 source to measure each file on (default: the study's own)")
    parser.add_argument("--replace", action="store_true", help="overwrite a shipped file whose content differs")
    args = parser.parse_intermixed_args(argv)
    if not args.study_out.is_dir():
        parser.error(f"{args.study_out} is not a folder (expected a study's --out folder)")
    if not args.entries and args.results is None:
        parser.error("nothing to ship: give FILE=STAGE[:OUTPUT] entries and/or --results")
    try:
        for entry in args.entries:  # every entry checked before anything is written
            parse_entry(entry)
        data = args.data or default_data(args.study_out)
        if args.entries and not data:
            raise ShipError("no CIFAR-10 source to measure on: give --data")
        registry_path = args.weights / "weights.json"
        shipped = json.loads(registry_path.read_text()) if registry_path.is_file() else {}
        for entry in args.entries:
            name = parse_entry(entry)[0]
            e = shipped[name] = ship_model(args.study_out, entry, args.weights, data, args.replace)
            write_json(registry_path, dict(sorted(shipped.items())))
            print(f"{args.weights / name}: {100 * e['test_acc']:.2f} % ({e['correct']} of {e['test_images']}) on {data}")
        if args.entries:
            update_weights_readme(args.weights / "README.md", shipped)
        if args.results is not None:
            copied = ship_report(args.study_out, args.results)
            print(f"{args.results}: {len(copied)} report files")
    except ShipError as err:
        print(f"python -m lit_kd.study.ship: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
