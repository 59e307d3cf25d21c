"""The stage kinds (lit_kd.study.kinds): one registry, one file per kind, each kind's schema, executor checks,
report section and headline rows on small inputs; and a toy kind registered in a test runs in a study and shows in
its report, which is all that adding a kind takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_kd.atomic import write_json
from lit_kd.study.kinds import KINDS
from lit_kd.study.kinds.base import Context, Kind
from lit_kd.study.kinds.step import StepError, flags
from lit_kd.study.render import Section
from lit_kd.study.results import Results
from lit_kd.study.spec import Stage, StudyError, load_study

KINDS_DIR = Path(__file__).resolve().parents[1] / "lit_kd" / "study" / "kinds"


def write_study(tmp_path: Path, stages: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def test_every_kind_is_one_file_registered_once():
    assert list(KINDS) == ["fit", "weights", "select", "ptq", "export", "bench", "examples", "report"]
    for name, kind in KINDS.items():
        assert kind.name == name and kind.outputs, name
        assert (KINDS_DIR / f"{name}.py").is_file() and type(kind).__module__ == f"lit_kd.study.kinds.{name}"


def test_a_stage_needs_exactly_one_registered_kind(tmp_path):
    with pytest.raises(StudyError, match=r"needs exactly one of the keys \['fit', 'weights', 'select', 'ptq'"):
        load_study(write_study(tmp_path, {"a": {"train": {}}}))
    with pytest.raises(StudyError, match=r"unknown keys \['seeds'\] for a ptq stage"):
        load_study(write_study(tmp_path, {"a": {"ptq": {}, "seeds": [1]}}))


# ------------------------------------------------------------------------------------------------ fit, weights, select
def test_fit_expands_seeds_and_checks_them():
    stages = KINDS["fit"].parse("s", {"fit": "c.yaml", "seeds": [0, 1]}, {"trainer.max_epochs": 2})
    assert [s.name for s in stages] == ["s.seed0", "s.seed1"] and stages[1].seed == 1 and stages[1].group == "s"
    assert stages[1].spec["overrides"] == {"trainer.max_epochs": 2, "seed_everything": 1}
    with pytest.raises(StudyError, match="seeds must be a non-empty list of integers"):
        KINDS["fit"].parse("s", {"fit": "c.yaml", "seeds": []}, {})
    assert KINDS["fit"].settings(stages[0]) == {"fit": "c.yaml", "overrides.trainer.max_epochs": 2, "overrides.seed_everything": 0}


def test_fit_stage_config_applies_overrides_data_and_the_study_logger(tmp_path):
    from lit_kd.study.kinds.fit import stage_config

    (tmp_path / "c.yaml").write_text("trainer: {max_epochs: 9}\ndata: {init_args: {batch_size: 8}}\n")
    study = load_study(write_study(tmp_path, {"s": {"fit": "c.yaml", "overrides": {"trainer.max_epochs": 1}}}))
    stage = study.stages["s"]
    config = stage_config(Context(study, tmp_path / "out", "data.zip"), stage, stage.spec)
    assert config["trainer"]["max_epochs"] == 1  # the default protocol, held_out, validates on 5,000 training images
    assert config["data"]["init_args"] == {"batch_size": 8, "val_split": 5000, "data_dir": "data.zip"}
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "out" / "s")


def test_weights_name_their_architecture_and_file(tmp_path):
    with pytest.raises(StudyError, match="names its architecture"):
        KINDS["weights"].parse("t", {"weights": "w.pt"}, {})
    with pytest.raises(StudyError, match=r"weights: file .* does not exist"):
        load_study(write_study(tmp_path, {"t": {"weights": "missing.pt", "model": "resnet8"}}))


def test_select_takes_the_best_test_accuracy_and_the_first_of_equals(tmp_path):
    manifests = {n: {"metrics": {"test_acc": acc}, "outputs": {"ckpt": f"{n}.ckpt", "config": f"{n}.yaml", "last": "x"}} for n, acc in
                 (("a", 0.5), ("b", 0.7), ("c", 0.7))}  # fmt: skip
    stage = Stage("best", "select", {"select": ["a", "b", "c"]}, needs=["a", "b", "c"])
    ctx = Context(None, tmp_path, "data", progress=lambda line: None, manifests=manifests)
    outputs, metrics, _ = KINDS["select"].run(ctx, stage, {}, "[1/1] best")
    assert metrics["chosen"] == "b" and outputs == {"ckpt": "b.ckpt", "config": "b.yaml"}
    assert KINDS["select"].consumed_stages(stage) == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------ steps
def test_step_flags_are_the_commands_flags():
    assert flags({"bits": [8, 4], "no_pytorch": True, "skip": False, "max_drop": 0.5}) == [
        "--bits",
        "8",
        "4",
        "--no-pytorch",
        "--max-drop",
        "0.5",
    ]


@pytest.mark.parametrize(
    ("kind", "settings", "message"),
    [
        ("ptq", {"data": "d", "out": "o"}, "lit-kd ptq: error: the following arguments are required: --ckpt"),
        ("ptq", {"ckpt": "c", "data": "d", "out": "o", "bitz": [8]}, "lit-kd ptq: error: unrecognized arguments: --bitz"),
        ("export", {"ckpt": "c", "data": "d", "out": "o", "opset": 3}, "lit-kd export: error: --opset must be from"),
        ("export", {"ckpt": "c", "data": "d", "out": "o", "images": 0}, "lit-kd export: error: --images must be >= 1, got 0"),
        ("bench", {"out": "o"}, "lit-kd bench: error: give at least one ONNX model"),
        ("bench", {"out": "o", "baseline": "m.onnx", "warmup": -1}, "lit-kd bench: error: --warmup must be >= 0"),
        ("bench", {"out": "o", "baseline": "m.onnx", "engines": ["tensorrt"]}, "lit-kd bench: error: argument --engines: expected a list"),
    ],
)
def test_steps_refuse_what_their_command_refuses(kind, settings, message):
    with pytest.raises(StepError) as err:
        KINDS[kind].call(settings)
    assert str(err.value).startswith(message)


def test_ptq_section_and_rows_come_from_the_manifest():
    from lit_kd.study.kinds.ptq import ptq_rows, ptq_table

    row = {"weight_bits": 8, "act_bits": 8, "granularity": "per_channel", "first_last_8bit": True, "agree_fp32": 0.99, "seconds": 1.0}
    rows = [
        {**row, "runtime": "fp32", "method": "-", "acc": 0.9},
        {**row, "runtime": "ours", "method": "percentile", "acc": 0.89},
        {**row, "runtime": "pytorch", "method": "pt2e x86 histogram", "first_last_8bit": False, "acc": 0.895},
        {**row, "runtime": "pytorch", "method": "fx x86 histogram", "first_last_8bit": False, "acc": 0.893},
    ]
    manifest = {"metrics": {"fp32_acc": 0.9, "rows": rows, "test_images": 500, "calib_images": 64}}
    table, records = ptq_table(manifest)
    assert table.rows[1][6:8] == ["89.00 %", "1.00"] and records[1].drop == pytest.approx(0.01)
    assert table.rows[1][:2] == ["ours", "simulated (fake-quant)"] and records[1].kernels == "simulated (fake-quant)"
    results = Results(study="s.yaml", description="", ptq={"ptq": records})
    (what, result, compared) = ptq_rows(results)[0]
    assert what.startswith("Our PTQ W8A8 `ptq`") and result == "89.00 %" and compared == "-1.00 points vs FP32 90.00 %"
    # PyTorch's INT8 rows of either flow (PT2E, the default, and FX) make one headline row: the better of them
    (what, result, compared) = ptq_rows(results)[1]
    assert what == "PyTorch INT8 PTQ `ptq` (pt2e x86 histogram, per-channel; best of 2), real INT8 kernels" and result == "89.50 %"
    assert compared == "-0.50 points vs FP32 90.00 %"


def test_export_and_bench_tables_say_what_is_not_installed():
    from lit_kd.study.kinds.bench import speed_table
    from lit_kd.study.kinds.export import export_table

    validation = {"images": 10, "batch_size": 5, "cores": 2, "pytorch": {"acc": 0.9}, "onnxruntime": {"acc": 0.9, "agreement": 1.0}}
    manifests = {
        "e": {
            "kind": "export",
            "metrics": {"precision": "fp32", "weight_sparsity": 0.0, "validation": {**validation, "deepsparse": {"installed": False}}},
        }
    }
    table, records = export_table(manifests)
    assert table.rows[0][-2:] == ["not installed", "not installed"] and records[0].deepsparse == {"installed": False}
    row = {
        "model": "dense fp32",
        "runtime": "onnxruntime",
        "batch": 32,
        "iterations": 5,
        "latency_ms_median": 10.0,
        "latency_ms_p90": 11.0,
        "images_per_s": 3200.0,
    }
    machine = {"cpu": "CPU", "isa": "avx2", "vnni": False, "cores_used": 2, "load_average_1min": 0.5}
    metrics = {"rows": [row], "ratios": {}, "machine": machine, "engines_not_installed": ["deepsparse"]}
    table, record = speed_table({"metrics": metrics})
    assert table.rows == [
        ["dense fp32", "onnxruntime", "32", "10.00", "3200"],
        ["dense fp32", "deepsparse", "-", "not installed", "not installed"],
    ]
    assert record.rows[0].images_per_s == 3200.0


@pytest.mark.openvino
def test_bench_stage_times_its_engines_and_its_section_names_the_fastest(tmp_path):
    """A bench stage with ``engines`` and an ``int8`` file: exactly those engines' rows (the default would add DeepSparse),
    and its section names the fastest engine of each model at batch 1 and 32, the CPU's instruction set and the load."""
    import torch

    from lit_kd import speed
    from lit_kd.models import build_model
    from lit_kd.onnx_export import export_onnx_model
    from lit_kd.quant.ptq import quantize
    from lit_kd.quant.qdq_export import export_qdq
    from lit_kd.study.kinds.base import ReportInput
    from lit_kd.study.render import to_markdown

    torch.manual_seed(0)
    net = build_model("resnet8").eval()
    dense = export_onnx_model(net, tmp_path / "dense.onnx")
    int8 = export_qdq(quantize(net, [torch.randn(8, 3, 32, 32)], 8, 8), tmp_path / "int8.onnx")
    settings = {"baseline": str(dense), "int8": str(int8), "engines": ["onnxruntime", "openvino"], "cores": 1, "warmup": 0}
    result = KINDS["bench"].call({**settings, "iterations_b1": 2, "iterations_b32": 1, "out": str(tmp_path / "bench.json")})
    pairs = {(r["model"], r["runtime"], r["batch"]) for r in result["rows"]}
    assert pairs == {(m, e, b) for m in ("dense fp32", "dense int8 file") for e in ("onnxruntime", "openvino") for b in (1, 32)}
    manifests = {"bench": {"kind": "bench", "metrics": result, "inputs": {}}}
    rep = ReportInput(study=None, out=tmp_path, manifests=manifests, settings={}, results=Results(study="s.yaml", description=""))
    [(_, section)] = KINDS["bench"].report(rep)
    text = to_markdown("report", [section], tmp_path)
    prefix = "Fastest engine per model: "
    line = next(b for b in section.blocks if isinstance(b, str) and b.startswith(prefix))
    named = dict(part.split(": ", 1) for part in line.removeprefix(prefix).removesuffix(".").split("; "))
    assert set(named) == {"dense fp32", "dense int8 file"}
    for model, engines in named.items():
        for batch in (1, 32):
            best = max((r for r in result["rows"] if (r["model"], r["batch"]) == (model, batch)), key=lambda r: r["images_per_s"])
            assert f"{best['runtime']} at batch {batch} ({best['images_per_s']:,.0f} images/s)" in engines
    load = f"load average {result['machine']['load_average_1min']:.2f} at the start, {result['load_average_1min_after']:.2f} at the end"
    assert line in text and speed.isa_text(result["machine"]) in text and load in text


def test_examples_and_report_need_the_stages_before_them(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    study = load_study(write_study(tmp_path, {"t": {"weights": "w.pt", "model": "resnet8"}, "p": {"ptq": {"ckpt": "${t.ckpt}"}},
                                              "ex": {"examples": {}}, "r": {"report": {}}}))  # fmt: skip
    assert study.stages["ex"].needs == ["t"] and study.stages["r"].needs == ["t", "p", "ex"]


def test_examples_table_marks_wrong_predictions():
    from lit_kd.study.kinds.examples import examples_table
    from lit_kd.study.results import ExamplesRecord

    record = ExamplesRecord.from_dict(
        {"indices": [3, 7], "labels": [0, 1], "classes": ["cat", "dog"], "models": {"m": {"predicted": [0, 0], "confidence": [0.9, 0.6]}}}
    )
    assert examples_table(record).rows == [["m", "cat 90 %", "cat 60 % ✗"]]


# ------------------------------------------------------------------------------------------------ a kind of one's own
class Count(Kind):
    """A toy kind: counts the stages before it, reports them in a section of its own and a headline row."""

    name, outputs = "count", ("json",)

    def implicit_needs(self, stage, stages):
        return list(stages)[: list(stages).index(stage.name)]

    def run(self, ctx, stage, settings, label):
        path = write_json(ctx.stage_dir(stage.name) / "count.json", {"stages": len(stage.needs)})
        return {"json": str(path)}, {"stages": len(stage.needs), "word": settings["count"]["word"]}, "count the stages"

    def report(self, rep):
        counts = rep.of_kind("count")
        return [(85, Section("Counted", [f"{n}: {m['metrics']['stages']} {m['metrics']['word']}" for n, m in counts.items()]))]

    def headline_rows(self, results):
        return [(1, (f"Count `{n}`", str(s.metrics["stages"]), "")) for n, s in results.stages.items() if s.kind == "count"]


def test_a_registered_kind_runs_in_a_study_and_shows_in_its_report(tmp_path, tiny_zip, monkeypatch):
    from lit_kd.commands import study as study_command

    monkeypatch.setitem(KINDS, "count", Count())
    (tmp_path / "w.json").write_text("{}")
    path = write_study(tmp_path, {"first": {"count": {"word": "stages"}}, "again": {"count": {"word": "more"}}, "report": {"report": {}}})
    assert study_command.main([str(path), "--out", str(tmp_path / "out"), "--data", str(tiny_zip)]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Counted\n\nfirst: 0 stages\n\nagain: 1 more" in report
    assert report.index("## Key results") < report.index("| Count `first` | 0 |") < report.index("## Counted")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["stages"]["again"]["metrics"] == {"stages": 1, "word": "more"}
    assert results["findings"][0] == {"what": "Count `first`", "result": "0", "compared with": "", "protocol": "held_out"}
    with pytest.raises(StudyError, match="a count stage has outputs \\['json'\\]"):
        load_study(write_study(tmp_path, {"c": {"count": {}}, "p": {"ptq": {"ckpt": "${c.onnx}"}}}))


def test_the_kinds_import_without_torch():
    """The spec imports every kind to check a study file: a broken study file fails before torch loads."""
    import subprocess
    import sys

    code = "import sys, lit_kd.study.spec, lit_kd.study.kinds, lit_kd.study.headline\n"
    code += "print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
