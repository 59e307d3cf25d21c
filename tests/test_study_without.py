"""``lit-kd study --without``: a study less some stages (e.g. the sparse ones in an environment without the extra)."""

from __future__ import annotations

import pytest

from lit_kd.study.spec import StudyError, load_study
from tests.conftest import REPO

DEMO = REPO / "experiments" / "studies" / "demo.yaml"


def test_without_drops_the_stages_and_what_consumes_them():
    full = load_study(DEMO)
    study = load_study(DEMO, without=["sparse"])
    assert set(full.stages) - set(study.stages) == {"sparse", "export_sparse", "bench"}  # bench reads export_sparse's file
    assert "sparse" not in study.stages["examples"].needs and "sparse" in full.stages["examples"].needs
    assert "export_sparse" not in study.stages["report"].needs
    assert study.stages["qat"].needs == full.stages["qat"].needs  # untouched stages keep what they consume


def test_without_a_selected_stage_drops_the_select_and_its_consumers():
    study = load_study(DEMO, without=["kd_logits"])
    assert "best_student" not in study.stages and "qat" not in study.stages and "export_dense" not in study.stages
    assert "kd_features" in study.stages and "ptq" in study.stages


def test_without_an_unknown_stage_is_an_error():
    with pytest.raises(StudyError, match=r"--without: unknown stage\(s\) \['sparce'\]"):
        load_study(DEMO, without=["sparce"])
