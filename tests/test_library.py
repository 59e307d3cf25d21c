"""The library pieces the commands, the study and benchmarks/ share: cpu_info without DeepSparse, the one top-1
accuracy loop, and load_model's kinds."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lit_kd import speed
from lit_kd.artifacts import ModelFileError, load_model
from lit_kd.checkpoints import write_weights_file
from lit_kd.evaluation import accuracy, correct_and_total, fraction_equal, predictions
from lit_kd.models import build_model


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"sse4_2", "avx", "avx2", "avx512f", "avx512_vnni", "amx_tile"}, {"isa": "avx512", "vnni": True, "amx": True}),
        ({"sse4_2", "avx", "avx2", "avx_vnni"}, {"isa": "avx2", "vnni": True, "amx": False}),
        ({"sse4_2", "avx", "avx2"}, {"isa": "avx2", "vnni": False, "amx": False}),
        ({"sse4_2"}, {"isa": "sse4.2", "vnni": False, "amx": False}),
        ({"fp", "asimd"}, {"isa": "neon", "vnni": False, "amx": False}),
        (set(), {"isa": "unknown", "vnni": False, "amx": False}),
    ],
)
def test_cpu_features_from_flags(flags, expected):
    assert speed.cpu_features(flags) == expected


def test_cpu_info_names_the_instruction_set_and_imports_no_deepsparse():
    info = speed.cpu_info(2)
    keys = {"cpu", "isa", "vnni", "amx", "isa_flags", "physical_cores", "logical_cpus", "cores_used", "load_average_1min", "torch"}
    assert set(info) == keys and set(info["isa_flags"]) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx"}
    assert info["cores_used"] == 2 and 1 <= info["physical_cores"] <= info["logical_cpus"]
    source = open(speed.__file__).read().split("def cpu_info")[1].split("\ndef ")[0]
    assert "deepsparse" not in source


class Fixed(nn.Module):
    """Predicts class 0 for every image."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1
        return logits


def test_one_accuracy_loop():
    batches = [(torch.zeros(3, 3, 32, 32), torch.tensor([0, 1, 0])), (torch.zeros(1, 3, 32, 32), torch.tensor([0]))]
    assert correct_and_total(Fixed(), batches) == (3, 4)
    assert accuracy(Fixed(), batches) == 0.75
    assert predictions(Fixed(), batches).tolist() == [0, 0, 0, 0]
    assert fraction_equal(torch.tensor([1, 2]).numpy(), torch.tensor([1, 3])) == 0.5


def test_load_model_kinds(tmp_path):
    network = build_model("resnet8")
    path = write_weights_file(network, "resnet8", tmp_path / "w.pt")
    loaded, kind = load_model(path)
    assert kind == "float" and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values()))
    assert load_model(path, kinds=("float",))[1] == "float"
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        load_model(tmp_path / "empty.pt", kinds=("float", "int8"))
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        load_model(tmp_path / "x.onnx")
