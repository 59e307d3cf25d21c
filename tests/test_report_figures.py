"""The report's figures say what they show: accuracy.png gives every setup its own colour and names the validation
data on its axis, curves.png draws the training loss and the validation cross-entropy on separate axes, the Pareto
plot calls its images training images held out from calibration; the sizes of the models and exports tables are the
weights' and files' own, with their compressed size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from matplotlib.colors import to_rgba

from lit_kd.study import figures


@pytest.fixture()
def drawn(monkeypatch) -> list:
    """The figures the drawing functions make, kept open instead of saved."""
    kept = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: kept.append(fig) or path)
    return kept


def curves(n: int = 3, offset: float = 0.0) -> dict:
    return {
        "train/loss": [(e, 5.0 - e) for e in range(n)],
        "val/loss": [(e, 1.5 - 0.1 * e) for e in range(n)],
        "train/acc": [(e, 0.5 + 0.1 * e) for e in range(n)],
        "val/acc": [(e, 0.4 + 0.1 * e + offset) for e in range(n)],
    }


def test_accuracy_overview_gives_each_setup_its_own_colour_and_names_the_validation_data(drawn, tmp_path):
    stages = {f"kd_{i}": curves(offset=0.01 * i) for i in range(12)} | {"data.seed0": curves(), "data.seed1": curves()}
    groups = {s: ("data" if s.startswith("data") else None) for s in stages}
    figures.accuracy_overview_figure(stages, groups, tmp_path / "a.png", {s: "test set" for s in stages})
    ax = drawn[-1].axes[0]
    colour = {line.get_label(): line.get_color() for line in ax.lines}
    assert colour["data.seed0"] == colour["data.seed1"]  # seeds of one setup share a colour ...
    setups = [colour[f"kd_{i}"] for i in range(12)] + [colour["data.seed0"]]
    assert len({to_rgba(c) for c in setups}) == 13  # ... no two setups do
    assert ax.get_ylabel() == "accuracy (%), validation on the test set"
    held_out = {s: "5,000 held-out training images" for s in stages} | {"kd_0": "test set"}
    figures.accuracy_overview_figure(stages, groups, tmp_path / "b.png", held_out)
    ax = drawn[-1].axes[0]
    assert ax.get_ylabel() == "accuracy (%), validation (data per stage in the legend)"
    assert {"kd_0 (test set)", "kd_1 (5,000 held-out training images)"} <= {line.get_label() for line in ax.lines}


def test_curves_put_training_loss_and_validation_cross_entropy_on_separate_axes(drawn, tmp_path):
    figures.curves_figure({"kd": curves(), "data": curves()}, tmp_path / "c.png", {"kd": "test set", "data": "test set"})
    axes = drawn[-1].axes
    assert len(axes) == 6  # a row of three panels per stage
    loss, ce, acc = axes[:3]
    assert loss.get_title() == "kd: training loss (all terms)" and [list(line.get_ydata()) for line in loss.lines] == [[5.0, 4.0, 3.0]]
    assert ce.get_title() == "kd: validation cross-entropy on the test set"
    assert [list(line.get_ydata()) for line in ce.lines] == [pytest.approx([1.5, 1.4, 1.3])]
    assert acc.get_title() == "kd: accuracy (validation on the test set)" and len(acc.lines) == 2


def test_pareto_plot_calls_its_images_training_images(monkeypatch, tmp_path):
    from lit_kd.quant import search_report

    kept = []
    monkeypatch.setattr(search_report, "save_figure", lambda fig, path: kept.append(fig) or path)
    point = SimpleNamespace(weight_bits={"conv": 8}, acc=0.9, label="uniform W8A8")
    result = SimpleNamespace(
        evaluated=[point], front=[point], uniform=[point], chosen=point, layers={"conv": {"params": 1000}},
        fp32_acc=0.91, max_drop=0.01, layer_act_bits={"conv": 8}, act_bits=8,
    )  # fmt: skip
    search_report.pareto_plot(result, tmp_path / "p.png", eval_images=5000)
    label = kept[-1].axes[0].get_ylabel()
    assert label == "accuracy (%) on 5,000 training images\nheld out from calibration, not from training"


def test_sizes_are_the_files_own_with_their_compressed_size(tmp_path):
    from lit_kd.models import build_model
    from lit_kd.onnx_export import export_onnx_model
    from lit_kd.study.kinds.export import export_table
    from lit_kd.study.kinds.trained import model_row
    from lit_kd.study.results import ModelRecord

    torch.manual_seed(0)
    dense = build_model("resnet8").eval()
    sparse = build_model("resnet8").eval()
    with torch.no_grad():
        for p in sparse.parameters():
            p.mul_((torch.rand_like(p) > 0.9).float())  # about 90 % zeros
    paths = {"dense": export_onnx_model(dense, tmp_path / "d.onnx"), "sparse": export_onnx_model(sparse, tmp_path / "s.onnx")}
    validation = {"images": 10, "batch_size": 5, "cores": 1, "pytorch": {"acc": 0.9}, "onnxruntime": {"acc": 0.9, "agreement": 1.0}}
    manifests = {
        name: {
            "kind": "export",
            "outputs": {"onnx": str(path)},
            "metrics": {"precision": "fp32", "weight_sparsity": 0.0, "validation": {**validation, "deepsparse": {"installed": False}}},
        }
        for name, path in paths.items()
    }
    table, records = export_table(manifests)
    by_stage = {r.stage: r for r in records}
    for name, path in paths.items():
        assert by_stage[name].file_bytes == path.stat().st_size  # the file on disk
    assert by_stage["dense"].file_bytes == pytest.approx(by_stage["sparse"].file_bytes, rel=0.01)  # zeros are stored too ...
    assert by_stage["sparse"].deflated_bytes < 0.4 * by_stage["dense"].deflated_bytes  # ... and compress
    r = by_stage["sparse"]
    assert table.rows[1][1] == f"fp32, {r.file_bytes / 1e6:.2f} MB ({r.deflated_bytes / 1e6:.2f} MB compressed)"
    model = {"stage": "s", "architecture": "resnet8", "params": 10, "nonzero_params": 1, "macs": 1, "test_acc": 0.5, "epochs": 1}
    model |= {"stop_reason": "-", "wall_s": 1.0}
    assert model_row(ModelRecord(**model, size_bytes=960_000, deflated_bytes=120_000), "1 min")[5] == "0.96 MB (0.12 MB compressed)"
    assert model_row(ModelRecord(**model, size_bytes=960_000), "1 min")[5] == "0.96 MB"  # results.json written before it
    assert model_row(ModelRecord(**model, size_bytes=120_000, deflated_bytes=4_321), "1 min")[5] == "0.12 MB (4.3 kB compressed)"


def test_pruning_cycles_plot_accuracy_against_the_parameters_left_beside_the_dense_control(drawn, tmp_path):
    """IterativePruning's ``prune/nonzero`` read back from real TensorBoard events with the validation accuracy of
    each epoch; a run whose count never changed has no cycles; the control's last epoch is the dashed line."""
    from torch.utils.tensorboard import SummaryWriter

    nonzero, acc = [8000, 4000, 2000, 1000, 1000], [0.80, 0.81, 0.79, 0.75, 0.77]
    writer = SummaryWriter(str(tmp_path / "pruned"))
    for epoch, (n, a) in enumerate(zip(nonzero, acc)):
        step = 100 * (epoch + 1)
        for tag, value in (("epoch", epoch), ("prune/nonzero", n), ("val/acc", a)):
            writer.add_scalar(tag, value, step)
    writer.close()
    read = figures.read_curves(tmp_path / "pruned")
    points = figures.pruning_cycles(read)
    assert [(e, n) for e, n, _ in points] == list(enumerate(nonzero)) and [a for *_, a in points] == pytest.approx(acc)
    assert figures.pruning_cycles(curves()) == [] and figures.pruning_cycles({**curves(), "prune/nonzero": [(0, 5.0), (1, 5.0)]}) == []
    figures.pruning_figure({"prune": points}, {"prune": ("control", 0.78)}, tmp_path / "p.png", {"prune": "test set"})
    ax = drawn[-1].axes[0]
    line, control = ax.lines
    assert list(line.get_xdata()) == nonzero and list(line.get_ydata()) == pytest.approx([100 * a for a in acc])
    assert list(control.get_ydata()) == pytest.approx([78.0, 78.0]) and control.get_label().startswith("control (dense")
    assert ax.get_xscale() == "log" and ax.xaxis_inverted() and [t.get_text() for t in ax.texts] == ["1", "2", "3", "4", "5"]
    assert ax.get_ylabel() == "accuracy (%), validation on the test set"
