"""results.json as typed records (lit_kd.study.results): the schema shipped in docs/ is the one the code generates,
the shipped results files read into the records and write back unchanged (plus the version), and the records refuse
typos, naming where they are."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_kd.study.records import RecordError, validate
from lit_kd.study.results import VERSION, Results, results_schema

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "results" / "cifar_cpu" / "results.json", ROOT / "results" / "resnet101" / "results.json"]


def check_results_file(path: Path) -> None:
    """A results.json the report wrote: version first, valid against docs/results.schema.json, and exactly what its
    typed records write back."""
    raw = json.loads(path.read_text())
    assert next(iter(raw)) == "version" and raw["version"] == VERSION
    schema = json.loads((ROOT / "docs" / "results.schema.json").read_text())
    validate(raw, schema, schema)
    assert json.dumps(Results.load(path).to_dict()) == json.dumps(raw)


def test_the_shipped_schema_is_the_generated_one():
    shipped = json.loads((ROOT / "docs" / "results.schema.json").read_text())
    assert shipped == results_schema(), "regenerate it: python -m lit_kd.study.results > docs/results.schema.json"
    printed = subprocess.run([sys.executable, "-m", "lit_kd.study.results"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(printed.stdout) == shipped


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_results_read_into_the_records_and_fit_the_schema(path):
    raw = json.loads(path.read_text())
    schema = results_schema()
    validate(raw, schema, schema)
    results = Results.load(path)
    assert results.version == VERSION and results.models and results.distillation
    written = results.to_dict()
    assert written.pop("version") == VERSION
    assert written == raw  # every value kept (files from before the version field have none)


def test_typos_and_missing_keys_are_named_with_their_path():
    raw = json.loads(SHIPPED[0].read_text())
    typo = copy.deepcopy(raw)
    typo["ptq"]["ptq"][1]["acurracy"] = 0.5
    with pytest.raises(RecordError, match=r"ptq\.ptq\[1\]: unknown key 'acurracy'"):
        Results.from_dict(typo)
    missing = copy.deepcopy(raw)
    del missing["models"][0]["test_acc"]
    with pytest.raises(RecordError, match=r"models\[0\]: missing key 'test_acc'"):
        Results.from_dict(missing)
    wrong = copy.deepcopy(raw)
    wrong["models"][0]["params"] = "many"
    with pytest.raises(RecordError, match=r"models\[0\]\.params: expected int"):
        Results.from_dict(wrong)
    schema = results_schema()
    with pytest.raises(RecordError, match="unknown key 'acurracy'"):
        validate(typo, schema, schema)
    with pytest.raises(RecordError, match="version 2"):
        Results.from_dict({**raw, "version": 2})


def test_optional_fields_are_left_out_when_empty_and_protocol_is_kept_when_set():
    raw = json.loads(SHIPPED[0].read_text())
    results = Results.from_dict(raw)
    assert "protocol" not in results.to_dict() and "protocol" not in results.to_dict()["models"][0]
    results.models[0].protocol = "held_out"
    assert results.to_dict()["models"][0]["protocol"] == "held_out"
    assert Results.from_dict(results.to_dict()).models[0].protocol == "held_out"
