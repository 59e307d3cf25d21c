"""The typed records of a study's ``results.json``: every table of the report, machine-readable.

The report stage fills a :class:`Results` from the stage manifests and writes it; the README headline and the
report's key results read it back (:meth:`Results.load`). ``version`` says which layout a file has; files written
before it existed (no ``version``) read as version 1. The JSON Schema ships as ``docs/results.schema.json``::

    python -m lit_kd.study.results > docs/results.schema.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_kd.study.records import ABSENT_OK, OPTIONAL, Record, RecordError, key, schema

VERSION = 1


@dataclass(kw_only=True)
class StageRecord(Record):
    """A stage as its manifest ended: kind, status, outputs, metrics (as the kind's executor returned them)."""

    kind: str
    status: str | None
    outputs: dict[str, str]
    metrics: dict[str, Any]
    command: str | None
    wall_s: float | None
    seed: int | None
    group: str | None


@dataclass(kw_only=True)
class ModelRecord(Record):
    """A trained network (a fit or weights stage): size, test accuracy, how training ended."""

    stage: str
    architecture: str | None
    params: int
    nonzero_params: int
    macs: int
    size_bytes: int
    deflated_bytes: int | None = field(default=None, metadata=OPTIONAL)  # size_bytes compressed (zlib, level 9)
    test_acc: float
    epochs: int | None
    stop_reason: str | None
    wall_s: float | None


@dataclass(kw_only=True)
class DistillationRecord(Record):
    """A student setup (a stage or seed group) against the data-only baseline (the first record)."""

    stage: str
    seeds: int
    test_accs: list[float]
    epochs: list[int | None]
    mean: float
    std: float | None
    delta_vs_baseline: float | None
    equal_epochs: int | None = field(default=None, metadata=ABSENT_OK)  # absent in files written before it existed
    val_acc_at_equal_epochs: float | None = field(default=None, metadata=ABSENT_OK)


@dataclass(kw_only=True)
class ComparisonRecord(Record):
    """A setup against what it is compared with (``role``: ``distillation``, against the data-only baseline; ``control``,
    a method against its control): test accuracy per seed on each side, the difference of the means, its standard
    error (Welch) and the verdict (``real`` only beyond 2 standard errors; ``not testable (1 seed)`` without spread)."""

    stage: str
    baseline: str
    role: str
    test_accs: list[float]
    baseline_test_accs: list[float]
    mean: float
    std: float | None
    baseline_mean: float
    baseline_std: float | None
    difference: float
    standard_error: float | None
    verdict: str


@dataclass(kw_only=True)
class Predictions(Record):
    """One model's prediction (class index) and confidence per example image."""

    predicted: list[int]
    confidence: list[float]


@dataclass(kw_only=True)
class ExamplesRecord(Record):
    """The first test image of each class and every model's prediction on it."""

    indices: list[int]
    labels: list[int]
    classes: list[str]
    models: dict[str, Predictions]


@dataclass(kw_only=True)
class PtqRow(Record):
    """One post-training quantization configuration: runtime, widths, method, test accuracy, drop from FP32, and
    (``lit-kd ptq --held-out``) accuracy on held-out training images, which the held_out protocol chooses by."""

    runtime: str
    weight_bits: int | None
    act_bits: int | None
    method: str
    granularity: str
    first_last_8bit: bool
    acc: float
    agree_fp32: float | None
    seconds: float | None = field(default=None, metadata=OPTIONAL)
    agree_simulation: float | None = field(default=None, metadata=OPTIONAL)  # integer-arithmetic row: same top-1 as its simulation
    held_out_acc: float | None = field(default=None, metadata=OPTIONAL)  # on held-out training images (protocol held_out)
    drop: float
    engine: str | None = field(default=None, metadata=OPTIONAL)  # whose quantization: ours, PyTorch FX/PT2E, NNCF (OpenVINO)
    kernels: str | None = field(default=None, metadata=OPTIONAL)  # "simulated (fake-quant)" or "real INT8 kernels", ...


@dataclass(kw_only=True)
class PtqFile(Record):
    """A deployable file ``lit-kd ptq --export-dir`` wrote, read back and evaluated on the test images of its row."""

    file: str  # relative to the study folder when it lies inside it
    engine: str
    kind: str
    from_row: dict[str, Any]  # runtime, widths, method and granularity of the PTQ row it holds
    acc: float
    row_acc: float
    agree_row: float
    kernels: str | None = field(default=None, metadata=OPTIONAL)


@dataclass(kw_only=True)
class MixedPrecisionRecord(Record):
    """A ``lit-kd ptq --max-drop`` search: the chosen allocation's size and test accuracies (the search itself, per
    layer, stays in the stage's metrics)."""

    checkpoint: str
    search_seconds: float
    search_measured_seconds: float | None = field(default=None, metadata=OPTIONAL)
    threads: int | None = field(default=None, metadata=OPTIONAL)
    options: dict[str, Any]
    eval_images: int
    test_images: int | None
    test_acc: dict[str, float]
    chosen_average_weight_bits: float
    chosen_weight_bytes: float
    fp32_weight_bytes: float
    uniform_int8_weight_bytes: float
    plot: str


@dataclass(kw_only=True)
class QatRecord(Record):
    """A quantization-aware training stage: real INT8 test accuracy against the FP32 stage it started from."""

    stage: str
    started_from: str | None
    fp32_acc: float | None
    fake_quant_val_acc: float | None
    int8_test_acc: float
    drop: float | None


@dataclass(kw_only=True)
class ExportRecord(Record):
    """An ONNX export and its validation in each runtime (``{"acc", "agreement", ...}`` or why it did not run)."""

    stage: str
    precision: str
    weight_sparsity: float
    images: int
    batch_size: int
    cores: int
    pytorch: dict[str, Any]
    onnxruntime: dict[str, Any]
    deepsparse: dict[str, Any]
    file_bytes: int | None = field(default=None, metadata=OPTIONAL)  # the ONNX file on disk
    deflated_bytes: int | None = field(default=None, metadata=OPTIONAL)  # the same compressed (zlib, level 9)


@dataclass(kw_only=True)
class SpeedRow(Record):
    """One benchmark measurement: model, runtime, batch size, latency and throughput (lit-kd's loop, or
    ``deepsparse.benchmark`` repeated), and the model's accuracy."""

    model: str
    runtime: str
    batch: int
    iterations: int
    latency_ms_median: float
    latency_ms_p90: float
    images_per_s: float
    accuracy: float | None = field(default=None, metadata=OPTIONAL)  # the model's, where measured (export validation)
    # deepsparse.benchmark rows: repetitions of ``seconds`` each; the medians above, their range over repetitions here
    repetitions: int | None = field(default=None, metadata=OPTIONAL)
    seconds: float | None = field(default=None, metadata=OPTIONAL)
    images_per_s_min: float | None = field(default=None, metadata=OPTIONAL)
    images_per_s_max: float | None = field(default=None, metadata=OPTIONAL)
    latency_ms_min: float | None = field(default=None, metadata=OPTIONAL)
    latency_ms_max: float | None = field(default=None, metadata=OPTIONAL)


@dataclass(kw_only=True)
class SpeedRecord(Record):
    """The bench stage's measurements and the speed ratios between them."""

    rows: list[SpeedRow]
    ratios: dict[str, float]


@dataclass(kw_only=True)
class Finding(Record):
    """A key result: a headline row (what, result, compared with) or a note (what alone)."""

    what: str
    result: str | None = field(default=None, metadata=OPTIONAL)
    compared_with: str | None = field(default=None, metadata=key("compared with", optional=True))


@dataclass(kw_only=True)
class Results(Record):
    """A study's results.json: every stage, the machine, and every table of the report (a table without rows may be
    absent when read; it is written as an empty list)."""

    version: int = field(default=VERSION, metadata=OPTIONAL)  # absent in files written before it: version 1
    study: str
    description: str
    stages: dict[str, StageRecord] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict, metadata=ABSENT_OK)
    models: list[ModelRecord] = field(default_factory=list, metadata=ABSENT_OK)
    distillation: list[DistillationRecord] = field(default_factory=list, metadata=ABSENT_OK)
    examples: ExamplesRecord | None = field(default=None, metadata=OPTIONAL)
    ptq: dict[str, list[PtqRow]] | None = field(default=None, metadata=OPTIONAL)
    ptq_files: dict[str, list[PtqFile]] | None = field(default=None, metadata=OPTIONAL)  # deployable files, by ptq stage
    mixed_precision: dict[str, MixedPrecisionRecord] | None = field(default=None, metadata=OPTIONAL)
    qat: list[QatRecord] = field(default_factory=list, metadata=ABSENT_OK)
    exports: list[ExportRecord] = field(default_factory=list, metadata=ABSENT_OK)
    speed: SpeedRecord | None = field(default=None, metadata=OPTIONAL)
    findings: list[Finding] = field(default_factory=list, metadata=ABSENT_OK)
    comparisons: list[ComparisonRecord] | None = field(default=None, metadata=OPTIONAL)
    targets: dict[str, dict[str, float]] | None = field(default=None, metadata=OPTIONAL)  # the report stage's targets
    deviations: list[str] | None = field(default=None, metadata=OPTIONAL)  # the study file's deviations from the task

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None) -> Results:
        if data.get("version", VERSION) != VERSION:
            raise RecordError(f"{where or 'results'}: version {data['version']!r}; this lit-kd reads version {VERSION}")
        return super().from_dict({"version": VERSION, **data}, where)

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """A results.json as typed records; :class:`RecordError` names the first key that does not fit."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), str(path))

    def model(self, stage: str) -> ModelRecord | None:
        return next((m for m in self.models if m.stage == stage), None)

    def comparison(self, stage: str) -> ComparisonRecord | None:
        """The comparison of ``stage`` (a stage or seed group) with its baseline or control."""
        return next((c for c in self.comparisons or [] if c.stage == stage), None)


def results_schema() -> dict:
    """The JSON Schema of results.json (shipped as ``docs/results.schema.json``)."""
    return schema(Results, f"lit-kd study results.json, version {VERSION}")


def main() -> int:
    print(json.dumps(results_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
