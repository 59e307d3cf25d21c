"""The ptq kind's report on a real study stage: ``lit-kd ptq --engine ours nncf --export-dir models`` on the resnet8
fixture checkpoint, then the report. NNCF's rows sit beside ours and PyTorch's with readable labels and a kernels
column, the deployable files (written in the stage folder) get a table of their own, the headline gains an NNCF row,
and without the ``openvino`` extra the stage still runs and says "not installed"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from lit_kd.study.kinds.ptq import ptq_rows
from lit_kd.study.render import pct
from lit_kd.study.results import PtqRow, Results
from tests.test_results_schema import check_results_file

PTQ = {"bits": [8], "first_last_8bit": "no", "calib_batches": 1, "batch_size": 32, "engine": ["ours", "nncf"], "export_dir": "models"}
# the engine and kernels columns of each runtime lit-kd ptq writes, and NNCF's methods in words
LABELS = {
    "fp32": ["FP32", "float32"],
    "pytorch": ["PyTorch", "real INT8 kernels"],
    "openvino": ["NNCF (OpenVINO)", "real INT8 kernels"],
    "ours": ["ours", "simulated (fake-quant)"],
    "ours int": ["ours", "integer arithmetic (int8 matmul)"],
}
NNCF_METHODS = {
    "nncf mixed": "mixed preset",
    "nncf mixed + accuracy control (<= 1.00 pts)": "mixed preset + accuracy control, budget 1.00 points",
}


def run_study(root: Path, ckpt: Path, data: Path, ptq: dict) -> Path:
    import torch

    from lit_kd.commands import study as study_command

    torch.use_deterministic_algorithms(False)  # the fixture checkpoint's Trainer(deterministic=True) may just have run here
    study = {"validation_images": 60, "stages": {"ptq": {"ptq": {"ckpt": str(ckpt), **ptq}}, "report": {"report": {}}}}
    path = root / "study.yaml"  # protocol held_out on 60 of the fixture's 240 training images
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    assert study_command.main([str(path), "--out", str(root / "out"), "--data", str(data)]) == 0
    return root / "out"


def tables(report: str, section: str) -> list[list[list[str]]]:
    """The Markdown tables of a report section, each a list of rows of cells (header first, separator left out)."""
    text = report.split(f"## {section}\n")[1].split("\n## ")[0]
    found, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            found, current = [*found, current], []
    return found


@pytest.fixture(scope="module")
def nncf_study(trained_ckpt, tiny_zip, tmp_path_factory) -> tuple[Path, dict, str]:
    """The study's folder, its ptq stage's JSON and its report.md (NNCF mixed, and with accuracy control on 60
    held-out training images)."""
    settings = {**PTQ, "nncf_preset": ["mixed"], "nncf_max_drop": 1.0}
    out = run_study(tmp_path_factory.mktemp("ptq_report"), trained_ckpt, tiny_zip, settings)
    return out, json.loads((out / "ptq" / "ptq.json").read_text()), (out / "report.md").read_text()


def test_nncf_rows_sit_beside_ours_and_pytorch_with_their_kernels(nncf_study):
    _, result, report = nncf_study
    table = tables(report, "Post-training quantization (ptq)")[0]
    header = ["engine", "kernels", "bits", "method", "granularity", "first/last 8-bit", "test accuracy", "drop (points)"]
    assert table[0] == [*header, "same top-1 as FP32", "accuracy on 60 held-out images"]
    fp32 = result["fp32_acc"]
    expected = [
        [*LABELS[r["runtime"]], f"W{r['weight_bits']}A{r['act_bits']}", NNCF_METHODS.get(r["method"], r["method"]), r["granularity"], "no",
         pct(r["acc"]), f"{100 * (fp32 - r['acc']):.2f}", pct(r["agree_fp32"]), pct(r["held_out_acc"])]
        for r in result["rows"]
    ]  # fmt: skip
    assert table[1:] == expected
    assert [r["runtime"] for r in result["rows"]] == ["fp32", "pytorch", "openvino", "openvino", "ours", "ours int"]
    assert [row[3] for row in table[3:5]] == ["mixed preset", "mixed preset + accuracy control, budget 1.00 points"]
    assert "60 test images" in report and "NNCF's accuracy control validates on 60 other training images" in report


def test_the_deployable_files_get_their_own_table_relative_to_the_report(nncf_study):
    out, result, report = nncf_study
    files = tables(report, "Post-training quantization (ptq)")[1]
    assert files[0] == ["file", "engine", "kernels", "from row", "test accuracy", "row's test accuracy", "same top-1 as its row"]
    names = ["pytorch_int8.pt2", "nncf_mixed.xml", "nncf_mixed_accuracy_control.xml", "ours_w8a8.onnx", "ours_w8a8.xml"]
    assert [row[0] for row in files[1:]] == [f"`ptq/models/{n}`" for n in names]  # export_dir: models is in the stage folder
    assert all((out / "ptq" / "models" / n).is_file() for n in names)
    engines = ["PyTorch (PT2E program)", "OpenVINO", "OpenVINO", "ONNX Runtime", "OpenVINO"]
    assert [row[1] for row in files[1:]] == engines and {row[2] for row in files[1:]} == {"real INT8 kernels"}
    assert files[2][3] == "NNCF (OpenVINO) W8A8 mixed preset" and files[4][3] == "ours W8A8 minmax"
    for row, d in zip(files[1:], result["deployables"], strict=True):
        assert row[4:] == [pct(d["acc"]), pct(d["row_acc"]), pct(d["agree_row"])]
    # results.json: the same files, relative, valid against the shipped schema
    check_results_file(out / "results.json")
    records = Results.load(out / "results.json").ptq_files["ptq"]
    assert [r.file for r in records] == [f"ptq/models/{n}" for n in names] and records[1].agree_row == result["deployables"][1]["agree_row"]
    manifest = json.loads((out / "ptq" / "manifest.json").read_text())
    assert f"--export-dir {out / 'ptq' / 'models'}" in manifest["command"]  # the recorded command writes where the stage did


def test_the_headline_names_the_best_nncf_row_with_its_preset(nncf_study):
    out, result, report = nncf_study
    fp32 = result["fp32_acc"]
    nncf = [r for r in result["rows"] if r["runtime"] == "openvino"]
    best = max(nncf, key=lambda r: r["held_out_acc"])  # protocol held_out: chosen on held-out images
    findings = {f["what"]: f for f in json.loads((out / "results.json").read_text())["findings"]}
    what = f"NNCF INT8 PTQ `ptq` ({NNCF_METHODS[best['method']]}, per-channel; best of 2 on 60 held-out training images), real INT8 kernels"
    assert findings[what]["result"] == pct(best["acc"])
    assert findings[what]["compared with"].startswith(f"{100 * (best['acc'] - fp32):+.2f} points vs FP32 {pct(fp32)}")
    assert f"| {what} | {pct(best['acc'])} |" in report
    pytorch = next(r for r in result["rows"] if r["runtime"] == "pytorch")
    assert findings["PyTorch INT8 PTQ `ptq` (pt2e x86 histogram, per-channel), real INT8 kernels"]["result"] == pct(pytorch["acc"])
    ours = next(r for r in result["rows"] if r["runtime"] == "ours")
    assert findings["Our PTQ W8A8 `ptq` (minmax, per-channel), simulated (fake-quant)"]["result"] == pct(ours["acc"])


def test_the_pytorch_row_takes_either_flow():
    def row(runtime, method, acc, bits=8):
        return PtqRow(runtime=runtime, weight_bits=bits, act_bits=bits, method=method, granularity="per_channel", first_last_8bit=False,
                      acc=acc, agree_fp32=1.0, drop=0.91 - acc)  # fmt: skip

    rows = [row("fp32", "-", 0.91, 32), row("pytorch", "fx x86 histogram", 0.905), row("pytorch", "pt2e x86 histogram", 0.9075)]
    (pytorch,) = [r for r in ptq_rows(Results(study="s.yaml", description="", ptq={"p": rows})) if r[0].startswith("PyTorch")]
    assert pytorch == ("PyTorch INT8 PTQ `p` (pt2e x86 histogram, per-channel; best of 2)", "90.75 %", pytorch[2])
    assert pytorch[2].startswith("-0.25 points vs FP32 91.00 %")


@pytest.fixture
def without_openvino(monkeypatch):
    """``import openvino`` / ``import nncf`` fail and ``find_spec`` finds neither, as where the extra is missing."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("openvino", "nncf")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("openvino", "nncf"):
        monkeypatch.setitem(sys.modules, name, None)


def test_a_study_naming_nncf_without_the_extra_runs_and_says_not_installed(without_openvino, trained_ckpt, tiny_zip, tmp_path):
    out = run_study(tmp_path, trained_ckpt, tiny_zip, {**PTQ, "no_pytorch": True, "first_last_8bit": "yes"})
    result = json.loads((out / "ptq" / "ptq.json").read_text())
    assert result["engines"] == ["ours"] and result["engines_not_installed"] == ["nncf"]
    assert [r["runtime"] for r in result["rows"]] == ["fp32", "ours"]  # the integer-arithmetic row only without first/last 8-bit
    # our W8A8 is written with first/last layers at 8 bits too (the same model at W8A8); no IR without OpenVINO
    assert [Path(d["file"]).name for d in result["deployables"]] == ["ours_w8a8.onnx"]
    table = tables((out / "report.md").read_text(), "Post-training quantization (ptq)")[0]
    assert table[-1] == ["NNCF (OpenVINO)", "-", "-", "not installed", "-", "-", "not installed", "-", "-", "-"]
    assert not [r for r in ptq_rows(Results.load(out / "results.json")) if r[0].startswith("NNCF")]
