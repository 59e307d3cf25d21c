"""WarmStart: a fit starts from another run's network weights; a resumed run continues from its own last.ckpt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.checkpoints import network_state, read_checkpoint
from lit_kd.models import build_model
from tests.helpers import run_cli, write_config


def config_with(path: Path, data: Path, init_ckpt: Path, lr: float, model: str = "resnet8") -> Path:
    write_config(path, data, model=model, epochs=1, lr_scheduler=None, optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": lr}})
    config = yaml.safe_load(path.read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lit_kd.callbacks.WarmStart", "init_args": {"init_ckpt": str(init_ckpt)}}]
    path.write_text(yaml.safe_dump(config))
    return path


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_fit_starts_from_the_given_weights(tiny_zip, trained_ckpt, in_tmp):
    start = network_state(read_checkpoint(trained_ckpt))
    cli = run_cli("fit", "--config", config_with(in_tmp / "c.yaml", tiny_zip, trained_ckpt, lr=0.0))
    after = parameters(cli.model.model)
    # lr 0: every parameter is still the checkpoint's (BatchNorm running statistics move, parameters do not)
    assert all(torch.equal(after[k], start[k]) for k in after)
    torch.manual_seed(0)
    init = parameters(build_model("resnet8"))  # what the run would have started from without WarmStart
    assert not all(torch.equal(after[k], init[k]) for k in after)


def test_resumed_run_keeps_its_own_weights(tiny_zip, trained_ckpt, in_tmp):
    first = run_cli("fit", "--config", config_with(in_tmp / "c.yaml", tiny_zip, trained_ckpt, lr=0.05))
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    trained = network_state(read_checkpoint(last))
    assert not all(torch.equal(trained[k], v) for k, v in network_state(read_checkpoint(trained_ckpt)).items())
    # the run already holds its one epoch: resuming restores last.ckpt over the warm start and trains no further
    resumed = run_cli("fit", "--config", in_tmp / "c.yaml", "--ckpt_path", last)
    after = parameters(resumed.model.model)
    assert all(torch.equal(after[k], trained[k]) for k in after)


def test_checkpoint_of_another_architecture_is_named(tiny_zip, trained_ckpt, in_tmp):
    with pytest.raises(ValueError, match=r"does not fit .*another architecture"):
        run_cli("fit", "--config", config_with(in_tmp / "c.yaml", tiny_zip, trained_ckpt, lr=0.0, model="resnet20"))
