"""The benchmark scripts run end to end (tiny settings, tiny data) and write the JSON they promise: medians over
the requested repeats, the thread count they pin (read back from torch after the run), the models they say they ran."""

from __future__ import annotations

import json
import statistics
import sys

import pytest
import torch

from benchmarks import distill_overhead, kd_vs_data_only, time_to_accuracy, train_throughput


def run_script(module, monkeypatch, *args: str) -> dict:
    out = args[args.index("--out") + 1]
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    module.main()
    with open(out) as f:
        return json.load(f)


@pytest.fixture()
def two_threads():
    """torch starts at 2 threads, so a benchmark asked for 1 must really pin it (conftest restores the count after)."""
    torch.set_num_threads(2)


def assert_medians(result: dict, series: dict[str, str], repeats: int) -> None:
    """Each per-repeat list has one entry per requested repeat, and its median is the one reported."""
    for per_repeat, median in series.items():
        values = result[per_repeat]
        assert len(values) == repeats and all(v > 0 for v in values), per_repeat
        assert result[median] == pytest.approx(statistics.median(values)), median


def test_train_throughput_json(tiny_zip, tmp_path, monkeypatch, two_threads):
    result = run_script(
        train_throughput,
        monkeypatch,
        "--data",
        str(tiny_zip),
        "--model",
        "resnet8",
        "--batch-size",
        "16",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--repeats",
        "3",
        "--threads",
        "1",
        "--channels-last",
        "--out",
        str(tmp_path / "t.json"),
    )
    assert torch.get_num_threads() == 1 and result["machine"]["torch_threads"] == 1 and result["machine"]["cpu"]
    settings = ("model", "batch_size", "warmup_steps", "timed_steps", "repeats")
    assert [result[k] for k in settings] == ["resnet8", 16, 1, 3, 3]
    assert_medians(result, {"plain_images_per_s": "plain_median", "lightning_images_per_s": "lightning_median"}, repeats=3)
    paired = statistics.median(lit / p for lit, p in zip(result["lightning_images_per_s"], result["plain_images_per_s"]))
    assert result["median_paired_ratio"] == pytest.approx(paired)
    assert result["ratio_of_medians"] == pytest.approx(result["lightning_median"] / result["plain_median"])
    assert_medians(result, {"lightning_channels_last_images_per_s": "channels_last_median"}, repeats=3)
    paired = statistics.median(c / e for c, e in zip(result["lightning_channels_last_images_per_s"], result["lightning_images_per_s"]))
    assert result["channels_last_vs_eager_paired_median"] == pytest.approx(paired) and "compiled_median" not in result


def test_distill_overhead_json(tiny_zip, tmp_path, monkeypatch, two_threads):
    result = run_script(
        distill_overhead,
        monkeypatch,
        "--data",
        str(tiny_zip),
        "--student",
        "resnet8",
        "--teacher",
        "resnet20",
        "--batch-size",
        "16",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "d.json"),
    )
    assert torch.get_num_threads() == 1 and result["machine"]["torch_threads"] == 1
    assert (result["student"], result["teacher"], result["repeats"], result["timed_steps"]) == ("resnet8", "resnet20", 2, 2)
    assert_medians(
        result, {"student_alone_images_per_s": "student_alone_median", "with_teacher_images_per_s": "with_teacher_median"}, repeats=2
    )
    assert result["ratio_of_medians"] == pytest.approx(result["with_teacher_median"] / result["student_alone_median"])


def test_kd_vs_data_only_json(tiny_zip, tmp_path, monkeypatch, two_threads):
    import lightning as L

    from lit_kd.checkpoints import load_network
    from lit_kd.data import CIFAR10DataModule
    from lit_kd.evaluation import accuracy
    from lit_kd.modules import ClassifierModule

    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(ClassifierModule("resnet8", num_example_images=0), CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=16))
    trainer.save_checkpoint(tmp_path / "teacher.ckpt", weights_only=True)
    result = run_script(
        kd_vs_data_only,
        monkeypatch,
        "--data",
        str(tiny_zip),
        "--teacher-ckpt",
        str(tmp_path / "teacher.ckpt"),
        "--student",
        "resnet8",
        "--train-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--seeds",
        "0",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "k.json"),
    )
    assert torch.get_num_threads() == 1 and result["machine"]["torch_threads"] == 1
    assert [r["seed"] for r in result["runs"]] == [0] and (result["train_size"], result["epochs"]) == (64, 1)
    run = result["runs"][0]
    assert 0 <= run["data_only"] <= 1 and 0 <= run["distilled"] <= 1 and run["data_only_fit_s"] > 0
    # the teacher accuracy it reports is the checkpoint's accuracy on the test split
    teacher = load_network(tmp_path / "teacher.ckpt")
    assert result["teacher_test_acc"] == pytest.approx(accuracy(teacher, CIFAR10DataModule(str(tiny_zip)).normalized_batches("test", 64)))
    assert result["gain_mean"] == pytest.approx(run["distilled"] - run["data_only"])


QUANT_RUNTIMES = {"pytorch fp32 eager", "pytorch int8 (fx, x86)", "onnxruntime fp32", "onnxruntime int8 (qdq)"}
QUANT_TINY = ("--threads", "1", "--warmup", "1", "--repeats", "3", "--iterations-b1", "2", "--iterations-b32", "1", "--calib-batches", "1")


def test_quant_speed_json(tmp_path, monkeypatch, two_threads):
    from benchmarks import quant_speed

    result = run_script(quant_speed, monkeypatch, "--models", "resnet8", "resnet20", *QUANT_TINY, "--out", str(tmp_path / "q.json"))
    assert result["models"] == ["resnet8", "resnet20"] and result["ckpt"] is None
    assert {(r["model"], r["runtime"], r["batch"]) for r in result["rows"]} == {
        (m, rt, b) for m in ("resnet8", "resnet20") for rt in QUANT_RUNTIMES for b in (1, 32)
    }
    for row in result["rows"]:
        assert len(row["latency_ms_per_repeat"]) == 3 and row["iterations"] == {1: 2, 32: 1}[row["batch"]]
        assert row["latency_ms_median"] == pytest.approx(statistics.median(row["latency_ms_per_repeat"]))
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["latency_ms_median"])
        base = next(
            r for r in result["rows"] if (r["model"], r["batch"], r["runtime"]) == (row["model"], row["batch"], "pytorch fp32 eager")
        )
        assert row["speedup_vs_fp32_eager"] == pytest.approx(row["images_per_s"] / base["images_per_s"])
    assert torch.get_num_threads() == 1 and result["machine"]["torch_threads"] == 1
    assert result["onnxruntime_threads"] == {"intra_op": 1, "inter_op": 1}


def test_quant_speed_ckpt_is_one_model_labelled_by_its_architecture(tmp_path, monkeypatch, capsys, trained_ckpt):
    from benchmarks import quant_speed

    result = run_script(quant_speed, monkeypatch, "--ckpt", str(trained_ckpt), *QUANT_TINY, "--out", str(tmp_path / "q.json"))
    assert result["models"] == ["resnet8"] and result["ckpt"] == str(trained_ckpt)
    assert {r["model"] for r in result["rows"]} == {"resnet8"} and len(result["rows"]) == 2 * len(QUANT_RUNTIMES)
    # naming the same architecture is fine; other (or several) names would mislabel the one checkpoint: refused
    same = quant_speed.main(["--ckpt", str(trained_ckpt), "--models", "resnet8", *QUANT_TINY, "--out", str(tmp_path / "q2.json")])
    assert same["models"] == ["resnet8"]
    for models in (["resnet20", "resnet18"], ["resnet20"]):
        with pytest.raises(SystemExit) as exit_info:
            quant_speed.main(["--ckpt", str(trained_ckpt), "--models", *models, "--out", str(tmp_path / "bad.json")])
        assert exit_info.value.code == 2
        assert "--ckpt benchmarks the one network" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_time_to_accuracy_reads_the_runs_events(trained_ckpt, tmp_path):
    from tests.helpers import scalars

    run_dir = trained_ckpt.parents[1]
    accs = scalars(run_dir, "val/acc")
    result = time_to_accuracy.main([str(run_dir), "--thresholds", str(min(accs)), "1.01", "--out", str(tmp_path / "t.json")])
    assert [p["acc"] for p in result["curve"]] == accs and [p["epoch"] for p in result["curve"]] == [1, 2, 3]
    assert result["curve"][0]["minutes"] > 0  # the clock starts when the run starts, not at its first scalar
    assert all(a["minutes"] <= b["minutes"] for a, b in zip(result["curve"], result["curve"][1:]))
    first = next(i for i, a in enumerate(accs) if a >= min(accs)) + 1
    assert result["reached"][str(min(accs))]["epoch"] == first and result["reached"]["1.01"] is None
    assert json.loads((tmp_path / "t.json").read_text())["final"]["acc"] == accs[-1]
