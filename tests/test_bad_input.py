"""Every bad input a clear error: a table of bad command lines for every subcommand and bad arguments to the Python
entry points.

A bad command line exits with status 2 when the arguments themselves are wrong (a count below 1, a width out of
range, a file that does not exist, an unknown choice: argparse's usage error) and with status 1 when a file exists
but cannot be used (unreadable, corrupt, of another kind or architecture). Either way stderr holds ONE line with
``error:`` that names the argument and what was expected, there is no Python traceback, and the run directory (and
the input files) are left exactly as they were. A bad argument to a Python entry point raises ValueError, TypeError
or FileNotFoundError with a message that names it.

The command lines run in ONE child process (importing torch and Lightning once per command line would take
minutes): :data:`RUNNER` calls the console script's ``lit_kd.cli.main`` for each case, with file descriptors 1 and
2 redirected, in a fresh run directory, and records what the interpreter would print and return (a ``SystemExit``
with a message: the message and status 1; an uncaught exception: its traceback and status 1).
:func:`test_the_runner_matches_the_console_script` checks that against the real ``lit-kd`` for two cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import write_config

LIT_KD = Path(sys.executable).with_name("lit-kd")
MAX_MESSAGE = 500  # characters of the error line: short enough to read at a glance

# ------------------------------------------------------------------------------------------------ the bad files


def corrupt_one_member(source: Path, target: Path) -> str:
    """A copy of the (stored, uncompressed) zip ``source`` with one byte of one image flipped: its CRC no longer
    matches. Returns the member's name."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("test/") and i.filename.endswith(".png"))
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return info.filename


def tiny_onnx(path: Path, input_name: str = "input") -> Path:
    """A valid one-node ONNX model (Identity), enough for ``bench``'s checks of its files."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture(scope="module")
def bad(tiny_zip, tmp_path_factory) -> dict[str, Path]:
    """Every input file the cases name, in one folder (checked unchanged after the runs)."""
    from lit_kd.checkpoints import NETWORK_PREFIX, write_weights_file
    from lit_kd.models import build_model
    from lit_kd.quant.torch_qat import prepare_qat

    root = tmp_path_factory.mktemp("bad_inputs")
    f = {"root": root, "zip": tiny_zip}
    torch.manual_seed(0)
    f["ckpt"] = write_weights_file(build_model("resnet8"), "resnet8", root / "resnet8.ckpt")
    f["w20"] = write_weights_file(build_model("resnet20"), "resnet20", root / "resnet20.ckpt")
    mixed = torch.load(f["w20"], weights_only=True)
    mixed["hyper_parameters"]["model"] = "resnet8"  # resnet20 weights that say resnet8: another architecture
    torch.save(mixed, root / "mismatch.ckpt")
    f["mismatch"] = root / "mismatch.ckpt"
    mixed["hyper_parameters"]["model"] = "resnet9"
    torch.save(mixed, root / "unknown_arch.ckpt")
    f["unknown_arch"] = root / "unknown_arch.ckpt"
    qat = prepare_qat(build_model("resnet8"), "x86", (1, 3, 32, 32))  # a QuantizationAwareTraining run's network
    torch.save(
        {
            "state_dict": {NETWORK_PREFIX + k: v for k, v in qat.state_dict().items()},
            "hyper_parameters": {"model": "resnet8", "num_classes": 10},
        },
        root / "qat.ckpt",
    )
    f["qat"] = root / "qat.ckpt"
    torch.save([1, 2, 3], root / "list.ckpt")
    f["list"] = root / "list.ckpt"
    for name, content in {
        "empty.ckpt": b"",
        "text.ckpt": b"not a checkpoint\n",
        "notzip.zip": b"not a zip\n",
        "data.tar": b"not cifar\n",
        "notonnx.onnx": b"not an onnx model\n",
        "notimage.png": b"no picture\n",
        "recipe.txt": b"modifiers: []\n",
        "broken.yaml": b"model:\n  init_args: [unclosed\n",
        "list.yaml": b"- a\n- b\n",
        "nobin.xml": b"<net/>\n",
    }.items():
        (root / name).write_bytes(content)
        f[Path(name).stem if Path(name).stem not in f else name] = root / name
    f["badcrc"] = root / "badcrc.zip"
    f["badcrc_member"] = corrupt_one_member(tiny_zip, f["badcrc"])
    f["onnx"] = tiny_onnx(root / "tiny.onnx")
    f["onnx_x"] = tiny_onnx(root / "tiny_x.onnx", input_name="x")
    (root / "emptydir").mkdir()
    f["emptydir"] = root / "emptydir"
    f["cfg8"] = write_config(root / "resnet8.yaml", tiny_zip, model="resnet8", epochs=1)
    config = yaml.safe_load(f["cfg8"].read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lit_kd.callbacks.QuantizationAwareTraining"}]
    (root / "qat_resnet8.yaml").write_text(yaml.safe_dump(config))
    f["cfg_qat"] = root / "qat_resnet8.yaml"
    float_run = torch.load(f["ckpt"], weights_only=True)  # a float ClassifierModule checkpoint, as LightningCLI writes it
    float_run["hyper_parameters"] = {"_class_path": "lit_kd.modules.ClassifierModule", "model": "resnet8", "num_classes": 10}
    torch.save(float_run, root / "float_run.ckpt")
    f["float_run"] = root / "float_run.ckpt"
    qat_run = {**float_run, "state_dict": torch.load(f["qat"], weights_only=True)["state_dict"]}  # as a QAT fit writes it
    torch.save(qat_run, root / "qat_run.ckpt")
    f["qat_run"] = root / "qat_run.ckpt"
    return f


# ------------------------------------------------------------------------------------------------ the command lines


@dataclass
class Case:
    id: str
    argv: list[str]  # {name} is replaced by the path of bad[name]
    status: int  # 2: usage error, 1: failure
    says: list[str]  # each in the error line


PTQ = ["ptq", "--ckpt", "{ckpt}", "--data", "{zip}", "--bits", "8"]
CLASSIFY = ["classify", "--ckpt", "{ckpt}", "--data", "{zip}"]
EXPORT = ["export", "--ckpt", "{ckpt}", "--out", "model.onnx", "--data", "{zip}"]
BENCH = ["bench", "--baseline", "{onnx}"]
QAT_PTQ = "is a quantization-aware-training (QAT) checkpoint"

CASES = [
    # lit-kd ptq: counts, widths, names
    Case("ptq calib-batches 0", [*PTQ, "--calib-batches", "0"], 2, ["--calib-batches must be >= 1, got 0"]),
    Case("ptq calib-batches negative", [*PTQ, "--calib-batches", "-3"], 2, ["--calib-batches must be >= 1, got -3"]),
    Case("ptq threads 0", [*PTQ, "--threads", "0"], 2, ["--threads must be >= 1, got 0"]),
    Case("ptq batch-size 0", [*PTQ, "--batch-size", "0"], 2, ["--batch-size must be >= 1, got 0"]),
    Case("ptq test-images negative", [*PTQ, "--test-images", "-1"], 2, ["--test-images must be >= 1"]),
    Case("ptq adaround-iterations 0", [*PTQ, "--adaround-iterations", "0"], 2, ["--adaround-iterations must be >= 1"]),
    Case("ptq bits 1", [*PTQ, "1"], 2, ["--bits width must be an integer from 2 to 16, got 1"]),
    Case("ptq weight-only bits 17", [*PTQ, "--weight-only-bits", "17"], 2, ["--weight-only-bits width", "2 to 16, got 17"]),
    Case("ptq search candidate 1", [*PTQ, "--max-drop", "1", "--candidates", "1", "4"], 2, ["--candidates width", "got 1"]),
    Case("ptq search eval-images 0", [*PTQ, "--max-drop", "1", "--eval-images", "0"], 2, ["--eval-images must be >= 1"]),
    Case("ptq max-drop negative", [*PTQ, "--max-drop", "-1"], 2, ["--max-drop", ">= 0; got -1"]),
    Case("ptq unknown observer", [*PTQ, "--observer", "minmaxx"], 2, ["--observer", "invalid choice: 'minmaxx'"]),
    Case("ptq missing ckpt", ["ptq", "--ckpt", "nope.ckpt", "--data", "{zip}"], 2, ["--ckpt", "'nope.ckpt' does not exist"]),
    Case("ptq ckpt is a folder", ["ptq", "--ckpt", "{emptydir}", "--data", "{zip}"], 2, ["--ckpt", "is a directory"]),
    Case("ptq out is a folder", [*PTQ, "--out", "{emptydir}"], 2, ["--out", "is a directory"]),
    # lit-kd ptq: data
    Case(
        "ptq missing data",
        ["ptq", "--ckpt", "{ckpt}", "--data", "nowhere/cifar10"],
        2,
        ["--data 'nowhere/cifar10' does not exist", "CIFAR-10 .zip"],
    ),
    Case("ptq data not a zip", ["ptq", "--ckpt", "{ckpt}", "--data", "{notzip}"], 1, ["--data", "notzip.zip' is not a valid zip file"]),
    Case("ptq data a tar", ["ptq", "--ckpt", "{ckpt}", "--data", "{data}"], 1, ["--data", "data.tar' is a file but not a .zip"]),
    Case("ptq data bad CRC", ["ptq", "--ckpt", "{ckpt}", "--data", "{badcrc}"], 1, ["--data", "{badcrc_member} cannot be read", "CRC"]),
    Case("ptq data empty folder", ["ptq", "--ckpt", "{ckpt}", "--data", "{emptydir}"], 1, ["--data", "no torchvision CIFAR-10 found"]),
    Case("ptq search eval-images > train set", [*PTQ, "--max-drop", "1"], 1, ["--eval-images 5000 leaves no training images", "240"]),
    # lit-kd ptq: checkpoints
    Case("ptq QAT ckpt", ["ptq", "--ckpt", "{qat}", "--data", "{zip}"], 1, ["--ckpt", QAT_PTQ, "float checkpoint"]),
    Case(
        "ptq ckpt of another architecture",
        ["ptq", "--ckpt", "{mismatch}", "--data", "{zip}"],
        1,
        ["--ckpt", "does not fit CifarResNet", "another architecture"],
    ),
    Case("ptq unknown architecture", ["ptq", "--ckpt", "{unknown_arch}", "--data", "{zip}"], 1, ["--ckpt", "unknown model 'resnet9'"]),
    Case("ptq empty ckpt", ["ptq", "--ckpt", "{empty}", "--data", "{zip}"], 1, ["--ckpt", "empty.ckpt' is empty (0 bytes)"]),
    Case(
        "ptq text ckpt",
        ["ptq", "--ckpt", "{text}", "--data", "{zip}"],
        1,
        ["--ckpt", "text.ckpt' is not a checkpoint (not a file written by torch.save)"],
    ),
    Case("ptq list ckpt", ["ptq", "--ckpt", "{list}", "--data", "{zip}"], 1, ["--ckpt", "holds a list, not a checkpoint"]),
    # lit-kd classify
    Case("classify QAT ckpt", ["classify", "--ckpt", "{qat}", "{notimage}"], 1, ["--ckpt", QAT_PTQ, "INT8 model instead (int8_model.pt"]),
    Case("classify ckpt of another architecture", ["classify", "--ckpt", "{mismatch}", "--data", "{zip}"], 1, ["another architecture"]),
    Case("classify top-k 0", [*CLASSIFY, "--top-k", "0"], 2, ["--top-k must be >= 1, got 0"]),
    Case("classify batch-size 0", [*CLASSIFY, "--batch-size", "0"], 2, ["--batch-size must be >= 1, got 0"]),
    Case("classify unknown device", [*CLASSIFY, "--device", "gpu0"], 2, ["--device 'gpu0' is not a torch device"]),
    Case("classify no inputs", ["classify", "--ckpt", "{ckpt}"], 2, ["give image files or folders", "--data DATA"]),
    Case("classify missing image", ["classify", "--ckpt", "{ckpt}", "nope.png"], 2, ["'nope.png' does not exist"]),
    Case("classify empty folder", ["classify", "--ckpt", "{ckpt}", "{emptydir}"], 2, ["holds no image files"]),
    Case("classify not an image", ["classify", "--ckpt", "{ckpt}", "{notimage}"], 1, ["notimage.png' is not an image file"]),
    Case("classify missing data", ["classify", "--ckpt", "{ckpt}", "--data", "nowhere.zip"], 2, ["--data 'nowhere.zip' does not exist"]),
    Case("classify data bad CRC", ["classify", "--ckpt", "{ckpt}", "--data", "{badcrc}"], 1, ["--data", "CRC"]),
    Case("classify text ckpt", ["classify", "--ckpt", "{text}", "{notimage}"], 1, ["--ckpt", "text.ckpt' is not a checkpoint"]),
    # lit-kd export
    Case(
        "export YAML syntax error in config",
        [*EXPORT, "--config", "{broken}"],
        1,
        ["--config", "broken.yaml' is not valid YAML (line 3, column 1): expected ',' or ']'"],
    ),
    Case("export config not a mapping", [*EXPORT, "--config", "{list.yaml}"], 1, ["--config", "holds no mapping"]),
    Case("export missing config", [*EXPORT, "--config", "nope.yaml"], 2, ["--config: config 'nope.yaml' does not exist"]),
    Case(
        "export config of another architecture",
        [*EXPORT, "--config", "{cfg8}", "--ckpt", "{w20}"],
        1,
        ["--ckpt / --config", "does not fit CifarResNet"],
    ),
    Case(
        "export torch.ao QAT ckpt",
        ["export", "--ckpt", "{qat}", "--out", "m.onnx", "--data", "{zip}"],
        1,
        ["--ckpt", "torch.ao FX) checkpoint cannot be exported"],
    ),
    Case(
        "export text ckpt",
        ["export", "--ckpt", "{text}", "--out", "m.onnx", "--data", "{zip}"],
        1,
        ["--ckpt", "text.ckpt' is not a checkpoint"],
    ),
    Case("export images 0", [*EXPORT, "--images", "0"], 2, ["--images must be >= 1, got 0"]),
    Case("export cores 0", [*EXPORT, "--cores", "0"], 2, ["--cores must be >= 1, got 0"]),
    Case("export opset 5", [*EXPORT, "--opset", "5"], 2, ["--opset must be from 7 to 20", "got 5"]),
    Case(
        "export missing data",
        ["export", "--ckpt", "{ckpt}", "--out", "m.onnx", "--data", "nowhere"],
        2,
        ["--data 'nowhere' does not exist"],
    ),
    Case("export data bad CRC", ["export", "--ckpt", "{ckpt}", "--out", "m.onnx", "--data", "{badcrc}"], 1, ["--data", "CRC"]),
    # lit-kd bench
    Case(
        "bench a file that is not ONNX",
        ["bench", "--baseline", "{notonnx}"],
        1,
        ["--baseline", "notonnx.onnx' is not a valid ONNX model", "lit-kd export"],
    ),
    Case("bench an empty ONNX file", ["bench", "--sparse", "{empty}"], 1, ["--sparse", "is not a valid ONNX model"]),
    Case("bench ONNX without 'input'", ["bench", "--baseline", "{onnx_x}"], 1, ["--baseline", "takes inputs ['x']", "named 'input'"]),
    Case("bench missing ONNX", ["bench", "--baseline", "nope.onnx"], 2, ["--baseline: ONNX model 'nope.onnx' does not exist"]),
    Case("bench no model", ["bench"], 2, ["give at least one ONNX model"]),
    Case("bench an IR without its .bin", ["bench", "--int8", "{nobin}"], 1, ["--int8", "has no weights file 'nobin.bin' beside it"]),
    Case("bench --int8 not ONNX", ["bench", "--int8", "{notonnx}"], 1, ["--int8", "notonnx.onnx' is not a valid ONNX model"]),
    Case("bench cores 0", [*BENCH, "--cores", "0"], 2, ["--cores must be >= 1, got 0"]),
    Case("bench warmup negative", [*BENCH, "--warmup", "-1"], 2, ["--warmup must be >= 0, got -1"]),
    Case("bench QAT ckpt", [*BENCH, "--ckpt", "{qat}"], 1, ["--ckpt", QAT_PTQ, "Give the dense checkpoint"]),
    Case("bench text ckpt", [*BENCH, "--ckpt", "{text}"], 1, ["--ckpt", "text.ckpt' is not a checkpoint"]),
    # lit-kd study
    Case("study missing file", ["study", "nope.yaml", "--dry-run"], 2, ["study file '", "nope.yaml' does not exist"]),
    Case("study YAML syntax error", ["study", "{broken}", "--dry-run"], 2, ["broken.yaml: not valid YAML"]),
    Case("study --use without '='", ["study", "{broken}", "--use", "teacher"], 2, ["--use takes STAGE=FILE pairs"]),
    # LightningCLI
    Case(
        "fit YAML syntax error",
        ["fit", "--config", "{broken}"],
        2,
        ["lit-kd fit: error: --config", "broken.yaml' is not valid YAML (line 3, column 1): expected ',' or ']'"],
    ),
    Case(
        "test --ckpt_path of another structure",
        ["test", "--config", "{cfg_qat}", "--ckpt_path", "{float_run}"],
        1,
        ["lit-kd test: error: --ckpt_path", "float_run.ckpt: the checkpoint does not fit", "missing key(s)", "holds a float one"],
    ),
    Case(
        "test --ckpt_path of a QAT run under a float config",
        ["test", "--config", "{cfg8}", "--ckpt_path", "{qat_run}"],
        1,
        ["lit-kd test: error: --ckpt_path", "qat_run.ckpt: the checkpoint does not fit", "unexpected key(s)", "holds a QAT network"],
    ),
    Case(
        "test --ckpt_path of no Lightning checkpoint",
        ["test", "--config", "{cfg8}", "--ckpt_path", "{qat}"],
        1,
        ["--ckpt_path", "qat.ckpt is no Lightning checkpoint (it lacks 'pytorch-lightning_version')"],
    ),
    Case("test --ckpt_path of a text file", ["test", "--config", "{cfg8}", "--ckpt_path", "{text}"], 1, ["--ckpt_path:", "text.ckpt"]),
]

# The interpreter's handling of what main() ends with, per case, in a fresh run directory; fds 1 and 2 captured.
RUNNER = r"""
import json, os, sys, tempfile, traceback
from lit_kd.cli import main

cases, results = json.load(open(sys.argv[1])), {}
for case in cases:
    os.chdir(case["cwd"])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            main(case["argv"])
            status = 0
        except SystemExit as exc:
            status = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        out.seek(0); err.seek(0)
        results[case["id"]] = {"status": status, "stdout": out.read().decode(errors="replace"),
                               "stderr": err.read().decode(errors="replace")}
json.dump(results, open(sys.argv[2], "w"))
"""


def fill(text: str, bad: dict) -> str:
    for name, value in bad.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones too), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LIT_KD_TRUST_CHECKPOINTS", "LIT_KD_CIFAR10")}
    return env | {"PYTHONUNBUFFERED": "1", "NM_DISABLE_ANALYTICS": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def outcomes(bad, tmp_path_factory) -> dict:
    """Every case run once (one child process); per case its status, output and whether its run directory changed."""
    root = tmp_path_factory.mktemp("runs")
    inputs_before = snapshot(bad["root"])
    cases = []
    for i, case in enumerate(CASES):
        cwd = root / f"case{i:02d}"
        cwd.mkdir()
        (cwd / "keep.txt").write_text("a file the run must leave alone\n")
        cases.append({"id": case.id, "argv": [fill(a, bad) for a in case.argv], "cwd": str(cwd)})
    (root / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(root / "cases.json"), str(root / "results.json")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads((root / "results.json").read_text())
    for case in cases:
        after = snapshot(Path(case["cwd"]))
        results[case["id"]]["changed"] = sorted(set(after) ^ {"keep.txt"}) or (
            [] if after.get("keep.txt") == hashlib.sha256(b"a file the run must leave alone\n").hexdigest() else ["keep.txt"]
        )
    results["_inputs_changed"] = snapshot(bad["root"]) != inputs_before
    return results


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line or line.startswith("error")]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_a_bad_command_line_gets_one_clear_error(case: Case, outcomes, bad):
    got = outcomes[case.id]
    output = got["stdout"] + got["stderr"]
    assert "Traceback" not in output, output[-3000:]
    assert got["status"] == case.status, output[-3000:]
    lines = error_lines(got["stderr"])
    assert len(lines) == 1, output[-3000:]
    line = " ".join(lines[0].split())
    for text in case.says:
        assert " ".join(fill(text, bad).split()) in line, line
    assert len(line) <= MAX_MESSAGE, line
    assert got["changed"] == [], f"the run changed {got['changed']} in its run directory"


def test_no_input_file_changed(outcomes):
    assert outcomes["_inputs_changed"] is False


def test_the_runner_matches_the_console_script(outcomes, bad, tmp_path):
    """Two cases again through the installed ``lit-kd`` script: the same status and the same error line."""
    for case in (c for c in CASES if c.id in ("ptq calib-batches negative", "classify QAT ckpt")):
        proc = subprocess.run(
            [str(LIT_KD), *(fill(a, bad) for a in case.argv)], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == outcomes[case.id]["status"] == case.status
        assert error_lines(proc.stderr) == error_lines(outcomes[case.id]["stderr"])
        assert "Traceback" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ Python entry points


def _quantize(model="resnet8", calib=None, **kwargs):
    import torch.nn as nn

    from lit_kd.models import build_model
    from lit_kd.quant.ptq import quantize

    network = {"resnet8": lambda: build_model("resnet8"), "relu": nn.ReLU}.get(model, lambda: model)()
    return quantize(network, [torch.randn(4, 3, 32, 32)] if calib is None else calib, **kwargs)


def _loss(*terms, **kwargs):
    from lit_kd.losses import DistillationLoss, build_term

    return DistillationLoss([build_term(t) if isinstance(t, str) else build_term(t[0], pairs=t[1]) for t in terms], **kwargs)


def _term(name, **kwargs):
    from lit_kd.losses import build_term

    return build_term(name, **kwargs)


def _data(data_dir="{zip}", setup=True, **kwargs):
    from lit_kd.data import CIFAR10DataModule

    module = CIFAR10DataModule(data_dir, **kwargs)
    if setup:
        module.setup()
    return module


def _recipe(recipe):
    from lit_kd.sparse.recipe import read_recipe

    return read_recipe(recipe)


def _load(path):
    from lit_kd.checkpoints import load_network

    return load_network(path)


ENTRY_POINTS = [
    # quantize
    ("quantize a model without parameters", lambda b: _quantize("relu"), ValueError, "ReLU has no parameters"),
    ("quantize not a model", lambda b: _quantize("resnet9"), TypeError, "model must be an nn.Module, got str"),
    ("quantize empty calibration data", lambda b: _quantize(calib=[]), ValueError, "calibration data is empty"),
    (
        "quantize calibration of another shape",
        lambda b: _quantize(calib=[torch.randn(2, 1, 32, 32)]),
        ValueError,
        r"calibration batches of shape \(2, 1, 32, 32\) do not fit CifarResNet",
    ),
    ("quantize weight bits 1", lambda b: _quantize(weight_bits=1), ValueError, "weight bit width must be an integer from 2 to 16, got 1"),
    ("quantize act bits 17", lambda b: _quantize(act_bits=17), ValueError, "activation bit width must be an integer from 2 to 16, got 17"),
    ("quantize calib_batches 0", lambda b: _quantize(calib_batches=0), ValueError, "calib_batches must be an integer >= 1, got 0"),
    ("quantize calib_batches negative", lambda b: _quantize(calib_batches=-1), ValueError, "calib_batches must be an integer >= 1"),
    ("quantize unknown observer", lambda b: _quantize(observer="minmaxx"), ValueError, "unknown observer 'minmaxx'"),
    ("quantize unknown rounding", lambda b: _quantize(rounding="up"), ValueError, "unknown rounding 'up'"),
    (
        "quantize layer widths of unknown layers",
        lambda b: _quantize(weight_bits={"default": 8, "fc2": 4}),
        ValueError,
        r"weight bit width: \['fc2'\] are not quantizable layers",
    ),
    # losses
    ("dkd temperature 0", lambda b: _term("dkd", temperature=0), ValueError, "dkd temperature must be a finite number > 0, got 0"),
    ("soft_ce temperature negative", lambda b: _term("soft_ce", temperature=-2.0), ValueError, "soft_ce temperature must be"),
    ("dkd beta negative", lambda b: _term("dkd", beta=-1), ValueError, "dkd beta must be a finite number >= 0"),
    ("ce label smoothing 1.5", lambda b: _term("ce", label_smoothing=1.5), ValueError, r"ce label_smoothing must be in \[0, 1\]"),
    ("unknown loss term", lambda b: _term("kd"), ValueError, "unknown loss term 'kd'"),
    ("misspelled term option", lambda b: _term("soft_ce", temprature=2), TypeError, "loss term 'soft_ce' has no option 'temprature'"),
    ("feature pair not a pair", lambda b: _term("cosine", pairs=["layer1"]), ValueError, "a feature pair is .student module path"),
    (
        "misspelled weight starting with a term name",
        lambda b: _loss("ce", "soft_ce", reduction="sum", weights={"soft_ce_weight": 2}),
        ValueError,
        r"weights name unknown terms or summands \['soft_ce_weight'\]",
    ),
    (
        "weight of a pair that is not there",
        lambda b: _loss(("feature_mse", [("layer1", "layer1")]), reduction="sum", weights={"feature_mse_layer2": 2}),
        ValueError,
        "feature_mse_layer1",
    ),
    (
        "weight not a number",
        lambda b: _loss("ce", reduction="sum", weights={"ce": "high"}),
        ValueError,
        "weight of 'ce' must be a finite number",
    ),
    ("unknown reduction", lambda b: _loss("ce", reduction="avg"), ValueError, "reduction must be 'mean'"),
    (
        "terms that are not LossTerms",
        lambda b: __import__("lit_kd.losses").losses.DistillationLoss(["ce"]),
        TypeError,
        "terms must be LossTerm",
    ),
    # CIFAR10DataModule
    ("data batch_size 0", lambda b: _data(batch_size=0, setup=False), ValueError, "batch sizes must be >= 1"),
    ("data train_size 0", lambda b: _data(train_size=0, setup=False), ValueError, "train_size must be >= 1"),
    ("data num_workers negative", lambda b: _data(num_workers=-1, setup=False), ValueError, "num_workers must be >= 0"),
    ("data val_split negative", lambda b: _data(val_split=-5, setup=False), ValueError, "val_split must be 0"),
    ("data val_split too large", lambda b: _data(b["zip"], val_split=240), ValueError, "val_split=240 leaves no training images"),
    ("data train_size too large", lambda b: _data(b["zip"], train_size=1000), ValueError, r"train_size must be in 1\.\.240"),
    ("data missing", lambda b: _data(b["root"] / "nowhere"), FileNotFoundError, "nowhere' does not exist"),
    ("data not a zip", lambda b: _data(b["notzip"]), ValueError, "notzip.zip' is not a valid zip file"),
    ("data a file but not a zip", lambda b: _data(b["data"]), ValueError, "data.tar' is a file but not a .zip"),
    ("data zip member with a bad CRC", lambda b: _data(b["badcrc"]), ValueError, "cannot be read: Bad CRC-32 .*the zip is damaged"),
    ("data not a path", lambda b: _data(42, setup=False), TypeError, "data_dir must be a path, got int"),
    # read_recipe
    (
        "recipe path without a recipe suffix",
        lambda b: _recipe(str(b["recipe"])),
        ValueError,
        "recipe.txt' is a file without a recipe suffix",
    ),
    ("recipe name that is neither", lambda b: _recipe("gmp_recipe"), ValueError, "'gmp_recipe' is neither a recipe file"),
    ("recipe file missing", lambda b: _recipe(str(b["root"] / "nope.yaml")), FileNotFoundError, "nope.yaml' does not exist"),
    (
        "recipe YAML syntax error",
        lambda b: _recipe(str(b["broken"])),
        ValueError,
        r"recipe .*broken.yaml does not parse \(line 3\): expected ',' or '\]', but got '<stream end>'$",
    ),
    ("recipe that is a list", lambda b: _recipe("- a\n- b\n"), ValueError, "expected a mapping with modifiers"),
    ("recipe not text", lambda b: _recipe(3), TypeError, "recipe must be a file path or inline YAML text, got int"),
    # load_network
    ("load_network missing file", lambda b: _load(b["root"] / "nope.ckpt"), FileNotFoundError, "nope.ckpt' does not exist"),
    ("load_network empty file", lambda b: _load(b["empty"]), ValueError, "empty.ckpt' could not be read"),
    ("load_network text file", lambda b: _load(b["text"]), ValueError, "text.ckpt' (could not be read|is not a checkpoint)"),
    ("load_network a list", lambda b: _load(b["list"]), ValueError, "holds a list, not a checkpoint"),
    ("load_network another architecture", lambda b: _load(b["mismatch"]), ValueError, "does not fit CifarResNet .*another architecture"),
    ("load_network unknown architecture", lambda b: _load(b["unknown_arch"]), ValueError, "unknown model 'resnet9'"),
]
ENTRY_POINTS.append(("load_network QAT checkpoint", lambda b: _load(b["qat"]), ValueError, "QAT|quantization-aware"))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [pytest.param(call, error, match, id=name) for name, call, error, match in ENTRY_POINTS],
)
def test_a_bad_argument_to_an_entry_point_is_named(call, error, match, bad):
    with pytest.raises(error, match=match):
        call(bad)
