"""What every stage manifest records about where it ran: the code version and the accelerator."""

from __future__ import annotations

import subprocess

import torch

from lit_kd.study.manifest import environment
from tests.conftest import REPO


def test_environment_names_the_code_version_and_the_accelerator():
    env = environment()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # a checkout: the commit the stage ran, marked dirty when the tree differs from it
        assert env["code"].startswith("git ") and head[:7] in env["code"]
    else:
        assert env["code"].startswith(("lit-kd ", "unknown"))
    assert env["accelerator"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert {"cpu", "versions", "python"} <= set(env)
