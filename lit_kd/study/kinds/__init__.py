"""The stage kinds of a study, one file each, registered here and nowhere else. The spec checks a study file with
``KINDS[kind].parse``, the runner runs ``KINDS[kind].run``, the report and the headline collect each kind's sections
and rows in this order (then by position). Adding a kind: a file with a :class:`~lit_kd.study.kinds.base.Kind`
subclass, one line here, and its test."""

from __future__ import annotations

from lit_kd.study.kinds.base import Kind
from lit_kd.study.kinds.bench import Bench
from lit_kd.study.kinds.examples import Examples
from lit_kd.study.kinds.export import Export
from lit_kd.study.kinds.fit import Fit
from lit_kd.study.kinds.ptq import Ptq
from lit_kd.study.kinds.report import Report
from lit_kd.study.kinds.select import Select
from lit_kd.study.kinds.weights import Weights

KINDS: dict[str, Kind] = {kind.name: kind for kind in (Fit(), Weights(), Select(), Ptq(), Export(), Bench(), Examples(), Report())}

__all__ = ["KINDS", "Kind"]
