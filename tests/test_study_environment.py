"""What every stage manifest records about where it ran: the code version, the package versions and the accelerator."""

from __future__ import annotations

import subprocess
from importlib.metadata import version

import pytest
import torch

from lit_kd.compat.extras import installed
from lit_kd.study import manifest
from lit_kd.study.manifest import describe_code, environment
from tests.conftest import REPO


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_environment_names_the_commit_whether_the_tree_is_dirty_and_the_accelerator():
    env = environment()
    assert (REPO / ".git").exists(), "the tests run from a checkout"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    assert env["code"] == {"commit": git("rev-parse", "HEAD"), "dirty": dirty}
    assert len(env["code"]["commit"]) == 40
    assert env["accelerator"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert {"cpu", "versions", "python", "host"} <= set(env)


def test_environment_records_the_key_package_versions():
    versions = environment()["versions"]
    for package in ("torch", "torchvision", "lightning", "torchmetrics", "onnx", "onnxruntime", "numpy"):
        assert versions[package] == version(package), package
    for package in ("sparseml", "deepsparse", "openvino", "nncf", "torchao"):  # only when installed
        assert versions.get(package) == (version(package) if installed(package) else None), package
        assert (package in versions) == installed(package), package


def test_code_version_outside_a_checkout_is_the_package_version(tmp_path, monkeypatch):
    fake = tmp_path / "site-packages" / "lit_kd" / "study" / "manifest.py"  # parents[2]: no .git there
    monkeypatch.setattr(manifest, "__file__", str(fake))
    assert manifest.code_version() == {"version": version("lit-kd")}


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ({"commit": "0123456789abcdef0123", "dirty": True}, "lit-kd git 0123456789ab (dirty)"),
        ({"commit": "0123456789abcdef0123", "dirty": False}, "lit-kd git 0123456789ab"),
        ({"version": "0.1.0"}, "lit-kd 0.1.0"),
        ("git 15d1d03", "lit-kd git 15d1d03"),  # a manifest written before the commit was recorded in full
        ({}, "lit-kd (unknown version)"),
    ],
)
def test_the_report_names_the_code_in_words(code, text):
    assert describe_code(code) == text
