"""Nothing a user made is lost or trusted blindly: crafted checkpoints are refused everywhere, outputs are written
atomically (temporary file, fsync, rename), and a ``fit`` killed with SIGKILL while writing checkpoints resumes to
exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lit_kd.atomic import atomic_path, remove_stale_temps, write_json, write_text
from lit_kd.checkpoints import AtomicCheckpointIO, load_network, read_checkpoint, safe_load, write_weights_file
from lit_kd.models import build_model
from tests.helpers import QUIET, load_state, run_cli, write_config
from tests.test_classify import _WritesMarker

TRUST = "LIT_KD_TRUST_CHECKPOINTS"


# ------------------------------------------------------------------------------------------------ safe loading
@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A checkpoint-looking file whose unpickling would create ``marker``."""
    monkeypatch.delenv(TRUST, raising=False)
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": "resnet8"}, "payload": _WritesMarker(marker)}, path)
    return SimpleNamespace(path=path, marker=marker)


def test_a_crafted_checkpoint_is_refused_by_every_loader(crafted, tiny_zip, tmp_path, monkeypatch):
    from lit_kd.callbacks import IterativePruning, QuantizationAwareTraining, load_int8_model
    from lit_kd.modules import ClassifierModule
    from lit_kd.modules.distillation import resolve_teacher

    refused = f"refused to load .*crafted.ckpt.* pickled Python objects .* {TRUST}=1"
    module = ClassifierModule("resnet8")
    loaders = {
        "load_network": lambda: load_network(crafted.path),
        "teacher_ckpt alone": lambda: resolve_teacher(None, str(crafted.path), None, 10),
        "teacher + teacher_ckpt": lambda: resolve_teacher("resnet8", str(crafted.path), None, 10),
        "QAT init_ckpt": lambda: QuantizationAwareTraining(init_ckpt=str(crafted.path)).setup(None, module, "fit"),
        "pruning init_ckpt": lambda: IterativePruning(10_000, init_ckpt=str(crafted.path)).setup(None, module, "fit"),
        "load_int8_model": lambda: load_int8_model(crafted.path),
        "AtomicCheckpointIO (--ckpt_path)": lambda: AtomicCheckpointIO().load_checkpoint(crafted.path),
    }
    for name, load in loaders.items():
        with pytest.raises(ValueError, match=refused):
            load()
        assert not crafted.marker.exists(), name

    # the real CLI: `lit-kd test --ckpt_path crafted.ckpt` goes through the same reader
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=refused):
        run_cli("test", "--config", write_config(tmp_path / "t.yaml", tiny_zip, model="resnet8"), "--ckpt_path", crafted.path)
    assert not crafted.marker.exists()

    # the file really is dangerous: with the explicit trust flag it is unpickled and the marker appears
    monkeypatch.setenv(TRUST, "1")
    read_checkpoint(crafted.path)
    assert crafted.marker.exists()


def test_own_outputs_load_without_trust(tmp_path, monkeypatch):
    """Everything lit-kd writes for later loading holds tensors and plain data only."""
    from lit_kd.quant.torch_qat import convert_int8, load_int8_model, prepare_qat, save_int8_model

    monkeypatch.delenv(TRUST, raising=False)
    network = build_model("resnet8").eval()
    weights = write_weights_file(network, "resnet8", tmp_path / "w" / "model.ckpt")
    assert torch.load(weights, weights_only=True)["hyper_parameters"]["model"] == "resnet8"
    assert all(torch.equal(a, b) for a, b in zip(load_network(weights).state_dict().values(), network.state_dict().values()))
    recipe = {"network": "resnet8", "network_kwargs": None, "num_classes": 10, "backend": "x86", "input_shape": (1, 3, 32, 32)}
    prepared = prepare_qat(build_model("resnet8"), "x86", (1, 3, 32, 32))
    prepared(torch.randn(4, 3, 32, 32))  # observers see data
    int8 = save_int8_model(convert_int8(prepared), recipe, tmp_path / "int8_model.pt")
    loaded = load_int8_model(int8)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), convert_int8(prepared)(x))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["int8_model.pt", "model.ckpt", "w"]  # no temporary file


# ------------------------------------------------------------------------------------------------ atomic writes
def test_atomic_path_keeps_the_old_file_and_removes_its_temp_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("writer failed half way")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_study_manifests_and_figures_are_written_atomically(tmp_path, monkeypatch):
    """The study's manifest and figure writers go through lit_kd.atomic: a write that fails at the rename leaves
    the previous file and no temporary file."""
    import matplotlib.pyplot as plt

    import lit_kd.atomic as atomic
    from lit_kd.atomic import save_figure
    from lit_kd.study.manifest import read_manifest, write_manifest

    write_manifest(tmp_path, {"status": "done"})
    fig = plt.figure()
    save_figure(fig, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes().startswith(b"\x89PNG")

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail_replace)
    with pytest.raises(OSError):
        write_manifest(tmp_path, {"status": "running"})
    with pytest.raises(OSError):
        save_figure(plt.figure(), tmp_path / "figure.png")
    monkeypatch.undo()
    assert read_manifest(tmp_path) == {"status": "done"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "manifest.json"]


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited and reaped: no process has this pid (until it is reused)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            name: tmp_path / name
            for name in (
                f".last.ckpt.tmp{dead_pid}",
                f".best.ckpt.tmp{alive.pid}",
                f".last.ckpt.tmp{os.getpid()}",
                "last.ckpt",
                "notes.tmp1",
            )
        }
        for path in files.values():
            path.write_bytes(b"x")
        assert remove_stale_temps(tmp_path) == [files[f".last.ckpt.tmp{dead_pid}"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(files) - {f".last.ckpt.tmp{dead_pid}"})
        remove_stale_temps(tmp_path, include_own=True)  # at the start of a run nothing of ours is being written
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".best.ckpt.tmp{alive.pid}", "last.ckpt", "notes.tmp1"])
    finally:
        alive.kill()
        alive.wait()


# ------------------------------------------------------------------------------------------------ SIGKILL during checkpoint writes
# Loaded into the `lit-kd fit` subprocess through PYTHONPATH: its Nth torch.save to a temporary file writes half
# (or all) of the bytes, fsyncs them, tells the test where it is, and waits there to be killed.
HANG_HOOK = """
import os
if os.environ.get("LIT_KD_TEST_HANG"):
    import io, time, torch
    _save, _count = torch.save, [0]
    _at, _mode = os.environ["LIT_KD_TEST_HANG"].split(":")

    def _slow_save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)) or ".tmp" not in os.path.basename(os.fspath(f)):
            return _save(obj, f, *args, **kwargs)
        _count[0] += 1
        buffer = io.BytesIO()
        _save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(f, "wb") as handle:
            if _count[0] != int(_at):
                handle.write(data)
                return
            handle.write(data[: len(data) // 2 if _mode == "half" else len(data)])
            handle.flush()
            os.fsync(handle.fileno())
            with open(os.environ["LIT_KD_TEST_SIGNAL"], "w") as signal_file:
                signal_file.write(os.fspath(f))
            time.sleep(600)

    torch.save = _slow_save
"""

# (checkpoint write number in that process, how much of it is on disk when the process is killed). The run's
# writes: epoch 0 best + last, epoch 1 last, epoch 2 best + last (val/acc 0.3, 0.3, 0.4). So: run 1 is killed half
# way through epoch 1's last.ckpt; run 2 (resumed from epoch 0) after writing all of epoch 2's best.ckpt to its
# temporary file, before the rename; run 3 (resumed from epoch 1) half way through epoch 2's last.ckpt (its best.ckpt
# complete); run 4 (resumed from epoch 1) finishes.
KILL_POINTS = [(3, "half"), (2, "full"), (2, "half")]


def _temps(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".tmp" in p.name)


def _kill_while_writing(proc: subprocess.Popen, signal_file: Path, log: Path) -> Path:
    deadline = time.monotonic() + 240
    while not signal_file.exists():
        if proc.poll() is not None:
            pytest.fail(f"lit-kd fit ended (status {proc.returncode}) before the write to kill it in:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint write to kill it in:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    tmp = Path(signal_file.read_text())
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    signal_file.unlink()
    return tmp


def test_fit_killed_during_checkpoint_writes_resumes_to_the_uninterrupted_weights(tiny_zip, tmp_path, monkeypatch):
    config = write_config(
        tmp_path / "killed.yaml",
        tiny_zip,
        model="resnet8",
        epochs=3,
        train_size=96,
        lr_scheduler=None,
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.02, "momentum": 0.9}},
    )
    spec = yaml.safe_load(config.read_text())
    spec["model"]["init_args"]["num_example_images"] = 0
    config.write_text(yaml.safe_dump(spec))

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    monkeypatch.chdir(reference_dir)
    run_cli("fit", "--config", config)
    reference = reference_dir / "lightning_logs" / "killed" / "version_0" / "checkpoints" / "last.ckpt"

    work = tmp_path / "killed"
    work.mkdir()
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HANG_HOOK)
    signal_file = tmp_path / "hanging"
    run_dir = work / "lightning_logs" / "killed" / "version_0"
    ckpt_dir = run_dir / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(hook_dir), "PYTHONUNBUFFERED": "1", "LIT_KD_TEST_SIGNAL": str(signal_file)}
    lit_kd = Path(sys.executable).with_name("lit-kd")

    def fit(hang: str | None, log: Path, resume: bool) -> subprocess.Popen:
        args = [str(lit_kd), "fit", "--config", str(config), *QUIET]
        if resume:
            args += ["--ckpt_path", str(ckpt_dir / "last.ckpt")]
        run_env = {**env, "LIT_KD_TEST_HANG": hang} if hang else {k: v for k, v in env.items() if k != "LIT_KD_TEST_HANG"}
        with log.open("w") as out:
            return subprocess.Popen(args, cwd=work, env=run_env, stdout=out, stderr=subprocess.STDOUT)

    left_behind, killed_in = None, []
    for i, (write, mode) in enumerate(KILL_POINTS):
        log = tmp_path / f"run{i}.log"
        tmp = work / _kill_while_writing(fit(f"{write}:{mode}", log, resume=i > 0), signal_file, log)  # relative to work
        # killed mid-write: its temporary file stays, no other (the previous run's was removed when this one started)
        assert tmp.parent == ckpt_dir and _temps(ckpt_dir) == [tmp], (i, _temps(ckpt_dir))
        assert left_behind is None or not left_behind.exists()
        left_behind = tmp
        killed_in.append(tmp.name.split(".tmp")[0])
        if mode == "half":
            with pytest.raises(ValueError, match="could not be read"):
                safe_load(tmp)  # a truncated file...
        # ...but never a truncated checkpoint: every .ckpt is complete
        finished = {p.name: safe_load(p)["global_step"] for p in ckpt_dir.glob("*.ckpt")}
        assert "last.ckpt" in finished, (i, finished)
    assert killed_in == [".last.ckpt", ".best.ckpt", ".last.ckpt"], f"the kill points moved ({killed_in}): adjust KILL_POINTS"

    log = tmp_path / "final.log"
    proc = fit(None, log, resume=True)
    assert proc.wait(300) == 0, log.read_text()[-4000:]

    assert sorted(p.name for p in (work / "lightning_logs" / "killed").iterdir()) == ["version_0"]  # resumed in place
    assert _temps(ckpt_dir) == []
    for ckpt in ckpt_dir.glob("*.ckpt"):
        safe_load(ckpt)
    ours, theirs = safe_load(ckpt_dir / "last.ckpt"), safe_load(reference)
    assert ours["global_step"] == theirs["global_step"] == 9  # 3 epochs of 96 images in batches of 32
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key in theirs["state_dict"]:
        assert torch.equal(ours["state_dict"][key], theirs["state_dict"][key]), key
    assert load_state(ckpt_dir / "best.ckpt").keys() == theirs["state_dict"].keys()
