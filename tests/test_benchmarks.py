"""The benchmark scripts run end to end (tiny settings, tiny data) and write the JSON they promise."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import distill_overhead, kd_vs_data_only, time_to_accuracy, train_throughput


def run_script(module, monkeypatch, *args: str) -> dict:
    out = args[args.index("--out") + 1]
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    module.main()
    with open(out) as f:
        return json.load(f)


def test_train_throughput_json(tiny_zip, tmp_path, monkeypatch):
    result = run_script(train_throughput, monkeypatch, "--data", str(tiny_zip), "--batch-size", "16", "--warmup", "1",
                        "--steps", "3", "--repeats", "2", "--threads", "1", "--out", str(tmp_path / "t.json"))
    assert len(result["plain_images_per_s"]) == len(result["lightning_images_per_s"]) == 2
    assert result["ratio_of_medians"] == pytest.approx(result["lightning_median"] / result["plain_median"])
    assert result["machine"]["torch_threads"] == 1 and result["machine"]["cpu"]


def test_distill_overhead_json(tiny_zip, tmp_path, monkeypatch):
    result = run_script(distill_overhead, monkeypatch, "--data", str(tiny_zip), "--student", "resnet8", "--teacher", "resnet20",
                        "--batch-size", "16", "--warmup", "1", "--steps", "2", "--repeats", "1", "--out", str(tmp_path / "d.json"))
    assert result["ratio_of_medians"] == pytest.approx(result["with_teacher_median"] / result["student_alone_median"])
    assert result["teacher"] == "resnet20" and len(result["with_teacher_images_per_s"]) == 1


def test_kd_vs_data_only_json(tiny_zip, tmp_path, monkeypatch):
    import lightning as L

    from lit_kd.data import CIFAR10DataModule
    from lit_kd.modules import ClassifierModule

    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(ClassifierModule("resnet8", num_example_images=0), CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=16))
    trainer.save_checkpoint(tmp_path / "teacher.ckpt", weights_only=True)
    result = run_script(kd_vs_data_only, monkeypatch, "--data", str(tiny_zip), "--teacher-ckpt", str(tmp_path / "teacher.ckpt"),
                        "--student", "resnet8", "--train-size", "64", "--epochs", "1", "--batch-size", "32", "--seeds", "0",
                        "--out", str(tmp_path / "k.json"))
    run = result["runs"][0]
    assert 0 <= run["data_only"] <= 1 and 0 <= run["distilled"] <= 1 and 0 <= result["teacher_test_acc"] <= 1
    assert result["gain_mean"] == pytest.approx(run["distilled"] - run["data_only"])


def test_quant_speed_json(tmp_path, monkeypatch):
    from benchmarks import quant_speed

    result = run_script(quant_speed, monkeypatch, "--models", "resnet8", "--threads", "1", "--warmup", "1", "--repeats", "2",
                        "--iterations-b1", "2", "--iterations-b32", "1", "--calib-batches", "1", "--out", str(tmp_path / "q.json"))
    runtimes = {"pytorch fp32 eager", "pytorch int8 (fx, x86)", "onnxruntime fp32", "onnxruntime int8 (qdq)"}
    assert {(r["runtime"], r["batch"]) for r in result["rows"]} == {(rt, b) for rt in runtimes for b in (1, 32)}
    for row in result["rows"]:
        base = next(r for r in result["rows"] if r["batch"] == row["batch"] and r["runtime"] == "pytorch fp32 eager")
        assert row["speedup_vs_fp32_eager"] == pytest.approx(row["images_per_s"] / base["images_per_s"])
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["latency_ms_median"])
        assert len(row["latency_ms_per_repeat"]) == 2
    assert result["machine"]["torch_threads"] == 1


def test_time_to_accuracy_reads_the_runs_events(trained_ckpt, tmp_path):
    from tests.helpers import scalars

    run_dir = trained_ckpt.parents[1]
    accs = scalars(run_dir, "val/acc")
    result = time_to_accuracy.main([str(run_dir), "--thresholds", str(min(accs)), "1.01", "--out", str(tmp_path / "t.json")])
    assert [p["acc"] for p in result["curve"]] == accs and [p["epoch"] for p in result["curve"]] == [1, 2, 3]
    assert all(a["minutes"] <= b["minutes"] for a, b in zip(result["curve"], result["curve"][1:]))
    first = next(i for i, a in enumerate(accs) if a >= min(accs)) + 1
    assert result["reached"][str(min(accs))]["epoch"] == first and result["reached"]["1.01"] is None
    assert json.loads((tmp_path / "t.json").read_text())["final"]["acc"] == accs[-1]
