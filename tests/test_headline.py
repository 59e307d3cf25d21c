"""The README headline table (lit_kd.study.headline): numbers formatted from a study's results.json, rows only where
their data exist, and the replacement between the README markers."""

import copy
import json

import pytest

from lit_kd.study import headline
from lit_kd.study.headline import END, START, HeadlineError, render, replace_between_markers


def model(stage, acc, params=1000, nonzero=1000, arch="resnet20_trunc"):
    facts = {"macs": 40_000_000, "size_bytes": 4 * params, "epochs": 5, "stop_reason": "epoch budget", "wall_s": 60.0}
    return {"stage": stage, "architecture": arch, "params": params, "nonzero_params": nonzero, "test_acc": acc, **facts}


def stage(kind, **fields):
    """A stage record of results.json, as the report writes it (metrics as the kind's executor returned them)."""
    return {
        "kind": kind,
        "status": "done",
        "outputs": {},
        "metrics": {},
        "command": None,
        "wall_s": 1.0,
        "seed": None,
        "group": None,
        **fields,
    }


def distillation(stage_name, seeds, mean, std, delta, val_acc):
    accs, epochs = [mean] * seeds, [6] * seeds
    return {
        "stage": stage_name,
        "seeds": seeds,
        "test_accs": accs,
        "epochs": epochs,
        "mean": mean,
        "std": std,
        "delta_vs_baseline": delta,
        "equal_epochs": 6,
        "val_acc_at_equal_epochs": val_acc,
    }


def speed_row(model_name, runtime, batch, images_per_s):
    latency = 1000 * batch / images_per_s
    return {
        "model": model_name,
        "runtime": runtime,
        "batch": batch,
        "iterations": 10,
        "latency_ms_median": latency,
        "latency_ms_p90": latency,
        "images_per_s": images_per_s,
    }


def ptq_row(runtime, wb, ab, method, acc, fp32):
    return {
        "runtime": runtime,
        "weight_bits": wb,
        "act_bits": ab,
        "method": method,
        "granularity": "per_channel",
        "first_last_8bit": runtime == "ours",
        "acc": acc,
        "agree_fp32": 0.99,
        "drop": fp32 - acc,
    }


RESULTS = {
    "study": "tiny.yaml",
    "description": "a tiny study",
    "machine": {"cpu": {"cpu": "Test CPU", "isa": "avx2", "vnni": False, "cores_used": 2}},
    "stages": {
        "teacher": stage("fit"),
        "student_data.seed0": stage("fit", group="student_data", seed=0),
        "student_data.seed1": stage("fit", group="student_data", seed=1),
        "kd_features.seed0": stage("fit", group="kd_features", seed=0),
        "kd_features.seed1": stage("fit", group="kd_features", seed=1),
        "best_student": stage("select", metrics={"chosen": "kd_features.seed1"}),
        "ptq": stage("ptq", metrics={"test_images": 10000}),
        "ptq_adaround": stage("ptq", metrics={"test_images": 4000}),
        "mixed": stage(
            "ptq",
            metrics={"search": {"act_bits": 8, "max_drop": 0.01, "chosen": {"weight_bits": {"conv1": 8, "a": 4, "b": 4, "c": 2}}}},
        ),
        "sparse": stage("fit", outputs={"ckpt": "/o/sparse/last.ckpt", "last": "/o/sparse/last.ckpt"}),
        "prune": stage("fit", outputs={"ckpt": "/o/prune/best.ckpt"}),
        "export_sparse": stage("export", metrics={"checkpoint": "/o/sparse/last.ckpt"}),
    },
    "models": [
        model("teacher", 0.9113, 269722, 269722, "resnet20"),
        model("student_data.seed0", 0.8801),
        model("student_data.seed1", 0.8823),
        model("kd_features.seed0", 0.8911),
        model("kd_features.seed1", 0.8937),
        model("sparse", 0.8712, 232602, 23261),
        model("prune", 0.8805, 232602, 100000),
    ],
    "distillation": [
        distillation("student_data", 2, 0.8812, 0.00156, None, 0.85),
        distillation("kd_cosine", 1, 0.8990, None, 0.0178, 0.86),
        distillation("kd_logits", 2, 0.8850, None, 0.0038, 0.86),
        distillation("kd_features", 2, 0.8924, 0.00184, 0.0112, 0.8712),
    ],
    "ptq": {
        "ptq": [
            ptq_row("fp32", 32, 32, "-", 0.9113, 0.9113),
            ptq_row("pytorch", 8, 8, "fx x86 histogram", 0.9101, 0.9113),
            ptq_row("ours", 8, 8, "minmax", 0.9090, 0.9113),
            ptq_row("ours", 8, 8, "percentile", 0.9107, 0.9113),
            ptq_row("ours", 4, 4, "percentile", 0.8987, 0.9113),
            ptq_row("ours", 2, 8, "percentile", 0.3120, 0.9113),
        ],
        "ptq_adaround": [ptq_row("fp32", 32, 32, "-", 0.9110, 0.9110), ptq_row("ours", 2, 8, "percentile + adaround", 0.8642, 0.9110)],
    },
    "mixed_precision": {
        "mixed": {
            "checkpoint": "/o/teacher/model.ckpt",
            "search_seconds": 12.0,
            "options": {"observer": "percentile"},
            "eval_images": 500,
            "fp32_weight_bytes": 409600.0,
            "plot": "/o/mixed/pareto.png",
            "test_acc": {"fp32": 0.9113, "chosen": 0.9051},
            "test_images": 10000,
            "chosen_average_weight_bits": 3.4567,
            "chosen_weight_bytes": 51200.0,
            "uniform_int8_weight_bytes": 102400.0,
        }
    },
    "qat": [
        {
            "stage": "qat",
            "started_from": "kd_features.seed1",
            "fp32_acc": 0.8937,
            "fake_quant_val_acc": 0.89,
            "int8_test_acc": 0.8921,
            "drop": 0.0016,
        }
    ],
    "exports": [
        {
            "stage": "export_sparse",
            "precision": "int8",
            "weight_sparsity": 0.9,
            "images": 10000,
            "batch_size": 64,
            "cores": 2,
            "pytorch": {"acc": 0.871},
            "onnxruntime": {"acc": 0.8709, "agreement": 0.999},
            "deepsparse": {"acc": 0.8709},
        }
    ],
    "speed": {
        "rows": [
            speed_row("pruned-quantized", "deepsparse", 32, 2345.6),
            speed_row("pruned-quantized", "deepsparse", 1, 999.0),
            speed_row("dense int8", "pytorch int8 (fx, x86)", 32, 1172.8),
            speed_row("dense fp32", "pytorch fp32 eager", 32, 781.9),
        ],
        "ratios": {"deepsparse pruned-quantized vs pytorch dense int8, batch 32": 2.0},
    },
}


def rows_of(markdown):
    return {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines() if line.startswith("| ")}


def test_every_row_is_formatted_from_the_results():
    md = render(RESULTS, "results/tiny/report.md", "results/tiny/results.json")
    rows = rows_of(md)
    teacher = next(v for k, v in rows.items() if k.startswith("Teacher"))
    assert "91.13 %" in teacher and "269,722 parameters" in teacher
    data_only = next(v for k, v in rows.items() if k.startswith("Student on data only"))
    assert "88.12 ± 0.16 %" in data_only and "2 seeds" in data_only
    best = next(v for k, v in rows.items() if k.startswith("Best distilled"))
    assert "`kd_features`" in best and "89.24 ± 0.18 %" in best and "+1.12 points vs data only" in best
    # one seed of kd_cosine scored higher: named beside the paired comparison, not chosen over it
    assert "best of 2 distillation setups with the data-only seeds" in best
    assert "higher with fewer seeds: `kd_cosine` 89.90 % (1 seed)" in best
    assert "+2.12 points in validation accuracy after 6 epochs each" in best
    w8 = next(v for k, v in rows.items() if k.startswith("Our PTQ W8A8"))
    assert "91.07 %" in w8 and "-0.06 points vs FP32 91.13 %" in w8 and "best of 2" in w8 and "percentile" in w8
    assert "test images" not in w8  # the full test set needs no note
    assert "91.01 %" in next(v for k, v in rows.items() if k.startswith("PyTorch INT8"))
    assert "89.87 %" in next(v for k, v in rows.items() if k.startswith("Our PTQ W4A4"))
    w2 = next(v for k, v in rows.items() if k.startswith("Our PTQ W2A8 with AdaRound"))
    assert "86.42 %" in w2 and "`ptq_adaround`" in w2 and "-4.68 points vs FP32 91.10 % (on 4,000 test images)" in w2
    assert "31.20 %" not in md  # W2A8 without AdaRound is not a headline row
    mixed = next(v for k, v in rows.items() if k.startswith("Mixed precision"))
    assert "3.46 bits" in mixed and "1 at 8 bits, 2 at 4 bits, 1 at 2 bits" in mixed and "90.51 %" in mixed
    assert "50.0 KiB vs 100.0 KiB" in mixed and "budget 1.0 points" in mixed
    qat = next(v for k, v in rows.items() if k.startswith("QAT"))
    assert "89.21 %" in qat and "-0.16 points vs its FP32 start `kd_features.seed1` 89.37 %" in qat
    sparse = next(v for k, v in rows.items() if k.startswith("90 % sparse + INT8"))
    assert (
        "23,261 non-zero" in sparse and "87.12 % (PyTorch); DeepSparse 87.09 %" in sparse and "-2.25 points vs the best student" in sparse
    )
    pruned = next(v for k, v in rows.items() if k.startswith("Pruned to 100,000 non-zero"))
    assert "88.05 %" in pruned and "`prune`" in pruned
    speed = next(v for k, v in rows.items() if k.startswith("DeepSparse"))
    assert "2,346 images/s" in speed and "2.00x PyTorch dense int8 at 1,173 images/s" in speed and "3.00x PyTorch dense fp32" in speed
    assert "[results/tiny/report.md](results/tiny/report.md)" in md and "Test CPU (avx2, VNNI no)" in md


def test_rows_without_data_are_absent():
    results = copy.deepcopy(RESULTS)
    for key in ("speed", "mixed_precision"):
        del results[key]
    results["qat"], results["exports"] = [], []
    del results["ptq"]["ptq_adaround"]
    results["models"] = [m for m in results["models"] if m["stage"] not in ("prune", "sparse")]
    md = render(results, "report.md")
    for absent in ("DeepSparse", "QAT", "Mixed precision", "AdaRound", "Pruned to", "sparse + INT8"):
        assert absent not in md
    assert "91.13 %" in md and "Our PTQ W4A4" in md
    # results written before the equal-epochs comparison existed: the delta alone
    results["distillation"][0].pop("val_acc_at_equal_epochs")
    assert "+1.12 points vs data only; higher with" in render(results, "report.md") and "epochs each" not in render(results, "report.md")
    # the sparse model without an INT8 export is still a pruned model
    results["models"].append(model("sparse2", 0.85, 1000, 500))
    assert "Pruned to 500 non-zero parameters `sparse2`" in render(results, "report.md")
    # without the data-only baseline's accuracy there is no delta, and no distillation row
    results["distillation"] = [{**r, "delta_vs_baseline": None} for r in results["distillation"][1:]]
    assert "distilled" not in render(results, "report.md") and "data only" not in render(results, "report.md")
    with pytest.raises(HeadlineError, match="none of the results"):
        render({"study": "empty.yaml", "description": "", "stages": {}}, "report.md")


def test_markers_replace_only_what_lies_between_them():
    before = "# Title\r\n\nintro ✓ \n" + START + "\nold table\nold line\n" + END + "\n\ntail\n  trailing   \n"
    after = replace_between_markers(before, "| new |\n|---|")
    head, tail = before.split(START)[0], before.split(END)[1]
    assert after.startswith(head + START) and after.endswith(END + tail)
    assert "old table" not in after and "| new |" in after
    assert replace_between_markers(after, "| new |\n|---|") == after  # idempotent


def test_markers_mentioned_inside_a_sentence_are_not_markers():
    text = f"Write between `{START}` and `{END}`.\n{START}\nold\n{END}\nSee `{END}`.\n"
    assert replace_between_markers(text, "new") == f"Write between `{START}` and `{END}`.\n{START}\nnew\n{END}\nSee `{END}`.\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("no markers here\n", "exactly once"),
        (START + "\nonly the start\n", "exactly once"),
        (END + "\n" + START + "\n", "comes before"),
        (f"{START}\n{START}\n{END}\n", "exactly once"),
        (f"mentioned in a sentence: `{START}` and `{END}`\n", "alone on its line"),
    ],
)
def test_missing_or_misplaced_markers_are_a_clear_error(text, message):
    with pytest.raises(HeadlineError, match=message):
        replace_between_markers(text, "table")


def test_cli_updates_the_readme_atomically_and_refuses_one_without_markers(tmp_path, capsys):
    study = tmp_path / "results" / "tiny"
    study.mkdir(parents=True)
    (study / "results.json").write_text(json.dumps(RESULTS))
    (study / "report.md").write_text("# report\n")
    readme = tmp_path / "README.md"
    readme.write_bytes(f"# lit-kd\n\n{START}\nThe study is running.\n{END}\n\n## Layout\n".encode())
    assert headline.main([str(study / "results.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# lit-kd\n\n{START}\n<!-- generated by") and text.endswith(f"{END}\n\n## Layout\n")
    assert "The study is running." not in text and "[results/tiny/report.md](results/tiny/report.md)" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results"]  # no temporary file left behind

    bare = tmp_path / "BARE.md"
    bare.write_text("# no markers\n")
    assert headline.main([str(study / "results.json"), "--readme", str(bare)]) == 2
    assert "exactly once" in capsys.readouterr().err and bare.read_text() == "# no markers\n"
    assert headline.main([str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mixed_precision_row_names_per_layer_activation_widths():
    results = copy.deepcopy(RESULTS)
    search = results["stages"]["mixed"]["metrics"]["search"]
    search.update(act_bits=4, layer_act_bits={"conv1": 8, "a": 4, "b": 4, "c": 8})
    mixed = next(v for k, v in rows_of(render(results, "r.md", "r.json")).items() if k.startswith("Mixed precision"))
    assert "activations A4 (A8: conv1, c)" in mixed
    assert "activations 8-bit" in next(v for k, v in rows_of(render(RESULTS, "r.md", "r.json")).items() if k.startswith("Mixed"))


def test_a_results_file_that_does_not_fit_its_records_is_a_clear_error(tmp_path, capsys):
    """A typo in a key (or a missing one) is named with its path, not read as "no such result"."""
    results = copy.deepcopy(RESULTS)
    results["models"][0]["tset_acc"] = results["models"][0].pop("test_acc")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert headline.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "models[0]: unknown key 'tset_acc'" in err and "results.schema.json" in err
