"""The ``export`` kind: ``lit-kd export`` of a checkpoint to ONNX, validated in each runtime on test images; its
report section (the exports table) and its records (``results.exports``)."""

from __future__ import annotations

import os
from pathlib import Path

from lit_kd.study.kinds.base import EXPORTS, ReportInput
from lit_kd.study.kinds.step import StepError, StepKind, positive, split
from lit_kd.study.render import Section, Table, pct
from lit_kd.study.results import ExportRecord


class Export(StepKind):
    name, outputs = "export", ("onnx", "json")
    out_file, files = "model.onnx", {"onnx": "model.onnx", "json": "model.validation.json"}

    def call(self, settings: dict) -> dict:
        from lit_kd.onnx_export import EXPORT_DEFAULTS, MAX_OPSET, MIN_OPSET, ExportError, export_checkpoint

        given = split("export", settings, ("ckpt", "data", "out"), ["config", *EXPORT_DEFAULTS, "cores"])
        s = {**EXPORT_DEFAULTS, "config": None, "cores": os.cpu_count(), **given}
        positive("export", s, ("images", "batch_size", "cores"))
        if not MIN_OPSET <= s["opset"] <= MAX_OPSET:
            raise StepError(f"lit-kd export: error: --opset must be from {MIN_OPSET} to {MAX_OPSET}, got {s['opset']}")
        try:
            return export_checkpoint(s["ckpt"], s["out"], s["config"], s["opset"], s["data"], s["images"], s["batch_size"], s["cores"])
        except ExportError as err:
            raise StepError(f"lit-kd export: error: {err}") from None

    def report(self, rep: ReportInput) -> list[tuple[int, Section]]:
        table, records = export_table(rep.manifests)
        rep.results.exports = records
        return [(EXPORTS, Section("ONNX exports", [table]))] if table else []


def export_row(r: ExportRecord) -> list[str]:
    ds = [pct(r.deepsparse["acc"]), pct(r.deepsparse["agreement"])] if "acc" in r.deepsparse else ["not installed"] * 2
    ort = r.onnxruntime
    from lit_kd.study.kinds.trained import size_text

    return [
        r.stage,
        r.precision if r.file_bytes is None else f"{r.precision}, {size_text(r.file_bytes, r.deflated_bytes)}",
        f"{100 * r.weight_sparsity:.1f} %",
        str(r.images),
        pct(r.pytorch["acc"]),
        pct(ort["acc"]),
        pct(ort["agreement"]),
        *ds,
    ]


def export_table(manifests: dict[str, dict]) -> tuple[Table | None, list[ExportRecord]]:
    from lit_kd.artifacts import deflated_size

    rows, data = [], []
    for name, m in manifests.items():
        if m["kind"] != "export":
            continue
        x = m["metrics"]
        onnx = Path((m.get("outputs") or {}).get("onnx") or "")
        sizes = {"file_bytes": onnx.stat().st_size, "deflated_bytes": deflated_size(onnx.read_bytes())} if onnx.is_file() else {}
        record = {"stage": name, "precision": x["precision"], "weight_sparsity": x["weight_sparsity"], **x["validation"], **sizes}
        data.append(ExportRecord.from_dict(record))
        rows.append(export_row(data[-1]))
    if not rows:
        return None, []
    header = ["export", "precision", "weight sparsity", "images", "PyTorch", "ONNX Runtime", "agrees with PyTorch"]
    caption = (
        "ONNX files validated on test images in both runtimes; beside the precision, the file's size on disk and, in "
        "brackets, compressed (zlib, level 9: pruned weights' zeros compress)."
    )
    return Table([*header, "DeepSparse", "agrees with PyTorch"], rows, caption), data
