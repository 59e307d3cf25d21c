"""lit-kd study through the real console script on the fixture data: a whole study end to end, its report checked
against the stage manifests, resumption after SIGKILL, reruns after a change, and broken study files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lit_kd.study.render import _cell, pct
from lit_kd.study.report import validation_note, wall_time
from lit_kd.study.spec import StudyError, load_study

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "experiments" / "studies"


def small_study(tmp: Path, teacher_state: Path, teacher_arch: str = "resnet8") -> Path:
    """The demo study's graph on the fixture: 3-epoch students, 1-epoch QAT, 3-epoch GMP + QAT, small steps."""
    study = yaml.safe_load((STUDIES / "demo.yaml").read_text())
    study["fit_overrides"] = {
        "trainer.max_epochs": 3,
        "data.init_args.batch_size": 32,
        "data.init_args.eval_batch_size": 64,
        "trainer.deterministic": True,
    }
    stages = study["stages"]
    for stage in stages.values():
        for key in ("fit", "weights"):
            if key in stage and not stage[key].startswith("$"):
                stage[key] = str((STUDIES / stage[key]).resolve())
    stages["teacher"].update(weights=str(teacher_state), model=teacher_arch)
    del stages["kd_features"]
    stages["best_student"]["select"] = ["student_data", "kd_logits"]
    stages["report"]["report"]["distillation"]["rows"] = ["kd_logits"]
    stages["ptq"]["ptq"] = {"ckpt": "${teacher.ckpt}", "bits": [8, 4], "observer": ["minmax"], "calib_batches": 1, "batch_size": 32}
    stages["ptq"]["ptq"]["torch_flow"] = "fx"  # as demo.yaml: no compile step
    stages["mixed_precision"]["ptq"].update(eval_images=60, test_images=None, calib_batches=1, batch_size=32, evaluations=2)
    stages["qat"]["overrides"]["trainer.max_epochs"] = 1
    stages["sparse"]["overrides"]["trainer.callbacks"][0]["init_args"]["recipe"] = str(REPO / "experiments" / "recipes" / "gmp_qat.yaml")
    stages["sparse"]["overrides"]["trainer.callbacks"][0]["init_args"]["recipe_args"] = {
        "num_epochs": 3,
        "pruning_end_epoch": 1.0,
        "final_sparsity": 0.9,
        "qat_start_epoch": 2.0,
    }
    for name in ("export_dense", "export_sparse"):
        stages[name]["export"]["images"] = 60
    stages["bench"]["bench"].update(iterations_b1=3, iterations_b32=2, warmup=1, benchmark_repetitions=2, benchmark_warmup=0)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def lit_kd(*args, cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lit-kd")
    proc = subprocess.run(
        [str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"}
    )
    if check:
        assert proc.returncode == 0, f"lit-kd {args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def manifests(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/manifest.json"))}


@pytest.fixture(scope="module")
def teacher_state(trained_ckpt, tmp_path_factory) -> Path:
    """A plain state dict of a trained network (what weights/ ships): the resnet8 of the shared fixture."""
    from lit_kd.checkpoints import load_network

    path = tmp_path_factory.mktemp("weights") / "teacher.pt"
    torch.save(load_network(trained_ckpt).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def finished(tiny_zip, teacher_state, tmp_path_factory):
    """One uninterrupted run of the small study: (study file, out dir, stdout)."""
    root = tmp_path_factory.mktemp("study")
    study = small_study(root, teacher_state)
    proc = lit_kd("study", study, "--out", root / "out", "--data", tiny_zip, cwd=root)
    return study, root / "out", proc.stdout


@pytest.mark.sparse  # the demo graph's GMP + QAT stage and DeepSparse
def test_study_runs_end_to_end_and_reports_what_the_manifests_hold(finished, tiny_zip):
    study, out, stdout = finished
    found = manifests(out)
    assert set(found) == set(load_study(study).stages)
    assert all(m["status"] == "done" for m in found.values())
    assert "study finished" in stdout and str(out / "report.html") in stdout
    for name in ("report.html", "report.md", "results.json"):
        assert (out / name).stat().st_size > 0

    # every image of the self-contained HTML decodes
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) >= 5  # accuracy overview, curves, examples, mixed precision, sparsity
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "src='report_files" not in page and "http" not in page

    # the model table's numbers are the manifests'
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "All training stages validated on the test set" in report  # the demo's configs keep val_split 0
    trained = {n: m for n, m in found.items() if m["kind"] in ("fit", "weights")}
    for name, m in trained.items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == f"{m['metrics']['params']:,}" and cells[3] == f"{m['metrics']['nonzero_params']:,}"
        assert cells[6] == pct(m["metrics"]["test_acc"])
    assert {r["stage"]: r["test_acc"] for r in results["models"]} == {n: m["metrics"]["test_acc"] for n, m in trained.items()}
    # results.json is written from the typed records and fits the shipped schema
    from tests.test_results_schema import check_results_file

    check_results_file(out / "results.json")
    # the report opens with the README headline's rows
    from lit_kd.study.headline import headline_rows

    key_results = report.split("## Key results")[1].split("## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in key_results.splitlines() if line.startswith("| ")]
    assert rows[0] == ["what", "result", "compared with"] and len(rows) > 5
    assert [list(r[:2]) for r in headline_rows(results)] == [r[:2] for r in rows[1:]]
    assert "<code>kd_logits</code>" in page and "`" not in page.split("<h2>Key results</h2>")[1].split("</table>")[0]
    # the PTQ rows, the distillation delta and the speed rows too
    for row in found["ptq"]["metrics"]["rows"]:
        assert f"| {pct(row['acc'])} |" in report
    delta = found["kd_logits"]["metrics"]["test_acc"] - found["student_data"]["metrics"]["test_acc"]
    assert results["distillation"][1]["delta_vs_baseline"] == pytest.approx(delta)
    assert f"{100 * delta:+.2f}" in report
    # and both after as many epochs as the data-only run, read back from the TensorBoard curves
    from lit_kd.study.figures import read_curves

    k = found["student_data"]["metrics"]["epochs"]
    for record in results["distillation"]:
        curve = dict(read_curves(found[record["stage"]]["outputs"]["run_dir"])["val/acc"])
        assert record["equal_epochs"] == k and record["val_acc_at_equal_epochs"] == pytest.approx(curve[k - 1])
    for row in found["bench"]["metrics"]["rows"]:
        assert f"| {row['images_per_s']:.0f} |" in report
    assert found["bench"]["metrics"]["deepsparse_benchmark_commands"][0].replace(str(out.resolve()), "<out>") in report
    assert f"deepsparse.benchmark {out.resolve()}" not in report  # the study folder as <out>, as in every command
    # the select stage chose the better student, and QAT, pruning and export consumed its checkpoint
    accs = {n: found[n]["metrics"]["test_acc"] for n in ("student_data", "kd_logits")}
    chosen = found["best_student"]["metrics"]["chosen"]
    assert accs[chosen] == max(accs.values())
    assert found["best_student"]["outputs"]["ckpt"] == found[chosen]["outputs"]["ckpt"]
    assert found[chosen]["outputs"]["ckpt"] in found["qat"]["inputs"]["consumed"]
    assert found["sparse"]["metrics"]["nonzero_params"] < 0.2 * found["sparse"]["metrics"]["params"]
    assert "int8" in found["qat"]["outputs"] and found["export_sparse"]["metrics"]["precision"] == "int8"
    # the distillation stage checked its teacher on the validation set, here the fixture's test set
    assert found["kd_logits"]["metrics"]["teacher_val_acc"] == pytest.approx(found["teacher"]["metrics"]["test_acc"])
    assert found["student_data"]["metrics"]["teacher_val_acc"] is None
    resolved = found["kd_logits"]["resolved_config"]  # the config as it ran, with the study's overrides applied
    assert resolved["model"]["init_args"]["teacher_ckpt"] == found["teacher"]["outputs"]["ckpt"]
    assert resolved["trainer"]["max_epochs"] == 3 and resolved["data"]["init_args"]["data_dir"] == str(tiny_zip)
    # examples: one test image per class, a prediction and a confidence per model
    examples = found["examples"]["metrics"]
    assert examples["labels"] == list(range(10)) and set(examples["models"]) == set(trained)


@pytest.mark.sparse  # the demo graph's GMP + QAT stage and DeepSparse
def test_second_run_skips_everything(finished, tiny_zip):
    study, out, _ = finished
    before = manifests(out)
    proc = lit_kd("study", study, "--out", out, "--data", tiny_zip, cwd=out.parent)
    assert proc.stdout.count(": skip (finished, inputs unchanged)") == len(before)
    assert manifests(out) == before


@pytest.mark.sparse  # the demo graph's GMP + QAT stage and DeepSparse
def test_killed_in_a_training_stage_resumes_and_ends_like_the_uninterrupted_run(finished, tiny_zip, tmp_path):
    study, reference_out, _ = finished
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("lit-kd")
    proc = subprocess.Popen(
        [str(exe), "study", str(study), "--out", str(out), "--data", str(tiny_zip)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = out / "kd_logits" / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not last.exists():  # kd_logits has written its first epoch: kill the whole process group mid-stage
        assert proc.poll() is None and time.time() < deadline, "the study ended before kd_logits wrote a checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = manifests(out)
    assert killed["kd_logits"]["status"] == "running" and "report" not in killed
    # naming the interrupted stage with --only resumes it too (it used to start over, throwing its epochs away)
    only = lit_kd("study", study, "--out", out, "--data", tiny_zip, "--only", "kd_logits", "--dry-run", cwd=tmp_path).stdout
    assert re.search(r"│ kd_logits +│ fit +│ resume ", only), only

    rerun = lit_kd("study", study, "--out", out, "--data", tiny_zip, cwd=tmp_path)
    assert "student_data: skip (finished, inputs unchanged)" in rerun.stdout
    assert "kd_logits: resume fit" in rerun.stdout
    assert re.search(r"kd_logits: done in [\d.]+ s \([\d.]+ s over 2 attempts\)", rerun.stdout), rerun.stdout
    resumed, reference = manifests(out), manifests(reference_out)
    assert resumed["kd_logits"]["attempts"] == 2
    for name in ("student_data", "kd_logits", "qat", "sparse", "prune_100k"):
        assert resumed[name]["metrics"]["test_acc"] == reference[name]["metrics"]["test_acc"], name
    ours = torch.load(resumed["kd_logits"]["outputs"]["last"], map_location="cpu", weights_only=False)["state_dict"]
    theirs = torch.load(reference["kd_logits"]["outputs"]["last"], map_location="cpu", weights_only=False)["state_dict"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.sparse  # the demo graph's GMP + QAT stage and DeepSparse
def test_from_reruns_a_stage_and_everything_after_it(finished, tiny_zip):
    study, out, _ = finished
    plan = lit_kd("study", study, "--out", out, "--data", tiny_zip, "--from", "sparse", "--dry-run", cwd=out.parent).stdout
    runs = set(re.findall(r"│ (\w+) +│ \w+ +│ run ", plan))
    assert runs == {"sparse", "export_sparse", "bench", "examples", "report"}


def ship(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_kd.study.ship", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.mark.sparse  # the demo graph's GMP + QAT stage and DeepSparse
def test_ship_writes_measured_weights_and_the_report_and_keeps_what_it_did_not_make(finished, tiny_zip, tmp_path):
    """python -m lit_kd.study.ship on the finished study: a float student, the QAT run's INT8 model and the sparse ONNX
    export, each reproduced by lit-kd classify; a rerun changes nothing; a different model under a shipped name is
    refused without --replace and takes its place with it."""
    _, out, _ = finished
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "README.md").write_text("# Weights\n\n<!-- weights:start -->\nold table\n<!-- weights:end -->\nkept\n")
    entries = [
        "student.pt=best_student",
        "student_int8.pt=qat:int8",
        "sparse.onnx=export_sparse:onnx",
        "student_100k.npz=prune_100k:compact",
    ]
    proc = ship(out, *entries, "--weights", weights, "--results", tmp_path / "results", "--data", tiny_zip, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped, stages = json.loads((weights / "weights.json").read_text()), manifests(out)
    assert sorted(shipped) == ["sparse.onnx", "student.pt", "student_100k.npz", "student_int8.pt"]
    chosen = stages["best_student"]["metrics"]["chosen"]
    student = shipped["student.pt"]
    assert student["stage"] == f"best_student ({chosen})" and student["format"] == "float weights"
    assert student["correct"] == round(stages[chosen]["metrics"]["test_acc"] * student["test_images"])  # the stage's own test
    assert shipped["student_int8.pt"]["format"] == "INT8 (torch)" and shipped["sparse.onnx"]["stage"] == "export_sparse (sparse)"
    compact = shipped["student_100k.npz"]  # the pruned run's non-zero weights, measured as the stage measured them
    assert compact["format"] == "compact (non-zero weights)" and compact["nonzero_params"] <= 100_000
    assert compact["correct"] == round(stages["prune_100k"]["metrics"]["test_acc"] * compact["test_images"])
    for name, entry in shipped.items():
        path = weights / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"] and entry["architecture"] == "resnet20_trunc"
        if name.endswith(".pt"):
            torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
        classified = lit_kd("classify", "--ckpt", path, "--data", tiny_zip, cwd=tmp_path).stdout
        assert f"({entry['correct']} of {entry['test_images']} test images correct)" in classified, name
        assert str(out.resolve()) not in entry["command"] and "<out>" in entry["command"]
        assert str(tiny_zip) not in entry["command"]  # the data set as $LIT_KD_CIFAR10
    readme = (weights / "README.md").read_text()
    assert "old table" not in readme and readme.endswith("<!-- weights:end -->\nkept\n")
    assert all(f"| `{name}` | resnet20_trunc |" in readme for name in shipped)
    report_files = sorted(p.relative_to(tmp_path / "results").as_posix() for p in (tmp_path / "results").rglob("*") if p.is_file())
    expected = ["report.html", "report.md", "results.json"] + [f"report_files/{p.name}" for p in (out / "report_files").glob("*.png")]
    assert report_files == sorted(expected) and (tmp_path / "results" / "results.json").read_bytes() == (out / "results.json").read_bytes()

    stamps = {name: ((weights / name).stat().st_mtime_ns, shipped[name]["sha256"]) for name in shipped}
    again = ship(out, *entries, "--weights", weights, "--data", tiny_zip, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    reshipped = json.loads((weights / "weights.json").read_text())
    assert {name: ((weights / name).stat().st_mtime_ns, e["sha256"]) for name, e in reshipped.items()} == stamps

    other = ship(out, "student.pt=prune_100k", "--weights", weights, "--data", tiny_zip, cwd=tmp_path)
    assert other.returncode == 2 and "exists with other content; pass --replace" in other.stderr
    assert hashlib.sha256((weights / "student.pt").read_bytes()).hexdigest() == student["sha256"]
    assert json.loads((weights / "weights.json").read_text()) == reshipped
    replaced = ship(out, "student.pt=prune_100k", "--replace", "--weights", weights, "--data", tiny_zip, cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    entry = json.loads((weights / "weights.json").read_text())["student.pt"]
    assert entry["stage"] == "prune_100k" and entry["sha256"] != student["sha256"]
    assert hashlib.sha256((weights / "student.pt").read_bytes()).hexdigest() == entry["sha256"]
    assert [p.name for p in weights.iterdir() if p.name.startswith(".")] == []  # no staged file left behind


@pytest.mark.sparse
@pytest.mark.parametrize(
    "entry, message",
    [
        ("student.pt", "expected FILE=STAGE[:OUTPUT]"),
        ("student.pt=no_such_stage", "stage 'no_such_stage': no manifest"),
        ("student.pt=qat:weights", "OUTPUT must be one of ckpt, int8, onnx, compact, got 'weights'"),
        ("student.npz=qat:compact", "stage 'qat' wrote no compact_weights.npz"),
        ("student.onnx=qat:int8", "a shipped int8 file is named *.pt"),
        ("student.pt=best_student:int8", "stage 'best_student' has no 'int8' output"),
        ("../student.pt=best_student", "FILE is a plain file name inside the weights folder"),
    ],
)
def test_ship_refuses_bad_entries_before_writing_anything(finished, tiny_zip, tmp_path, entry, message, capsys):
    from lit_kd.study.ship import main

    _, out, _ = finished
    assert main([str(out), entry, "--weights", str(tmp_path), "--data", str(tiny_zip)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.sparse  # the demo graph's GMP + QAT stage and DeepSparse
def test_a_changed_stage_reruns_with_its_dependents_only(finished, tiny_zip):
    """Runs after the tests that expect the finished study unchanged: it changes the ptq stage in place."""
    study, out, _ = finished
    changed = yaml.safe_load(study.read_text())
    changed["stages"]["ptq"]["ptq"]["bits"] = [8]
    study.with_name("changed.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    before = manifests(out)
    plan = lit_kd("study", study.with_name("changed.yaml"), "--out", out, "--data", tiny_zip, "--dry-run", cwd=out.parent).stdout
    assert re.search(r"│ ptq +│ ptq +│ run +│ its settings changed", plan), plan
    assert re.search(r"│ report +│ report +│ run +│ ptq runs before it", plan), plan
    lit_kd("study", study.with_name("changed.yaml"), "--out", out, "--data", tiny_zip, cwd=out.parent)
    after = manifests(out)
    assert {n for n in after if after[n]["started"] != before[n]["started"]} == {"ptq", "report"}
    assert {r["weight_bits"] for r in after["ptq"]["metrics"]["rows"] if r["runtime"] == "ours"} == {8}  # was {8, 4}
    assert before["ptq"]["attempts"] == 1 and after["ptq"]["attempts"] == 1  # a rerun starts over: not a second attempt


BROKEN = {
    "unknown reference": (
        {"a": {"fit": "CONFIG", "overrides": {"model.init_args.teacher_ckpt": "${nobody.ckpt}"}}},
        "stage 'a', overrides.model.init_args.teacher_ckpt: refers to unknown stage 'nobody'",
    ),
    "cycle": ({"a": {"select": ["b"]}, "b": {"select": ["a"]}}, "cycle: a -> b -> a"),
    "missing config": ({"a": {"fit": "nowhere.yaml"}}, "stage 'a', fit: config"),
    "bad override": ({"a": {"fit": "CONFIG", "overrides": {"model.init_arg.lr": 1}}}, "stage 'a', overrides.model.init_arg.lr"),
    "unknown output": ({"a": {"fit": "CONFIG"}, "b": {"ptq": {"ckpt": "${a.onnx}"}}}, "a fit stage has outputs"),
    "two kinds": ({"a": {"fit": "CONFIG", "ptq": {}}}, "stage 'a': needs exactly one of the keys"),
    "leaf typo": ({"a": {"fit": "CONFIG", "overrides": {"trainer.max_epoch": 1}}}, "stage 'a': the config"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_study_fails_before_anything_runs(case, tmp_path, tiny_zip):
    stages, message = BROKEN[case]
    config = str(STUDIES.parent / "cifar_cpu" / "student_data.yaml")
    text = yaml.safe_dump({"stages": stages}).replace("CONFIG", config)
    (tmp_path / "broken.yaml").write_text(text)
    proc = lit_kd("study", "broken.yaml", "--out", tmp_path / "out", "--data", tiny_zip, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split()) and "lit-kd study: error:" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_shipped_studies_load_and_seed_groups_expand(tmp_path):
    for path in STUDIES.glob("*.yaml"):
        study = load_study(path)
        assert list(study.stages)[-1] == "report" and study.stages["report"].needs
    cpu = load_study(STUDIES / "cifar_cpu.yaml")
    assert set(cpu.groups) == {"student_data", "kd_logits", "kd_features"}
    assert cpu.stages["best_student"].needs == [f"{g}.seed{s}" for g in ("student_data", "kd_logits", "kd_features") for s in (0, 1)]
    assert cpu.stages["kd_logits.seed1"].spec["overrides"]["seed_everything"] == 1
    bad = {
        "stages": {
            "s": {"fit": str(STUDIES.parent / "cifar_cpu" / "student_data.yaml"), "seeds": [0, 1]},
            "p": {"ptq": {"ckpt": "${s.ckpt}"}},
        }
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(StudyError, match=r"stage 'p', ptq.ckpt: 's' runs several seeds; name one \(s.seed0, s.seed1\)"):
        load_study(tmp_path / "bad.yaml")


def test_the_compress_study_repeats_the_full_studys_compression_stages():
    """cifar_cpu_compress.yaml is cifar_cpu.yaml's compression half with the shipped student in place of best_student:
    the stages must not drift apart, and the recipe they fine-tune with is the one the shipped student came from."""
    full = yaml.safe_load((STUDIES / "cifar_cpu.yaml").read_text())["stages"]
    compress = yaml.safe_load((STUDIES / "cifar_cpu_compress.yaml").read_text())["stages"]
    shipped = json.loads((REPO / "weights" / "weights.json").read_text())["resnet20_trunc_student.pt"]
    group = shipped["stage"].split("(")[-1].rstrip(")").split(".")[0]  # "best_student (kd_features.seed1)" -> kd_features
    config = f"../cifar_cpu/{group}.yaml"
    assert compress["student"]["weights"] == "../../weights/resnet20_trunc_student.pt"
    for name in ("ptq", "qat", "sparse", "prune_100k", "export_dense", "export_sparse", "bench"):
        expected = json.loads(json.dumps(full[name]).replace("${best_student.", "${student."))
        if "fit" in expected:
            expected["fit"] = config
            if group != "student_data":
                expected["overrides"] = {"model.init_args.teacher_ckpt": "${teacher.ckpt}", **expected["overrides"]}
        assert without_description(compress[name]) == without_description(expected), name


def without_description(stage: dict) -> dict:
    return {k: v for k, v in stage.items() if k != "description"}


def test_use_lets_shipped_weights_stand_in_for_a_fit_stage(tmp_path, tiny_zip):
    study = STUDIES / "cifar_cpu.yaml"
    weights = REPO / "weights" / "resnet20_teacher.pt"
    plan = lit_kd(
        "study", study, "--out", tmp_path / "out", "--data", tiny_zip, "--use", f"teacher={weights}", "--dry-run", cwd=tmp_path
    ).stdout
    assert re.search(r"│ teacher +│ weights +│ run +│ never run", plan), plan
    assert load_study(study, {"teacher": str(weights)}).stages["teacher"].spec["model"] == "resnet20"
    bad = lit_kd("study", study, "--out", tmp_path / "out", "--use", "best_student=x.pt", "--dry-run", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "'best_student' is not a fit stage" in bad.stderr
    assert not (tmp_path / "out").exists()


def test_a_failing_stage_stops_the_study_with_its_own_error_line(tmp_path, tiny_zip):
    (tmp_path / "junk.ckpt").write_text("not a checkpoint\n")
    study = tmp_path / "fails.yaml"
    study.write_text(yaml.safe_dump({"stages": {"ptq": {"ptq": {"ckpt": str(tmp_path / "junk.ckpt"), "bits": [8]}}}}))
    proc = lit_kd("study", study, "--out", tmp_path / "out", "--data", tiny_zip, cwd=tmp_path, check=False)
    stderr = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "study stopped at stage 'ptq' (1/1): lit-kd ptq: error: --ckpt" in stderr and "junk.ckpt" in stderr, stderr
    assert "resume with: lit-kd study" in stderr and "Traceback" not in proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "out" / "ptq" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("lit-kd ptq: error: --ckpt")
    error_file = tmp_path / "out" / "ptq" / "error.txt"  # the whole traceback, named by the one-line message
    assert f"(traceback: {error_file})" in stderr
    trace = error_file.read_text()
    assert trace.startswith("Traceback (most recent call last)") and "junk.ckpt" in trace.splitlines()[-1], trace


def test_a_rerun_clears_the_stage_dir_but_keeps_keyed_caches(tmp_path):
    from lit_kd.study.runner import clear_stage_dir

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "ptq.json").write_text("{}")
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "ptq.cache.json").write_text('{"key": "k"}')
    clear_stage_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ptq.cache.json"]


def test_stage_clock_keeps_the_running_manifest_time_current_then_stops(tmp_path):
    from lit_kd.study.manifest import StageClock, read_manifest

    manifest = {"stage": "s", "status": "running", "wall_s": 5.0}
    with StageClock(tmp_path, manifest, base_s=5.0, interval=0.05) as clock:
        time.sleep(0.5)
        written = read_manifest(tmp_path)  # what a resumed attempt would start from if this one were killed now
    assert written["status"] == "running" and 5.3 <= written["wall_s"] <= clock.seconds() < 7.0
    stamp = (tmp_path / "manifest.json").stat().st_mtime_ns
    time.sleep(0.2)
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == stamp  # no write after the stage ended


def test_sigterm_stops_the_study_as_stopped_not_failed(tmp_path, tiny_zip, monkeypatch, capsys):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_kd.commands import study as study_command
    from lit_kd.study.kinds import KINDS

    def terminated(*args):
        raise SIGTERMException(15)  # what Lightning raises when SIGTERM arrives during a fit

    monkeypatch.setattr(KINDS["ptq"], "run", terminated)
    (tmp_path / "x.ckpt").write_bytes(b"never read: the stage is stopped first")
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"stages": {"ptq": {"ptq": {"ckpt": str(tmp_path / "x.ckpt"), "bits": [8]}}}}))
    assert study_command.main([str(study), "--out", str(tmp_path / "out"), "--data", str(tiny_zip)]) == 143
    err = " ".join(capsys.readouterr().err.split())
    assert "study stopped by SIGTERM at stage 'ptq' (1/1); resume with: lit-kd study" in err and "fix the cause" not in err
    manifest = json.loads((tmp_path / "out" / "ptq" / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["error"] == "stopped by SIGTERM" and manifest["traceback"] is None


def test_report_cells_align_numbers_right_and_let_sentences_wrap():
    """Short numbers right-aligned on one line; a sentence that starts with a number ("+1.56 points vs ...") is text:
    right-aligned and unwrapped it pushed the key-results table past the page's right edge."""
    assert _cell("84.61 %") == "<td class='num'>84.61 %</td>" and _cell("-") == "<td class='num'>-</td>"
    assert _cell("73.05 ± 1.44 %") == "<td class='num'>73.05 ± 1.44 %</td>"
    assert (
        _cell("+11.24 points vs data only; +3.75 points after 6 epochs")
        == "<td>+11.24 points vs data only; +3.75 points after 6 epochs</td>"
    )
    assert _cell("kd_logits") == "<td>kd_logits</td>"


def test_report_says_which_training_stages_validated_on_the_test_set():
    """With val_split 0 the plateau rule and best.ckpt read test accuracy: the report must say so, and only then."""

    def fit(val_split):
        return {"kind": "fit", "resolved_config": {"data": {"init_args": {"val_split": val_split}}}}

    shipped = {"kind": "weights"}
    assert validation_note({"a": fit(0), "b": fit(0), "teacher": shipped}).startswith("All training stages validated on the test set")
    assert validation_note({"a": fit(0), "b": fit(5000)}).startswith("1 of the 2 training stages validated on the test set")
    assert validation_note({"a": fit(5000), "teacher": shipped}) == ""


def test_wall_time_names_the_attempts_of_a_resumed_stage():
    assert wall_time({"wall_s": 8079.3, "attempts": 4}) == "134.7 min (4 attempts)"
    assert wall_time({"wall_s": 60.0, "attempts": 1}) == wall_time({"wall_s": 60.0}) == "1.0 min"
