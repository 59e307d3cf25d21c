"""The study without its sparse stages (``--without sparse``), end to end through the console script: what a user of
the core alone (no ``sparse`` extra) runs. Runs in both test environments; DeepSparse's columns say "not installed"
exactly where deepsparse is missing."""

from __future__ import annotations

import json

from lit_kd.compat.extras import installed
from lit_kd.study.spec import load_study
from tests.test_results_schema import check_results_file
from tests.test_study import lit_kd, manifests, small_study, teacher_state  # noqa: F401  (teacher_state: a fixture)


def test_study_without_the_sparse_stages_runs_to_a_report(tiny_zip, teacher_state, tmp_path):  # noqa: F811
    study = small_study(tmp_path, teacher_state)
    proc = lit_kd("study", study, "--out", tmp_path / "out", "--data", tiny_zip, "--without", "sparse", cwd=tmp_path)
    assert "left out (--without): sparse, export_sparse, bench" in proc.stdout
    found = manifests(tmp_path / "out")
    assert set(found) == set(load_study(study, without=["sparse"]).stages)
    assert all(m["status"] == "done" for m in found.values())
    report = (tmp_path / "out" / "report.md").read_text()
    export_row = next(line for line in report.splitlines() if line.startswith("| export_dense |"))
    assert ("not installed" in export_row) == (not installed("deepsparse")), export_row
    validation = found["export_dense"]["metrics"]["validation"]
    assert validation["onnxruntime"]["agreement"] >= 0.995
    assert ("acc" in validation["deepsparse"]) == installed("deepsparse")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert found["qat"]["metrics"]["test_acc"] == results["stages"]["qat"]["metrics"]["test_acc"]
    check_results_file(tmp_path / "out" / "results.json")
    assert all(m["environment"]["code"] for m in found.values() if "environment" in m)
