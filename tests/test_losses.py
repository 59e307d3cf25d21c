"""Distillation loss terms against reference formulas on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_kd.losses import (
    AttentionTransfer,
    CosineFeatureLoss,
    CrossEntropy,
    DecoupledKD,
    DistillationLoss,
    DistillContext,
    FeatureMSE,
    KLDivergence,
    RegressorMSE,
    SoftCrossEntropy,
    build_term,
    pool_channels,
)


def ctx(student, teacher, target=None, sf=None, tf=None):
    target = torch.zeros(len(student), dtype=torch.long) if target is None else target
    return DistillContext(student, teacher, target, sf or {}, tf or {})


def entropy(logits, t):
    p = F.softmax(logits / t, 1)
    return -(p * p.log()).sum(1).mean()


def test_soft_ce_formula_t2_scaling_and_minimum():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    for temperature in (1.0, 4.0):
        value = SoftCrossEntropy(temperature)(ctx(s, t))["soft_ce"]
        p_t = F.softmax(t / temperature, 1)
        reference = -(p_t * F.log_softmax(s / temperature, 1)).sum(1).mean() * temperature**2
        assert torch.allclose(value, reference, atol=1e-6)
    # minimum when student equals teacher: T^2 * H(p_t), and KL = soft CE - T^2 H(p_t) is then 0
    same = SoftCrossEntropy(4.0)(ctx(t.clone(), t))["soft_ce"]
    assert torch.allclose(same, 16 * entropy(t, 4.0), atol=1e-5)
    assert KLDivergence(4.0)(ctx(t.clone(), t))["kl"].abs() < 1e-6
    kl = KLDivergence(4.0)(ctx(s, t))["kl"]
    assert torch.allclose(kl, SoftCrossEntropy(4.0)(ctx(s, t))["soft_ce"] - 16 * entropy(t, 4.0), atol=1e-5)


def test_soft_ce_gradient_scales_with_t_squared_over_t():
    # d/ds of T^2 * H(p_t, softmax(s/T)) = T * (p_s - p_t) / N: the T^2 factor keeps gradients O(1/T) * T^2 / T
    s = torch.randn(3, 10, requires_grad=True)
    t = torch.randn(3, 10)
    SoftCrossEntropy(2.0)(ctx(s, t))["soft_ce"].backward()
    expected = 2.0 * (F.softmax(s / 2, 1) - F.softmax(t / 2, 1)) / 3
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)


def test_ce_with_hard_and_mixup_targets():
    s = torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(CrossEntropy()(ctx(s, s, y))["ce"], F.cross_entropy(s, y))
    probs = 0.7 * F.one_hot(y, 10) + 0.3 * F.one_hot(y.flip(0), 10)
    mixed = CrossEntropy()(ctx(s, s, probs.float()))["ce"]
    assert torch.allclose(mixed, 0.7 * F.cross_entropy(s, y) + 0.3 * F.cross_entropy(s, y.flip(0)), atol=1e-6)


def test_dkd_matches_decomposition_and_vanishes_when_equal():
    torch.manual_seed(1)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    term = DecoupledKD(temperature=2.0, alpha=1.0, beta=1.0)
    # with alpha = beta = 1: KL(p_t||p_s) = TCKD + (p_t of non-target mass) * NCKD per sample (Zhao et al., eq. 4)
    p_t, p_s = F.softmax(t / 2, 1), F.softmax(s / 2, 1)
    gt = F.one_hot(y, 5).bool()
    b_t = torch.stack([p_t[gt], 1 - p_t[gt]], 1)
    b_s = torch.stack([p_s[gt], 1 - p_s[gt]], 1)
    tckd = (b_t * (b_t / b_s).log()).sum(1).mean() * 4
    q_t = p_t.masked_fill(gt, 0) / (1 - p_t[gt])[:, None]
    q_s = p_s.masked_fill(gt, 0) / (1 - p_s[gt])[:, None]
    nckd = torch.where(gt, 0.0, q_t * (q_t.clamp_min(1e-30) / q_s.clamp_min(1e-30)).log()).sum(1).mean() * 4
    assert torch.allclose(term(ctx(s, t, y))["dkd"], tckd + nckd, atol=1e-5)
    assert DecoupledKD()(ctx(t.clone(), t, y))["dkd"].abs() < 1e-5


def test_feature_mse_and_shape_mismatch_error():
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    term = FeatureMSE([("layer1", "layer1")])
    assert torch.allclose(term(ctx(a, a, sf={"layer1": a}, tf={"layer1": b}))["feature_mse_layer1"], ((a - b) ** 2).mean())
    assert term(ctx(a, a, sf={"layer1": a}, tf={"layer1": a.clone()}))["feature_mse_layer1"] == 0
    with pytest.raises(ValueError, match=r"student 'layer1' \(16, 32, 32\) vs teacher 'layer1' \(64, 32, 32\).*regressor.*cosine"):
        term.build({"layer1": (16, 32, 32)}, {"layer1": (64, 32, 32)})


def test_cosine_is_parameter_free_and_minimal_for_matching_features():
    term = CosineFeatureLoss([("a", "b")])
    assert not list(term.parameters())
    teacher = torch.rand(3, 8, 8, 8)
    student = pool_channels(F.adaptive_avg_pool2d(teacher, 4), 4)  # exactly the teacher brought to (4, 4, 4)
    value = term(ctx(teacher, teacher, sf={"a": student}, tf={"b": teacher}))["cosine_a_to_b"]
    assert value.abs() < 1e-6
    other = term(ctx(teacher, teacher, sf={"a": torch.rand(3, 4, 4, 4)}, tf={"b": teacher}))["cosine_a_to_b"]
    s = torch.rand(3, 4, 4, 4)
    reference = 1 - F.cosine_similarity(s.flatten(1), pool_channels(F.adaptive_avg_pool2d(teacher, 4), 4).flatten(1)).mean()
    assert torch.allclose(term(ctx(s, s, sf={"a": s}, tf={"b": teacher}))["cosine_a_to_b"], reference, atol=1e-6)
    assert other > 0
    # pool_channels averages groups of adjacent channels
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert pool_channels(x, 4).flatten().tolist() == [0.5, 2.5, 4.5, 6.5]


def test_regressor_builds_adapter_and_gets_gradients_not_the_teacher():
    term = RegressorMSE([("layer1", "layer2")], kernel_size=3)
    term.build({"layer1": (4, 8, 8)}, {"layer2": (6, 4, 4)})
    conv = term.regressors[0][0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 6, (3, 3))
    s = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.randn(2, 6, 4, 4, requires_grad=True)
    value = term(ctx(s, s, sf={"layer1": s}, tf={"layer2": t.detach()}))["regressor_layer1_to_layer2"]
    reference = F.mse_loss(term.regressors[0](F.adaptive_avg_pool2d(s, 4)), t)
    assert torch.allclose(value, reference)
    value.backward()
    assert s.grad is not None and conv.weight.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="kernel_size must be 1 or 3"):
        RegressorMSE([("a", "a")], kernel_size=5)


def test_attention_transfer_formula():
    term = AttentionTransfer([("x", "y")], beta=2.0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)

    def at(f):
        a = f.pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    value = term(ctx(s, s, sf={"x": s}, tf={"y": t}))["attention_x_to_y"]
    assert torch.allclose(value, (at(s) - at(t)).pow(2).mean(), atol=1e-6)  # beta / 2 = 1
    assert term(ctx(s, s, sf={"x": s}, tf={"y": s * 3}))["attention_x_to_y"] < 1e-10  # scale invariant


def test_reduction_mean_of_all_summands_and_named_weights():
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    f = {"l1": torch.randn(4, 2, 2, 2), "l2": torch.randn(4, 3, 2, 2)}
    g = {"l1": torch.randn(4, 2, 2, 2), "l2": torch.randn(4, 3, 2, 2)}
    terms = [CrossEntropy(), SoftCrossEntropy(4.0), FeatureMSE([("l1", "l1"), ("l2", "l2")])]
    total, parts = DistillationLoss(terms)(ctx(s, t, y, f, g))
    assert list(parts) == ["ce", "soft_ce", "feature_mse_l1", "feature_mse_l2"]
    assert torch.allclose(total, sum(parts.values()) / 4)
    weighted, parts = DistillationLoss(terms, "sum", {"ce": 0.5, "feature_mse": 2.0, "feature_mse_l2": 3.0})(ctx(s, t, y, f, g))
    expected = 0.5 * parts["ce"] + parts["soft_ce"] + 2.0 * parts["feature_mse_l1"] + 3.0 * parts["feature_mse_l2"]
    assert torch.allclose(weighted, expected)
    with pytest.raises(ValueError, match="weights apply to reduction 'sum'"):
        DistillationLoss(terms, "mean", {"ce": 1.0})
    with pytest.raises(ValueError, match="unknown terms"):
        DistillationLoss(terms, "sum", {"dkd": 1.0})
    with pytest.raises(ValueError, match="reduction must be"):
        DistillationLoss(terms, "max")


def test_term_errors():
    with pytest.raises(ValueError, match=r"unknown loss term 'hint'"):
        build_term("hint")
    with pytest.raises(ValueError, match="needs feature pairs"):
        build_term("feature_mse")
    with pytest.raises(ValueError, match="soft_ce temperature must be a finite number > 0, got 0"):
        SoftCrossEntropy(0)
    assert math.isclose(build_term("soft_ce", temperature=2.0).temperature, 2.0)


def test_a_term_is_registered_by_defining_it():
    from lit_kd.losses import TERMS, LossTerm
    from lit_kd.models import build_model
    from lit_kd.modules import DistillationModule

    assert sorted(TERMS) == ["attention", "ce", "cosine", "dkd", "feature_mse", "kl", "regressor", "soft_ce"]
    try:

        class LogitL1(LossTerm):
            name = "logit_l1"

            def forward(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
                return {self.name: (ctx.student_logits - ctx.teacher_logits).abs().mean()}

        assert TERMS["logit_l1"] is LogitL1 and isinstance(build_term("logit_l1"), LogitL1)
        module = DistillationModule(student="resnet8", teacher=build_model("resnet8"), losses=["ce", "logit_l1"], num_example_images=0)
        s, t = torch.randn(4, 10), torch.randn(4, 10)
        _, parts = module.criterion(ctx(s, t))
        assert torch.allclose(parts["logit_l1"], (s - t).abs().mean())
        with pytest.raises(TypeError, match=r"loss term name 'ce' of .*Clash is taken by lit_kd\.losses\.CrossEntropy"):

            class Clash(LossTerm):
                name = "ce"
    finally:
        TERMS.pop("logit_l1", None)
