"""DeepSparse's own benchmark (``deepsparse.benchmark``) run by the bench stage and by ``lit-kd bench
--deepsparse-benchmark``: its rows (median and range over repetitions) in the bench JSON on disk, in results.json's
speed record and in the rendered speed section beside lit-kd's own rows, each model's accuracy beside its speed; and
what the section says where deepsparse is not installed."""

from __future__ import annotations

import json

import pytest

from lit_kd.study.kinds import KINDS
from lit_kd.study.kinds.step import StepError
from lit_kd.study.results import Results, SpeedRow

ROW = {"batch": 32, "iterations": 5, "latency_ms_median": 10.0, "latency_ms_p90": 11.0, "images_per_s": 3200.0}
MACHINE = {"cpu": "CPU", "isa": "avx2", "vnni": False, "cores_used": 2, "load_average_1min": 0.5}


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory) -> dict[str, str]:
    """A dense resnet8 and its 75 % pruned-quantized version as ONNX files (benchmarks/sparse_speed.py's models)."""
    from benchmarks.sparse_speed import synthetic_models

    files, _ = synthetic_models("resnet8", 0.75, tmp_path_factory.mktemp("onnx"))
    return files


def check_benchmark_rows(own: dict, files: dict[str, str], cores: int, repetitions: int) -> None:
    assert own["installed"] and own["repetitions"] == repetitions and own["seconds"] == 1 and own["warmup"] == 0
    assert {(r["model"], r["batch"]) for r in own["rows"]} == {(m, b) for m in files for b in (1, 32)}
    for r in own["rows"]:
        assert r["runtime"] == "deepsparse.benchmark" and r["repetitions"] == repetitions and r["iterations"] >= repetitions
        assert 0 < r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert 0 < r["latency_ms_min"] <= r["latency_ms_median"] <= r["latency_ms_max"]
        path = files[r["model"]]
        assert r["command"] == f"deepsparse.benchmark {path} --batch_size {r['batch']} --num_cores {cores} --scenario sync -t 1 -w 0"


@pytest.mark.sparse
def test_bench_stage_runs_deepsparse_benchmark_and_reports_it_beside_its_own_rows(tmp_path, onnx_pair):
    from lit_kd.study.kinds.base import ReportInput
    from lit_kd.study.render import to_markdown

    settings = {"baseline": onnx_pair["dense fp32"], "sparse": onnx_pair["pruned-quantized"], "engines": ["onnxruntime"], "cores": 1}
    settings |= {"warmup": 0, "iterations_b1": 2, "iterations_b32": 1, "deepsparse_benchmark": True}
    settings |= {"benchmark_seconds": 1, "benchmark_warmup": 0, "benchmark_repetitions": 2, "out": str(tmp_path / "bench.json")}
    KINDS["bench"].call(settings)
    result = json.loads((tmp_path / "bench.json").read_text())  # the file the stage wrote, read back
    check_benchmark_rows(result["deepsparse_benchmark"], onnx_pair, cores=1, repetitions=2)
    export = {"precision": "fp32", "weight_sparsity": 0.0}
    manifests = {
        f"export_{key}": {
            "kind": "export",
            "outputs": {"onnx": path},
            "metrics": {**export, "validation": {"onnxruntime": {"acc": acc, "agreement": 1.0}}},
        }
        for key, path, acc in (("dense", onnx_pair["dense fp32"], 0.9012), ("sparse", onnx_pair["pruned-quantized"], 0.8151))
    }
    manifests["bench"] = {"kind": "bench", "metrics": result, "inputs": {"settings": {"bench": settings}}}
    results = Results(study="s.yaml", description="")
    rep = ReportInput(study=None, out=tmp_path, manifests=manifests, settings={}, results=results)
    [(_, section)] = KINDS["bench"].report(rep)
    text = to_markdown("report", [section], tmp_path)
    own = {(r.model, r.batch): r for r in results.speed.rows if r.runtime == "deepsparse.benchmark"}
    loop = [r for r in results.speed.rows if r.runtime == "onnxruntime"]
    assert len(own) == 4 and len(loop) == 4  # both in one record, lit-kd's rows first
    accuracy = {"dense fp32": "90.12 %", "pruned-quantized": "81.51 %"}
    for r in result["deepsparse_benchmark"]["rows"]:
        record = own[r["model"], r["batch"]]
        assert record.images_per_s_min == r["images_per_s_min"] and record.accuracy == {"dense fp32": 0.9012}.get(r["model"], 0.8151)
        cells = [
            f"{r['model']} ({accuracy[r['model']]})",
            "deepsparse.benchmark, 2 x 1 s",
            str(r["batch"]),
            f"{r['latency_ms_median']:.2f} ({r['latency_ms_min']:.2f}-{r['latency_ms_max']:.2f})",
            f"{r['images_per_s']:.0f} ({r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f})",
        ]
        assert "| " + " | ".join(cells) + " |" in text
        assert r["command"] in text  # the command each run is equivalent to
    assert all(f"| {r.model} ({accuracy[r.model]}) | onnxruntime | {r.batch} |" in text for r in loop)
    assert "2 runs per row of 1 s after 0 s of warm-up" in text
    assert Results.from_dict(results.to_dict()).speed.rows[-1].repetitions == 2  # results.json reads back


@pytest.mark.sparse
def test_bench_command_runs_deepsparse_benchmark_when_asked(tmp_path, onnx_pair):
    from lit_kd.cli import main

    out = tmp_path / "b.json"
    base = ["bench", "--baseline", onnx_pair["dense fp32"], "--engines", "onnxruntime", "--cores", "1", "--warmup", "0"]
    base += ["--iterations-b1", "2", "--iterations-b32", "1", "--out", str(out)]
    main(base)
    assert "deepsparse_benchmark" not in json.loads(out.read_text())  # opt-in
    main([*base, "--deepsparse-benchmark", "--benchmark-seconds", "1", "--benchmark-warmup", "0", "--benchmark-repetitions", "2"])
    check_benchmark_rows(json.loads(out.read_text())["deepsparse_benchmark"], {"dense fp32": onnx_pair["dense fp32"]}, 1, 2)


def test_without_deepsparse_the_section_says_not_installed(tmp_path, monkeypatch):
    from lit_kd import deepsparse_benchmark
    from lit_kd.study.kinds.base import ReportInput
    from lit_kd.study.render import to_markdown

    monkeypatch.setattr(deepsparse_benchmark, "installed", lambda package: False)
    own = deepsparse_benchmark.run_deepsparse_benchmark({"dense fp32": "m.onnx"}, 1, 1, 0, 2)
    assert own == {"installed": False}
    metrics = {"rows": [{"model": "dense fp32", "runtime": "onnxruntime", **ROW}], "ratios": {}, "machine": MACHINE}
    metrics |= {"deepsparse_benchmark_commands": ["deepsparse.benchmark m.onnx --batch_size 1"], "deepsparse_benchmark": own}
    results = Results(study="s.yaml", description="")
    rep = ReportInput(study=None, out=tmp_path, manifests={"b": {"kind": "bench", "metrics": metrics}}, settings={}, results=results)
    [(_, section)] = KINDS["bench"].report(rep)
    text = to_markdown("report", [section], tmp_path)
    assert "| dense fp32 | deepsparse.benchmark | - | not installed | not installed |" in text
    assert "DeepSparse's own benchmark was not run by this stage (deepsparse is not installed)" in text
    assert [r.runtime for r in results.speed.rows] == ["onnxruntime"]


def test_speed_rows_name_accuracy_and_range_only_where_recorded():
    from lit_kd.study.kinds.bench import speed_row

    plain = SpeedRow(model="dense int8", runtime="pytorch int8 (fx, x86)", **ROW)
    assert speed_row(plain) == ["dense int8", "pytorch int8 (fx, x86)", "32", "10.00", "3200"]  # as results.json before them
    spread = {"repetitions": 5, "seconds": 3, "images_per_s_min": 3100.4, "images_per_s_max": 3350.6, "latency_ms_min": 9.5}
    repeated = SpeedRow(model="pruned-quantized", runtime="deepsparse.benchmark", accuracy=0.8151, latency_ms_max=10.25, **ROW, **spread)
    assert speed_row(repeated) == [
        "pruned-quantized (81.51 %)",
        "deepsparse.benchmark, 5 x 3 s",
        "32",
        "10.00 (9.50-10.25)",
        "3200 (3100-3351)",
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("benchmark_repetitions", 0, "lit-kd bench: error: --benchmark-repetitions must be >= 1, got 0"),
        ("benchmark_seconds", 0, "lit-kd bench: error: --benchmark-seconds must be >= 1, got 0"),
        ("benchmark_warmup", -1, "lit-kd bench: error: --benchmark-warmup must be >= 0, got -1"),
    ],
)
def test_bench_stage_refuses_bad_benchmark_settings(name, value, message):
    with pytest.raises(StepError) as err:
        KINDS["bench"].call({"out": "o", "baseline": "m.onnx", "deepsparse_benchmark": True, name: value})
    assert str(err.value) == message


@pytest.mark.sparse
def test_the_sparse_file_is_labelled_by_what_it_holds(tmp_path, onnx_pair):
    """A pruned float file given as --sparse (ResNet-18 pruned to 100,000 parameters) is timed and compared as
    "pruned fp32", never called pruned-quantized; the QDQ file keeps that name."""
    from lit_kd import speed

    assert speed.sparse_label(onnx_pair["pruned-quantized"]) == "pruned-quantized"
    assert speed.sparse_label(onnx_pair["dense fp32"]) == "pruned fp32"
    settings = {"baseline": onnx_pair["dense fp32"], "sparse": onnx_pair["dense fp32"], "engines": ["deepsparse", "onnxruntime"]}
    settings |= {"cores": 1, "warmup": 0, "iterations_b1": 1, "iterations_b32": 1, "out": str(tmp_path / "bench.json")}
    KINDS["bench"].call(settings)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {r["model"] for r in result["rows"]} == {"dense fp32", "pruned fp32"}
    assert "deepsparse pruned fp32 vs onnxruntime dense fp32, batch 32" in result["ratios"]
