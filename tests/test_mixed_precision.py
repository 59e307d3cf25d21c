"""Mixed precision: per-layer widths in quantize, sensitivities, the greedy order, the budgeted search, the CLI."""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable

import pytest
import torch

from lit_kd.checkpoints import load_network
from lit_kd.data import CIFAR10DataModule
from lit_kd.quant import bit_search, cost_model, precision_cache, search_report, sensitivity
from lit_kd.quant.bit_search import Point, greedy_order, pareto_front, search_bits
from lit_kd.quant.cost_model import allocation_cost
from lit_kd.quant.precision_cache import SearchCache
from lit_kd.quant.ptq import quantize
from lit_kd.quant.sensitivity import evaluate


def record_quantize(monkeypatch, record: Callable) -> Callable:
    """Pass the positional arguments of every quantize call a search makes (sensitivities and allocations) to
    ``record``; returns the real quantize."""
    for module in (sensitivity, bit_search):
        monkeypatch.setattr(module, "quantize", lambda *a, **k: record(a) or quantize(*a, **k))
    return quantize


@pytest.fixture(scope="module")
def setup(trained_ckpt, tiny_zip):
    model = load_network(trained_ckpt)
    dm = CIFAR10DataModule(str(tiny_zip), val_split=60)
    calib = list(dm.normalized_batches("train", 32, 64))
    held_out = list(dm.normalized_batches("val", 30))
    return model, calib, held_out


def test_mapping_form_equals_uniform_form(setup):
    model, calib, held_out = setup
    x = held_out[0][0]
    uniform = quantize(model, calib, 4, 8)
    paths = [p for p, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        reference = uniform(x)
        assert torch.equal(quantize(model, calib, {"default": 4}, {"default": 8})(x), reference)
        assert torch.equal(quantize(model, calib, {p: 4 for p in paths}, 8)(x), reference)
        mixed = quantize(model, calib, {"default": 4, paths[1]: 2}, 8)
        assert not torch.equal(mixed(x), reference)
    layers = {p: m for p, m in mixed.named_modules() if hasattr(m, "weight_bits")}
    assert layers[paths[1]].weight_bits == 2 and layers[paths[0]].weight_bits == 4
    assert layers[paths[1]].weight_codes(layers[paths[1]].layer.weight).unique().numel() <= 4


def test_none_leaves_a_layer_in_float(setup):
    model, calib, held_out = setup
    x = held_out[0][0]
    paths = [p for p, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    one = quantize(model, calib, {"default": None, paths[-1]: 2}, {"default": None, paths[-1]: 8})
    assert [p for p, m in one.named_modules() if hasattr(m, "weight_bits")] == [paths[-1]]
    everything_float = quantize(model, calib, {"default": None}, {"default": None})
    with torch.no_grad():
        float_logits = model.eval()(x)
        assert torch.allclose(everything_float(x), float_logits, atol=1e-4)  # BatchNorm folded, nothing quantized
        assert not torch.allclose(one(x), float_logits, atol=1e-2)
    with pytest.raises(ValueError, match="None \\(float\\) is only allowed where the weights stay float"):
        quantize(model, calib, 4, {"default": None})


@pytest.mark.parametrize(
    "bits, message",
    [
        ({"default": 4, "layer9.conv": 2}, r"\['layer9.conv'\] are not quantizable layers"),
        ({"conv1": 4}, "no width for"),
        ({"default": 1}, "weight bit width of conv1 must be an integer from 2 to 16"),
    ],
)
def test_bad_mappings_are_clear_errors(setup, bits, message):
    model, calib, _ = setup
    with pytest.raises(ValueError, match=message):
        quantize(model, calib, bits, 8)


def test_greedy_order_narrows_the_least_harmful_layer_per_saved_bit_first():
    layers = {"a": {"params": 100, "macs": 100}, "b": {"params": 100, "macs": 100}, "c": {"params": 1000, "macs": 1000}}
    sens = {"a": {8: 0.0, 4: 0.5, 2: 2.0}, "b": {8: 0.0, 4: 0.01, 2: 0.02}, "c": {8: 0.0, 4: 0.08, 2: 5.0}}
    steps = greedy_order(sens, (2, 4, 8), 8, layers, "bits")
    # per saved bit: c 8->4 0.08/4000, b 8->4 0.01/400, b 4->2 0.01/200, a 8->4 0.5/400, c 4->2 4.92/2000, a 4->2 1.5/200
    assert steps == [("c", 4), ("b", 4), ("b", 2), ("a", 4), ("c", 2), ("a", 2)]
    assert allocation_cost({"a": 2, "b": 4, "c": 8}, 8, layers, "bits") == 200 + 400 + 8000
    assert allocation_cost({"a": 2}, 4, layers, "bops") == 100 * 2 * 4


def test_pareto_front_keeps_only_undominated_points():
    pts = [Point(10, 0.5, {}), Point(5, 0.6, {}), Point(7, 0.55, {}), Point(20, 0.9, {}), Point(5, 0.4, {})]
    assert [(p.cost, p.acc) for p in pareto_front(pts)] == [(5, 0.6), (20, 0.9)]


def test_search_respects_the_budget_and_beats_uniform_at_equal_accuracy(setup, tmp_path):
    model, calib, held_out = setup
    result = search_bits(model, calib, held_out, 0.05, (2, 4, 8), "bits", evaluations=4, cache=tmp_path / "sens.json")
    chosen = result.chosen
    acc, _ = evaluate(quantize(model, calib, chosen.weight_bits, 8), held_out)  # re-measured independently
    assert acc == chosen.acc and result.fp32_acc - acc <= 0.05
    for uniform in result.uniform:
        if result.fp32_acc - uniform.acc <= 0.05:
            assert chosen.cost <= uniform.cost
    assert chosen.cost < max(u.cost for u in result.uniform)  # something was narrowed below 8 bits
    assert {p.cost for p in result.front} <= {p.cost for p in result.evaluated + result.uniform}
    cached = json.loads((tmp_path / "sens.json").read_text())
    assert set(cached["sensitivity"]) == set(result.layers) and all(set(v) == {"2", "4", "8"} for v in cached["sensitivity"].values())
    distinct = {json.dumps(p.weight_bits, sort_keys=True): p.acc for p in result.evaluated + result.uniform}
    assert cached["accuracy"] == distinct  # each allocation evaluated once (uniform 8 and 2 bits are the order's ends)


def test_an_interrupted_search_resumes_from_its_cache(setup, tmp_path, monkeypatch):
    """A search stopped after two layers' sensitivities measures only the rest, and ends like the uninterrupted one;
    a finished search's cache answers a rerun without quantizing anything."""
    model, calib, held_out = setup
    full = search_bits(model, calib, held_out, 0.05, (2, 4, 8), evaluations=4, cache=tmp_path / "full.json")
    stored = json.loads((tmp_path / "full.json").read_text())
    first_two = dict(list(stored["sensitivity"].items())[:2])
    carried = {f"sensitivity {p}": stored["seconds"][f"sensitivity {p}"] for p in first_two}
    (tmp_path / "cut.json").write_text(json.dumps({"key": stored["key"], "sensitivity": first_two, "accuracy": {}, "seconds": carried}))
    assert SearchCache(tmp_path / "cut.json", stored["key"]).measured_seconds() == sum(carried.values()) > 0
    calls = []
    record_quantize(monkeypatch, lambda a: calls.append(a[2]))
    resumed = search_bits(model, calib, held_out, 0.05, (2, 4, 8), evaluations=4, cache=tmp_path / "cut.json")
    sensitivity_calls = [w for w in calls if w.get("default", 0) is None]
    assert {p for w in sensitivity_calls for p in w if p != "default"} == set(full.layers) - set(first_two)
    assert resumed.chosen.weight_bits == full.chosen.weight_bits and resumed.chosen.acc == full.chosen.acc
    assert resumed.sensitivity == full.sensitivity
    after = json.loads((tmp_path / "cut.json").read_text())["seconds"]
    assert carried.items() <= after.items() and resumed.measured_seconds == pytest.approx(sum(after.values()))  # both attempts

    calls.clear()
    again = search_bits(model, calib, held_out, 0.05, (2, 4, 8), evaluations=4, cache=tmp_path / "full.json")
    assert calls == [] and again.chosen.weight_bits == full.chosen.weight_bits
    fewer = search_bits(model, calib, held_out, 0.05, (4, 8), evaluations=2, cache=tmp_path / "full.json")
    assert not [w for w in calls if w.get("default", 0) is None]  # a subset of the widths: every sensitivity cached
    assert set(fewer.chosen.weight_bits.values()) <= {4, 8}
    calls.clear()
    more = search_bits(model, calib, held_out, 0.05, (2, 3, 4, 8), evaluations=4, cache=tmp_path / "full.json")
    sensitivity_calls = [w for w in calls if w.get("default", 0) is None]
    assert sorted(w[p] for w in sensitivity_calls for p in w if p != "default") == [3] * len(full.layers)  # only the new width
    assert all(more.sensitivity[p][b] == full.sensitivity[p][b] for p in full.layers for b in (2, 4, 8))
    other = search_bits(model, calib, held_out, 0.05, (4, 8), act_bits=6, evaluations=2, cache=tmp_path / "full.json")
    assert set(other.sensitivity) == set(full.layers) and other.sensitivity != fewer.sensitivity  # another key: measured anew


def test_allocation_cost_in_bops_uses_each_layers_activation_width():
    layers = {"a": {"params": 5, "macs": 10}, "b": {"params": 7, "macs": 20}}
    assert allocation_cost({"a": 4, "b": 2}, {"a": 8, "b": 4}, layers, "bops") == 10 * 4 * 8 + 20 * 2 * 4
    assert allocation_cost({"a": 4, "b": 2}, 8, layers, "bops") == 10 * 4 * 8 + 20 * 2 * 8
    assert allocation_cost({"a": 4, "b": 2}, {"a": 8, "b": 4}, layers, "bits") == 5 * 4 + 7 * 2


def test_search_with_per_layer_activation_widths(setup, tmp_path, monkeypatch):
    """Activations at 4 bits except the first layer's input (the image) and the last's at 8: each layer's sensitivity is
    measured with its own input width, every allocation is quantized with all of them, and a mapping that gives every
    layer the same width is the plain width (same cache)."""
    model, calib, held_out = setup
    paths = [p for p, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    first, last = paths[0], paths[-1]
    calls = []
    real = record_quantize(monkeypatch, lambda a: calls.append((a[2], a[3])))
    act = {"default": 4, first: 8, last: 8}
    result = search_bits(model, calib, held_out, 0.05, (4, 8), act_bits=act, evaluations=2, cache=tmp_path / "a4.json")
    expected = {p: 8 if p in (first, last) else 4 for p in paths}
    assert result.layer_act_bits == expected and result.act_bits == 4
    for weights, acts in calls:
        if weights.get("default", 0) is None:  # a sensitivity: one layer alone, its input at its own width
            (path,) = [p for p in weights if p != "default"]
            assert acts == {"default": None, path: expected[path]}
        else:
            assert acts == expected
    alone = [w for w, _ in calls if w.get("default", 0) is None]
    assert {(p, b) for w in alone for p, b in w.items() if p != "default"} == {(p, b) for p in paths for b in (4, 8)}
    acc, _ = evaluate(real(model, calib, result.chosen.weight_bits, expected), held_out)
    assert acc == result.chosen.acc
    assert [u.label for u in result.uniform] == [f"uniform W4A4 (A8: {first}, {last})", f"uniform W8A4 (A8: {first}, {last})"]

    plain = search_bits(model, calib, held_out, 0.05, (4, 8), act_bits=6, evaluations=2, cache=tmp_path / "a6.json")
    calls.clear()
    mapped = search_bits(model, calib, held_out, 0.05, (4, 8), act_bits={"default": 6}, evaluations=2, cache=tmp_path / "a6.json")
    assert calls == [] and mapped.chosen == plain.chosen and mapped.layer_act_bits == dict.fromkeys(paths, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"candidates": ()}, "candidates is empty"),
        ({"max_drop": -0.01}, "max_drop is a fraction"),
        ({"cost": "flops"}, "cost must be one of"),
        ({"candidates": (1, 4)}, "candidate width must be an integer from 2 to 16"),
        ({"act_bits": {"default": 4, "layer9.conv": 8}}, r"\['layer9.conv'\] are not quantizable layers"),
        ({"act_bits": {"default": None}}, "a search quantizes every layer's input"),
        ({"act_bits": {"default": 4, "conv1": 1}}, "activation bit width of conv1 must be an integer from 2 to 16"),
    ],
)
def test_search_rejects_bad_input(setup, kwargs, message):
    model, calib, held_out = setup
    args = {"max_drop": 0.01, "candidates": (2, 4, 8)} | kwargs
    with pytest.raises(ValueError, match=message):
        search_bits(model, calib, held_out, args.pop("max_drop"), args.pop("candidates"), **args)


def test_ptq_cli_max_drop_writes_front_plot_and_tests_the_choice(trained_ckpt, tiny_zip, tmp_path):
    from lit_kd.commands.ptq import main

    out = tmp_path / "mp.json"
    result = main(
        [
            "--ckpt",
            str(trained_ckpt),
            "--data",
            str(tiny_zip),
            "--max-drop",
            "5",
            "--candidates",
            "2",
            "4",
            "8",
            "--eval-images",
            "60",
            "--calib-batches",
            "2",
            "--batch-size",
            "32",
            "--evaluations",
            "3",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["test_acc"].keys() == {"fp32", "chosen", "uniform W2A8", "uniform W4A8", "uniform W8A8"}
    assert saved["eval_images"] == 60 and saved["test_images"] == 60
    assert saved["chosen_weight_bytes"] <= saved["uniform_int8_weight_bytes"]
    from PIL import Image

    assert Image.open(result["plot"]).size[0] > 300


def test_ptq_cli_max_drop_usage_errors(trained_ckpt, capsys):
    from lit_kd.commands.ptq import main

    for args, message in (
        (["--max-drop", "-1"], "--max-drop is an accuracy budget"),
        (["--max-drop", "1", "--candidates", "1"], "from 2 to 16"),
        (["--max-drop", "1", "--layer-act-bits", "conv1"], "--layer-act-bits: expected LAYER=BITS (e.g. conv1=8), got 'conv1'"),
        (["--max-drop", "1", "--layer-act-bits", "conv1=1"], "--layer-act-bits conv1 width must be an integer from 2 to 16, got 1"),
        (["--layer-act-bits", "conv1=8"], "--layer-act-bits applies to a --max-drop search"),
    ):
        with pytest.raises(SystemExit) as exit:
            main(["--ckpt", str(trained_ckpt), *args])
        assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("module", [bit_search, cost_model, precision_cache, search_report, sensitivity], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0
