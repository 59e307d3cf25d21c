"""The real CLI end to end on the tiny fixture data: fit, test from the best checkpoint, resume, DDP, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.modules import ClassifierModule
from tests.conftest import REPO
from tests.helpers import load_state, read_events, run_cli, run_console_script, scalars, write_config


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_then_test_from_best_checkpoint_reproduces_accuracy(tiny_zip, workdir):
    config = write_config(workdir / "tiny.yaml", tiny_zip, epochs=3)
    cli = run_cli("fit", "--config", config)
    run_dir = workdir / "lightning_logs" / "tiny" / "version_0"
    best, last = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    assert best.is_file() and last.is_file() and (run_dir / "config.yaml").is_file()
    assert Path(cli.trainer.checkpoint_callback.best_model_path).resolve() == best
    best_val = cli.trainer.checkpoint_callback.best_model_score.item()

    events = read_events(run_dir)
    tags = events.Tags()
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert len(events.Scalars(tag)) == 3, tag
    assert "val/examples" in tags["images"]  # the example-predictions figure
    assert max(scalars(run_dir, "val/acc")) == pytest.approx(best_val)

    # validation ran on the test set (val_split 0), so testing the best checkpoint must give exactly best val/acc
    tested = run_cli("test", "--config", run_dir / "config.yaml", "--ckpt_path", best)
    assert tested.trainer.callback_metrics["test/acc"].item() == pytest.approx(best_val, abs=1e-6)
    assert best_val > 0.3  # ten classes: chance is 0.1; the fixture's classes are easy to tell apart
    assert (workdir / "lightning_logs" / "tiny" / "version_1").is_dir()  # the saved config keeps the name


def test_test_ckpt_path_takes_a_weights_file(trained_ckpt, tiny_zip, workdir):
    """A portable weights file (hyperparameters without LightningCLI's _class_path) tests under a config that builds
    its network, with the accuracy of the checkpoint it was written from."""
    from lit_kd.checkpoints import load_network, write_weights_file

    weights = write_weights_file(load_network(trained_ckpt), "resnet8", workdir / "weights.ckpt")
    config = write_config(workdir / "w.yaml", tiny_zip, model="resnet8")
    from_weights = run_cli("test", "--config", config, "--ckpt_path", weights).trainer.callback_metrics["test/acc"].item()
    from_run = run_cli("test", "--config", config, "--ckpt_path", trained_ckpt).trainer.callback_metrics["test/acc"].item()
    assert from_weights == from_run > 0.3


def test_resume_from_last_equals_uninterrupted_run(tiny_zip, workdir):
    config = write_config(workdir / "resume.yaml", tiny_zip, epochs=3)
    run_cli("fit", "--config", config)
    run_cli("fit", "--config", config, "--trainer.max_epochs", "1")
    interrupted = workdir / "lightning_logs" / "resume" / "version_1" / "checkpoints" / "last.ckpt"
    run_cli("fit", "--config", config, "--ckpt_path", interrupted)

    logs = workdir / "lightning_logs" / "resume"
    assert not (logs / "version_2").exists()  # the resumed run continues in the interrupted run's directory
    full, resumed = load_state(logs / "version_0/checkpoints/last.ckpt"), load_state(interrupted)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    for tag in ("val/acc", "train/loss"):
        assert len(scalars(logs / "version_0", tag)) == 3
        assert scalars(logs / "version_0", tag) == scalars(logs / "version_1", tag), tag


def test_console_script_fit_test_and_ddp(tiny_zip, workdir):
    config = write_config(workdir / "ddp.yaml", tiny_zip, epochs=1, batch_size=24)
    run_console_script(
        "fit", "--config", config, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", cwd=workdir
    )
    ckpt = torch.load(workdir / "lightning_logs/ddp/version_0/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 240 // 2 // 24  # each of the two processes saw half the batches
    out = run_console_script(
        "test", "--config", config, "--ckpt_path", workdir / "lightning_logs/ddp/version_0/checkpoints/last.ckpt", cwd=workdir
    )
    assert "test/acc" in out.stdout


EXPERIMENTS = REPO / "experiments"
# every LightningCLI config, at the top and in the study folders; not the study files or the SparseML recipes
EXPERIMENT_CONFIGS = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if p.parent.name not in ("studies", "recipes"))


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.relative_to(EXPERIMENTS).as_posix())
def test_every_experiment_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", config, "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("lit_kd.") and printed["data"]["class_path"].startswith("lit_kd.")


def test_load_from_checkpoint_rebuilds_named_model(tiny_zip, workdir):
    config = write_config(workdir / "load.yaml", tiny_zip, epochs=1, model="resnet20")
    run_cli("fit", "--config", config)
    module = ClassifierModule.load_from_checkpoint(workdir / "lightning_logs/load/version_0/checkpoints/last.ckpt")
    assert module.hparams.model == "resnet20" and module.model.linear.out_features == 10


def test_module_from_class_path(tiny_zip, workdir):
    config = write_config(workdir / "classpath.yaml", tiny_zip, epochs=1)
    run_cli(
        "fit",
        "--config",
        config,
        "--model.model",
        "torchvision.models.ResNet",
        "--model.model.block",
        "torchvision.models.resnet.BasicBlock",
        "--model.model.layers",
        "[1, 1, 1, 1]",
        "--model.model.num_classes",
        "10",
    )
    hparams = yaml.safe_load((workdir / "lightning_logs/classpath/version_0/hparams.yaml").read_text())
    assert hparams["model"]["class_path"] == "torchvision.models.ResNet"
    module = ClassifierModule.load_from_checkpoint(workdir / "lightning_logs/classpath/version_0/checkpoints/last.ckpt")
    assert type(module.model).__name__ == "ResNet" and len(module.model.layer1) == 1


def test_unknown_model_name_fails_clearly(tiny_zip, workdir):
    config = write_config(workdir / "bad.yaml", tiny_zip, model="resnet7")
    with pytest.raises(ValueError, match=r"unknown model 'resnet7'"):
        run_cli("fit", "--config", config)


def test_default_root_dir_is_where_logs_and_checkpoints_go(tiny_zip, workdir):
    config = write_config(workdir / "rooted.yaml", tiny_zip, epochs=1)
    run_cli("fit", "--config", config, "--trainer.default_root_dir", workdir / "elsewhere", "--trainer.limit_train_batches", "2")
    assert (workdir / "elsewhere" / "rooted" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (workdir / "lightning_logs" / "rooted").exists()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_fit_ckpt_path_of_another_run_never_writes_into_it(tiny_zip, workdir):
    """`fit --ckpt_path <another run's best.ckpt>` with another config (same experiment name or not) logs to a new
    version directory and leaves that run byte-identical; a logger pointed into it explicitly is refused; the same
    config resumes in place."""
    config = write_config(workdir / "a.yaml", tiny_zip, model="resnet8", epochs=1, train_size=64, lr_scheduler=None)
    run_cli("fit", "--config", config)
    run_a = workdir / "lightning_logs" / "a" / "version_0"
    before = _snapshot(run_a)
    assert {"config.yaml", "hparams.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= set(before)
    best = run_a / "checkpoints" / "best.ckpt"

    # same experiment name, another config (a data setting: the checkpoint's hyperparameters replace model settings)
    cli = run_cli("fit", "--config", config, "--data.init_args.batch_size", "16", "--trainer.max_epochs", "2", "--ckpt_path", best)
    assert Path(cli.trainer.log_dir).resolve() == (workdir / "lightning_logs" / "a" / "version_1").resolve()
    assert cli.trainer.global_step > 0 and (workdir / "lightning_logs/a/version_1/checkpoints/last.ckpt").is_file()
    # another experiment, its config otherwise identical
    other = workdir / "b.yaml"
    other.write_text(config.read_text())
    cli = run_cli("fit", "--config", other, "--trainer.max_epochs", "2", "--ckpt_path", best)
    assert Path(cli.trainer.log_dir).resolve() == (workdir / "lightning_logs" / "b" / "version_0").resolve()
    # a logger pointed into run A with another config: refused before anything is written there
    with pytest.raises(ValueError, match=r"config.yaml belongs to a run with a different config \(differs in: .*data.init_args.batch_size"):
        run_cli(
            "fit",
            "--config",
            config,
            "--data.init_args.batch_size",
            "16",
            "--trainer.max_epochs",
            "2",
            "--ckpt_path",
            best,
            "--trainer.logger",
            "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.save_dir",
            "lightning_logs",
            "--trainer.logger.name",
            "a",
            "--trainer.logger.version",
            "version_0",
        )
    assert _snapshot(run_a) == before
    # `test` logging into run A (the study's reproduction command does) leaves its config.yaml as it is
    run_cli(
        "test",
        "--config",
        run_a / "config.yaml",
        "--ckpt_path",
        best,
        "--trainer.logger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.save_dir",
        "lightning_logs",
        "--trainer.logger.name",
        "a",
        "--trainer.logger.version",
        "version_0",
    )
    assert (run_a / "config.yaml").read_bytes() == before["config.yaml"]

    # the same config (a longer budget) continues in run A
    cli = run_cli("fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", run_a / "checkpoints" / "last.ckpt")
    assert Path(cli.trainer.log_dir).resolve() == run_a.resolve()
    assert sorted(p.name for p in (workdir / "lightning_logs" / "a").iterdir()) == ["version_0", "version_1"]
    assert yaml.safe_load((run_a / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert torch.load(run_a / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_config_differences_ignore_only_the_resume_keys():
    from lit_kd.run_config import config_differences

    saved = {
        "seed_everything": 0,
        "ckpt_path": None,
        "trainer": {"max_epochs": 3, "enable_progress_bar": True, "callbacks": None},
        "model": {"init_args": {"lr": 0.1}},
    }
    resumed = {
        "seed_everything": 0,
        "ckpt_path": "x/last.ckpt",
        "trainer": {"max_epochs": 9, "enable_progress_bar": False, "callbacks": None, "model_registry": None},
        "model": {"init_args": {"lr": 0.1}},
    }
    assert config_differences(saved, resumed) == []  # a new trainer argument of a newer Lightning counts as null
    assert config_differences(saved, resumed | {"seed_everything": 1}) == ["seed_everything"]
    assert config_differences(saved, {**resumed, "model": {"init_args": {"lr": 0.2}}}) == ["model.init_args.lr"]
    callbacks = {**resumed["trainer"], "callbacks": [{"class_path": "X"}]}
    assert config_differences(saved, {**resumed, "trainer": callbacks}) == ["trainer.callbacks"]


def test_an_argument_added_since_a_run_was_made_counts_as_its_default():
    """A run resumed by a newer lit-kd (or Lightning) whose modules have gained arguments: a new argument at its
    declared default is no difference, at any other value it is."""
    from lit_kd.run_config import config_differences

    old = {"model": {"class_path": "lit_kd.modules.ClassifierModule", "init_args": {"model": "resnet20"}}, "trainer": {"max_epochs": 3}}
    new = {"model": {"class_path": "lit_kd.modules.ClassifierModule", "init_args": {"model": "resnet20", "hflip_tta": False}}}
    new["trainer"] = {"max_epochs": 3, "max_time": None, "enable_checkpointing": None}
    assert config_differences(old, new) == [] and config_differences(new, old) == []
    assert config_differences(old, {**new, "trainer": {"max_epochs": 3, "reload_dataloaders_every_n_epochs": 0}}) == []  # the default
    assert config_differences(old, {**new, "trainer": {"max_epochs": 3, "reload_dataloaders_every_n_epochs": 1}}) == [
        "trainer.reload_dataloaders_every_n_epochs"
    ]
    flipped = {"model": {**new["model"], "init_args": {"model": "resnet20", "hflip_tta": True}}}
    assert config_differences(old, flipped) == ["model.init_args.hflip_tta"]
    unknown = {"model": {"class_path": "nowhere.Module", "init_args": {"model": "resnet20", "hflip_tta": False}}}
    assert config_differences({"model": {"class_path": "nowhere.Module", "init_args": {"model": "resnet20"}}}, unknown) == [
        "model.init_args.hflip_tta"
    ]


def test_atomic_checkpoint_io_composes_with_user_plugins(tiny_zip, workdir):
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.plugins import AsyncCheckpointIO, DoublePrecision, TorchCheckpointIO

    from lit_kd.checkpoints import AtomicCheckpointIO
    from lit_kd.lightning_cli import with_atomic_checkpoint_io

    assert [type(p) for p in with_atomic_checkpoint_io(None)] == [AtomicCheckpointIO]
    env, precision = LightningEnvironment(), DoublePrecision()
    plugins = with_atomic_checkpoint_io([env, precision])
    assert plugins[:2] == [env, precision] and isinstance(plugins[2], AtomicCheckpointIO)
    assert with_atomic_checkpoint_io(env)[0] is env
    own = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([own]) == [own]  # the user's own IO is theirs
    wrapped = with_atomic_checkpoint_io([AsyncCheckpointIO()])
    assert len(wrapped) == 1 and isinstance(wrapped[0].checkpoint_io, AtomicCheckpointIO)

    # through the CLI: an environment plugin given with --trainer.plugins keeps the checkpoints atomic
    config = write_config(workdir / "plugins.yaml", tiny_zip, model="resnet8", epochs=1, train_size=32, lr_scheduler=None)
    cli = run_cli(
        "fit",
        "--config",
        config,
        "--trainer.plugins",
        "lightning.fabric.plugins.environments.LightningEnvironment",
        "--trainer.limit_val_batches",
        "1",
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(cli.trainer._accelerator_connector.cluster_environment, LightningEnvironment)
    assert (workdir / "lightning_logs/plugins/version_0/checkpoints/last.ckpt").is_file()


def test_a_model_argument_the_checkpoint_replaces_is_named_in_a_warning(trained_ckpt, tiny_zip, workdir):
    config = write_config(workdir / "w.yaml", tiny_zip, model="resnet8")
    with pytest.warns(UserWarning, match=r"replace the config's model arguments \(init_args\.hflip_tta=True -> False\)"):
        tested = run_cli("test", "--config", config, "--ckpt_path", trained_ckpt, "--model.init_args.hflip_tta", "true")
    assert "test/acc_hflip" not in tested.trainer.callback_metrics  # as the warning says: the checkpoint's False stood
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*replace the config's model arguments.*")
        run_cli("test", "--config", config, "--ckpt_path", trained_ckpt)  # nothing replaced, nothing said
