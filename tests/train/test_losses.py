"""Tests for koa_core.train.losses: focal loss, alpha specs, multi-task masking, Table 2 shares."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from koa_core.errors import KoaError
from koa_core.paper import ALPHA, TABLE2_COUNTS, TABLE2_SHARES_PCT
from koa_core.train.losses import (
    FocalLoss,
    KLMultiTaskLoss,
    effective_influence_share,
    focal_loss,
    resolve_alpha,
)


@pytest.mark.parametrize("shape", [(1, 2), (4, 5), (17, 3), (64, 5), (6, 5, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma0_uniform_equals_cross_entropy(shape, reduction):
    g = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(*shape, generator=g) * 3
    target_shape = (shape[0],) + shape[2:]
    target = torch.randint(0, shape[1], target_shape, generator=g)
    got = focal_loss(logits, target, gamma=0.0, reduction=reduction)
    want = F.cross_entropy(logits, target, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gamma0_alpha_is_sum_over_n_not_weighted_mean():
    # Documented normalisation: plain mean over samples of alpha_t * CE_t.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g)
    target = torch.tensor([0, 1, 2, 3, 4, 4, 1, 0])
    alpha = torch.tensor(ALPHA)
    got = focal_loss(logits, target, alpha=alpha, gamma=0.0)
    want = F.cross_entropy(logits, target, weight=alpha, reduction="sum") / 8
    torch.testing.assert_close(got, want)


def test_hand_computed_small_case():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]]
    target = [0, 1]
    alpha = [0.25, 0.5, 0.25]
    gamma = 2.0
    expected = []
    for row, t in zip(logits, target):
        z = sum(math.exp(v) for v in row)
        p = math.exp(row[t]) / z
        expected.append(-alpha[t] * (1 - p) ** gamma * math.log(p))
    got = focal_loss(torch.tensor(logits), torch.tensor(target), alpha=alpha, gamma=gamma,
                     reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    got_mean = focal_loss(torch.tensor(logits), torch.tensor(target), alpha=alpha, gamma=gamma)
    assert got_mean.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    # Sanity on the literal numbers: p_0 = e^2 / (e^2 + 1 + e^-1) ~= 0.8438.
    assert expected[0] == pytest.approx(0.25 * (1 - 0.84379) ** 2 * -math.log(0.84379), rel=1e-4)


@pytest.mark.parametrize("margin", [2.0, 5.0, 10.0])
def test_gamma_reduces_loss_for_confident_correct(margin):
    logits = torch.tensor([[margin, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0])
    ce = focal_loss(logits, target, gamma=0.0)
    fl = focal_loss(logits, target, gamma=2.0)
    p = torch.softmax(logits, 1)[0, 0]
    assert fl < ce
    torch.testing.assert_close(fl, ce * (1 - p) ** 2)


def test_gamma_barely_changes_confident_wrong():
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([3])
    ce = focal_loss(logits, target, gamma=0.0)
    fl = focal_loss(logits, target, gamma=2.0)
    assert fl.item() == pytest.approx(ce.item(), rel=1e-3)


@pytest.mark.parametrize(
    "mask, n_used",
    [
        ([True, True, True, True], 4),
        ([True, False, True, False], 2),
        ([False, False, False, True], 1),
    ],
)
def test_mask_means_over_unmasked(mask, n_used):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 3, generator=g)
    target = torch.tensor([0, 1, 2, 1])
    m = torch.tensor(mask)
    per = focal_loss(logits, target, reduction="none")
    got = focal_loss(logits, target, mask=m)
    assert got.item() == pytest.approx(per[m].sum().item() / n_used, rel=1e-6)


def test_all_masked_is_zero_with_grad_and_out_of_range_targets_ok():
    logits = torch.randn(3, 3, requires_grad=True)
    target = torch.tensor([3, 4, 4])  # out of range for 3 classes, but all masked
    loss = focal_loss(logits, target, mask=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradient_finite_for_extreme_logits():
    logits = torch.tensor([[80.0, -80.0, 0.0, 0.0, 0.0], [-80.0, 80.0, 0.0, 0.0, 0.0]],
                          requires_grad=True)
    target = torch.tensor([0, 0])  # one saturated-correct, one saturated-wrong
    loss = focal_loss(logits, target, alpha=ALPHA, gamma=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_bf16_logits_computed_in_float32():
    """bf16 logits are upcast before log_softmax: the loss equals the float32 loss of the
    same (bf16-representable) logits exactly, not a bf16 approximation of it."""
    logits = torch.randn(4, 5).bfloat16()
    target = torch.tensor([0, 1, 2, 3])
    loss = focal_loss(logits, target, alpha=ALPHA)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, focal_loss(logits.float(), target, alpha=ALPHA))


@pytest.mark.parametrize("margin", [20.0, 5.0, -30.0])
def test_focal_loss_keeps_its_precision_at_every_margin(margin):
    """At a logit margin of 20, p_t rounds to 1 in float32 and log_softmax's log p_t to 0,
    so a focal factor computed from p_t (even with expm1) would make the loss 0; the loss
    must match float64 there, at an ordinary margin, and for a confidently wrong sample."""
    logits = torch.tensor([[margin, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0])
    got = focal_loss(logits, target, gamma=1.0)
    eps = 4 / (np.exp(margin) + 4)  # 1 - p_t in float64
    nll = np.log1p(4 * np.exp(-margin)) if margin > 0 else np.log(np.exp(margin) + 4) - margin
    expected = eps * nll
    if margin == 20.0:
        assert torch.softmax(logits, 1)[0, 0] == 1.0  # p_t is exactly 1 in float32
    assert float(got) > 0
    assert float(got) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("bad", [{"reduction": "avg"}, {"alpha": [1.0, 1.0]}])
def test_focal_loss_rejects_bad_args(bad):
    with pytest.raises(ValueError):
        focal_loss(torch.randn(2, 5), torch.tensor([0, 1]), **bad)


def test_focal_module_matches_function_and_alpha_is_buffer():
    mod = FocalLoss(alpha=ALPHA, gamma=2.0)
    assert "alpha" in dict(mod.named_buffers())
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(mod(logits, target),
                               focal_loss(logits, target, alpha=ALPHA, gamma=2.0))
    assert FocalLoss().alpha is None


@pytest.mark.parametrize(
    "spec, counts, expected",
    [
        (ALPHA, None, list(ALPHA)),
        ([0.133, 0.267, 0.133, 0.133, 0.333], None, [0.133, 0.267, 0.133, 0.133, 0.333]),
        ("uniform", None, [0.2] * 5),
        ("Uniform", None, [0.2] * 5),
        ("frequency", [1, 1, 1, 1, 1], [0.2] * 5),
        ("frequency", [4, 2, 4, 4, 1], [1 / 9, 2 / 9, 1 / 9, 1 / 9, 4 / 9]),
        (torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), None, [1.0, 2.0, 3.0, 4.0, 5.0]),
    ],
)
def test_resolve_alpha(spec, counts, expected):
    got = resolve_alpha(spec, class_counts=counts)
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))


def test_resolve_alpha_frequency_sums_to_one_on_table2_counts():
    got = resolve_alpha("frequency", TABLE2_COUNTS)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert got.argmax().item() == 4  # the rarest grade gets the largest weight


@pytest.mark.parametrize(
    "spec, counts, match",
    [
        ([0.2, 0.2, 0.2, 0.2], None, "5 values"),
        ([0.2] * 6, None, "5 values"),
        ([0.2, -0.1, 0.2, 0.2, 0.2], None, "non-negative"),
        ([0.0] * 5, None, "positive"),
        ([0.2, float("nan"), 0.2, 0.2, 0.2], None, "finite"),
        (["a", 1, 1, 1, 1], None, "numbers"),
        ("balanced", None, "unknown spec"),
        ("frequency", None, "class counts"),
        ("frequency", [10, 0, 5, 5, 5], "KL1"),
        ("frequency", [10, 5, 5], "5 values"),
    ],
)
def test_resolve_alpha_errors(spec, counts, match):
    with pytest.raises(KoaError, match=match):
        resolve_alpha(spec, class_counts=counts)


def _outputs(batch, aux=True, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {"logits": torch.randn(batch, 5, generator=g, requires_grad=requires_grad)}
    if aux:
        out["aux_binary"] = torch.randn(batch, 2, generator=g, requires_grad=requires_grad)
        out["aux_early"] = torch.randn(batch, 3, generator=g, requires_grad=requires_grad)
    return out


def test_multitask_only_late_grades_masks_aux():
    crit = KLMultiTaskLoss(alpha=ALPHA, gamma=2.0, aux_binary_weight=0.3,
                           aux_early_weight=0.3)
    out = _outputs(4, requires_grad=True)
    res = crit(out, torch.tensor([3, 4, 4, 3]))
    assert res["aux_binary"].item() == 0.0 and res["aux_early"].item() == 0.0
    assert res["loss"].item() == res["main"].item()
    res["loss"].backward()
    assert torch.equal(out["aux_early"].grad, torch.zeros(4, 3))
    assert torch.isfinite(out["logits"].grad).all()


@pytest.mark.parametrize("aux_value", ["absent", None])
def test_multitask_without_aux_heads(aux_value):
    crit = KLMultiTaskLoss(alpha=ALPHA)
    out = _outputs(5, aux=False)
    if aux_value is None:
        out["aux_binary"] = out["aux_early"] = None
    target = torch.tensor([0, 1, 2, 3, 4])
    res = crit(out, target)
    torch.testing.assert_close(res["loss"], focal_loss(out["logits"], target, ALPHA))
    assert res["aux_binary"].item() == 0.0 and res["aux_early"].item() == 0.0


def test_multitask_components_and_weights():
    crit = KLMultiTaskLoss(alpha=ALPHA, gamma=2.0, aux_binary_weight=0.5,
                           aux_early_weight=0.25)
    out = _outputs(6, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 2])
    res = crit(out, target)
    early = target <= 2
    # Hand-built reading: binary target grade > 0, 3-way target = grade, KL3-4 dropped.
    want_bin = focal_loss(out["aux_binary"][early], (target[early] > 0).long())
    want_early = focal_loss(out["aux_early"][early], target[early])
    torch.testing.assert_close(res["aux_binary"], want_bin.detach())
    torch.testing.assert_close(res["aux_early"], want_early.detach())
    torch.testing.assert_close(res["loss"].detach(),
                               res["main"] + 0.5 * want_bin.detach() + 0.25 * want_early.detach())
    assert res["loss"].requires_grad
    assert not any(res[k].requires_grad for k in ("main", "aux_binary", "aux_early"))
    res["loss"].backward()
    for t in out.values():
        assert torch.isfinite(t.grad).all()
    # Masked samples (rows 3, 4) get no gradient through the aux heads.
    assert torch.equal(out["aux_binary"].grad[3:5], torch.zeros(2, 2))


def test_multitask_alpha_buffer_moves_with_module():
    """alpha is a buffer: .to() changes its dtype and device with the module."""
    crit = KLMultiTaskLoss(alpha=ALPHA)
    buffers = dict(crit.named_buffers())
    assert any(k.endswith("alpha") for k in buffers)
    moved = crit.to(torch.float64)
    alpha = [v for k, v in moved.named_buffers() if k.endswith("alpha")][0]
    assert alpha.dtype == torch.float64
    assert alpha.tolist() == pytest.approx(list(ALPHA))
    meta = KLMultiTaskLoss(alpha=ALPHA).to("meta")
    assert all(v.device.type == "meta" for v in meta.buffers())


@pytest.mark.parametrize(
    "counts, alpha, p_correct",
    [
        (TABLE2_COUNTS, ALPHA, None),
        (TABLE2_COUNTS, ALPHA, [0.9, 0.5, 0.7, 0.8, 0.6]),
        (TABLE2_COUNTS, "frequency", None),
        ([10, 20, 30, 40, 0], "uniform", None),
    ],
)
def test_influence_share_sums_to_one(counts, alpha, p_correct):
    res = effective_influence_share(counts, alpha, gamma=2.0, p_correct=p_correct)
    assert set(res) == {"before", "after_alpha", "after_alpha_gamma"}
    for shares in res.values():
        assert len(shares) == 5 and all(isinstance(v, float) for v in shares)
        assert sum(shares) == pytest.approx(1.0, abs=1e-12)


def test_influence_share_before_matches_table2_percentages():
    res = effective_influence_share(TABLE2_COUNTS, ALPHA)
    table2_pct = [39.41, 18.09, 26.34, 13.14, 3.02]
    # 295 / 9786 = 3.0145 %: the paper prints 3.02, apparently so the column sums to 100.
    assert [100 * v for v in res["before"]] == pytest.approx(table2_pct, abs=0.01)
    # Uniform p: the focal factor cancels.
    assert res["after_alpha_gamma"] == pytest.approx(res["after_alpha"])
    # Alpha-only arithmetic recorded in the docstring (not the paper's Table 2 shares).
    assert [round(100 * v, 1) for v in res["after_alpha"]] == [32.1, 29.6, 21.5, 10.7, 6.1]


def test_influence_share_focal_factor_and_paper_discrepancy():
    p = [0.9, 0.9, 0.9, 0.9, 0.9 - 0.1 * (math.sqrt(10) - 1)]  # (1-p_KL4) = sqrt(10) * 0.1
    res = effective_influence_share(TABLE2_COUNTS, ALPHA, gamma=2.0, p_correct=p)
    # Only a KL4-specific 10x focal factor brings the model near the paper's shares,
    # which themselves sum to 94 %, not 100 % (see the docstring).
    assert sum(TABLE2_SHARES_PCT) == pytest.approx(94.0)
    scaled = [94.0 * v for v in res["after_alpha_gamma"]]
    assert scaled == pytest.approx(list(TABLE2_SHARES_PCT), abs=0.25)


@pytest.mark.parametrize(
    "counts, alpha, p_correct, match",
    [
        ([], ALPHA, None, "empty"),
        ([0, 0, 0, 0, 0], ALPHA, None, "positive"),
        (TABLE2_COUNTS, [0.2] * 4, None, "5 values"),
        (TABLE2_COUNTS, ALPHA, [0.5] * 4, "5 values"),
        (TABLE2_COUNTS, ALPHA, [0.5, 0.5, 1.5, 0.5, 0.5], r"\[0, 1\]"),
        (TABLE2_COUNTS, ALPHA, [1.0] * 5, "all zero"),
    ],
)
def test_influence_share_errors(counts, alpha, p_correct, match):
    with pytest.raises(KoaError, match=match):
        effective_influence_share(counts, alpha, p_correct=p_correct)


# ---------------------------------------------------------------- beyond the paper
def test_sord_targets_shape_mass_and_ordering():
    from koa_core.train.losses import sord_targets

    q = sord_targets(torch.tensor([0, 2, 4]), 5, 2.0)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert q.argmax(1).tolist() == [0, 2, 4]
    # symmetric around the middle grade; mass falls with the squared distance
    assert q[1, 1] == pytest.approx(q[1, 3]) and q[1, 1] > q[1, 0]
    assert float(q[1, 2]) == pytest.approx(1 / (1 + 2 * math.exp(-2) + 2 * math.exp(-8)))
    # larger scale -> closer to one-hot
    assert float(sord_targets(torch.tensor([2]), 5, 8.0)[0, 2]) > float(q[1, 2])
    with pytest.raises(ValueError):
        sord_targets(torch.tensor([1]), 5, 0.0)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_soft_focal_with_one_hot_targets_equals_focal(gamma):
    from koa_core.train.losses import soft_focal_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 3
    target = torch.randint(0, 5, (16,), generator=g)
    alpha = torch.tensor(ALPHA)
    q = F.one_hot(target, 5).float()
    got = soft_focal_loss(logits, q, gamma=gamma, weight=alpha[target])
    assert float(got) == pytest.approx(float(focal_loss(logits, target, alpha, gamma)),
                                       rel=1e-5)


def test_soft_focal_matches_float64_reference_for_confident_and_wrong_samples():
    from koa_core.train.losses import soft_focal_loss, sord_targets

    logits = torch.tensor([[20.0, 0, 0, 0, 0], [0, 0, 5.0, 0, 0], [-30.0, 0, 0, 0, 0]])
    target = torch.tensor([0, 2, 0])
    q = sord_targets(target, 5, 2.0)
    z = logits.double()
    p = torch.softmax(z, 1)
    ref = (q.double() * (1 - p) ** 2 * -torch.log_softmax(z, 1)).sum(1).mean()
    got = soft_focal_loss(logits, q, gamma=2.0)
    assert float(got) == pytest.approx(float(ref), rel=1e-4)


def test_normalise_alpha_mean_one_over_training_labels_keeps_ratios():
    from koa_core.train.losses import normalise_alpha

    a = torch.tensor(ALPHA)
    n = torch.tensor(TABLE2_COUNTS, dtype=torch.float32)
    b = normalise_alpha(a, TABLE2_COUNTS)
    assert float((b * n).sum() / n.sum()) == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(b / b[0], a / a[0])
    assert float(b[0] / a[0]) == pytest.approx(9786 / 1597.7, rel=1e-3)  # ~6.1x
    with pytest.raises(KoaError):
        normalise_alpha(torch.tensor([0.0, 0, 0, 0, 1]), [10, 10, 10, 10, 0])


def test_sord_changes_only_the_main_term_and_spares_the_near_miss():
    outputs_near = {"logits": torch.tensor([[0.0, 0, 0, 6.0, 0]]), "aux_binary": None,
                    "aux_early": None}
    outputs_far = {"logits": torch.tensor([[6.0, 0, 0, 0, 0]]), "aux_binary": None,
                   "aux_early": None}
    y = torch.tensor([2])
    hard = KLMultiTaskLoss(alpha=ALPHA)
    soft = KLMultiTaskLoss(alpha=ALPHA, sord=2.0)
    # hard labels: calling KL2 "KL3" or "KL0" with the same confidence costs the same
    assert float(hard(outputs_near, y)["main"]) == pytest.approx(
        float(hard(outputs_far, y)["main"]))
    # ordinal soft labels: the neighbouring grade costs less than the distant one
    assert float(soft(outputs_near, y)["main"]) < 0.9 * float(soft(outputs_far, y)["main"])


def test_aux_alpha_weights_auxiliary_samples_by_their_grade_alpha():
    g = torch.Generator().manual_seed(1)
    out = {"logits": torch.randn(12, 5, generator=g),
           "aux_binary": torch.randn(12, 2, generator=g),
           "aux_early": torch.randn(12, 3, generator=g)}
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 1, 1])
    alpha = torch.tensor(ALPHA)
    plain = KLMultiTaskLoss(alpha=alpha)(out, y)
    weighted = KLMultiTaskLoss(alpha=alpha, aux_alpha=True)(out, y)
    early = y <= 2
    per = focal_loss(out["aux_early"], y, gamma=2.0, mask=early, reduction="none")
    expect = float((per * alpha[y.clamp(max=4)]).sum() / early.sum())
    assert float(weighted["aux_early"]) == pytest.approx(expect, rel=1e-6)
    assert float(weighted["main"]) == float(plain["main"])
    assert float(weighted["aux_binary"]) < float(plain["aux_binary"])  # alpha < 1 shrinks it
    with pytest.raises(ValueError):
        KLMultiTaskLoss(alpha=None, aux_alpha=True)


# ---------------------------------------------------------------- exact contracts
def test_defaults_are_the_papers():
    """γ = 2 (§2.3b) wherever a default is taken."""
    assert FocalLoss().gamma == 2.0 and KLMultiTaskLoss().gamma == 2.0
    from koa_core.train.losses import soft_focal_loss
    q = F.one_hot(torch.tensor([0, 1, 2, 3, 4]), 5).float()
    z = torch.randn(5, 5, generator=torch.Generator().manual_seed(3))
    assert float(soft_focal_loss(z, q)) == pytest.approx(float(soft_focal_loss(z, q, 2.0)))
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert float(focal_loss(logits, y)) == pytest.approx(float(focal_loss(logits, y, gamma=2.0)))
    share = effective_influence_share(TABLE2_COUNTS, ALPHA,
                                      p_correct=[0.9, 0.5, 0.9, 0.9, 0.5])
    assert share == effective_influence_share(TABLE2_COUNTS, ALPHA, gamma=2.0,
                                              p_correct=[0.9, 0.5, 0.9, 0.9, 0.5])


def test_focal_loss_module_passes_reduction_and_mask_through():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(8, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mask = torch.tensor([True, False] * 4)
    for red in ("mean", "sum", "none"):
        got = FocalLoss(alpha=[1.0, 2.0, 3.0], gamma=0.5, reduction=red)(logits, y, mask=mask)
        want = focal_loss(logits, y, alpha=[1.0, 2.0, 3.0], gamma=0.5, reduction=red,
                          mask=mask)
        assert torch.equal(got, want)
    assert not torch.equal(FocalLoss()(logits, y, mask=mask), FocalLoss()(logits, y))
    with pytest.raises(ValueError, match="^reduction must be one of"):
        FocalLoss(reduction="max")


def test_loss_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"^scale must be > 0, got 0.0$"):
        from koa_core.train.losses import sord_targets
        sord_targets(torch.tensor([1]), 5, 0.0)
    from koa_core.train.losses import normalise_alpha, sord_targets
    assert torch.allclose(sord_targets(torch.tensor([2]), 5, 0.5).sum(), torch.tensor(1.0))
    with pytest.raises(KoaError, match=r"^loss.alpha_norm=mean1: alpha gives every training "
                                       r"image weight 0$"):
        normalise_alpha(torch.tensor([0.0, 0, 0, 0, 1]), [10, 10, 10, 10, 0])
    with pytest.raises(KoaError, match=r"^class counts: expected 5 values"):
        normalise_alpha(torch.tensor(ALPHA), [1, 2, 3])
    # a training set of 1 image is still a positive mass
    assert float(normalise_alpha(torch.tensor(ALPHA), [0, 0, 0, 0, 1])[4]) == \
        pytest.approx(1.0)
    with pytest.raises(KoaError, match=r"^class counts: empty$"):
        effective_influence_share([], ALPHA)
    with pytest.raises(KoaError, match=r"^class counts: total must be positive$"):
        effective_influence_share([0, 0, 0, 0, 0], "uniform")
    assert effective_influence_share([1, 0, 0, 0, 0], "uniform")["before"][0] == 1.0
    with pytest.raises(KoaError, match=r"^class counts: values must be non-negative"):
        effective_influence_share([1, -1, 0, 0, 0], "uniform")


def test_influence_share_takes_counts_as_a_tensor():
    t = torch.tensor(TABLE2_COUNTS)
    assert effective_influence_share(t, ALPHA) == \
        effective_influence_share(list(TABLE2_COUNTS), ALPHA)


def test_influence_share_refuses_weights_that_are_all_zero():
    with pytest.raises(KoaError, match="^effective_influence_share: alpha-weighted weights "
                                       "are all zero$"):
        effective_influence_share([5, 0, 0, 0, 0], [0.0, 1, 1, 1, 1])
    with pytest.raises(KoaError, match="^p_correct: expected 5 values"):
        effective_influence_share(TABLE2_COUNTS, ALPHA, p_correct=[0.5])
    # with one shared p the focal factor cancels: after_alpha_gamma == after_alpha
    s = effective_influence_share(TABLE2_COUNTS, ALPHA)
    assert s["after_alpha_gamma"] == pytest.approx(s["after_alpha"])


# ---------------------------------------------------------------- whole messages
@pytest.mark.parametrize("call, kind, message", [
    (lambda: focal_loss(torch.randn(2, 5), torch.tensor([0, 1]), reduction="avg"),
     ValueError, "reduction must be one of ('mean', 'sum', 'none'), got 'avg'"),
    (lambda: focal_loss(torch.randn(5), torch.tensor([0])),
     ValueError, "logits must be (B, C, ...), got shape (5,)"),
    (lambda: focal_loss(torch.randn(2, 5), torch.tensor([0, 1]), mask=torch.tensor([True])),
     ValueError, "mask shape (1,) != target shape (2,)"),
    (lambda: focal_loss(torch.randn(2, 5), torch.tensor([0, 1]), alpha=[1.0, 1.0]),
     ValueError, "alpha must have 5 entries, got shape (2,)"),
    (lambda: KLMultiTaskLoss(alpha=None, aux_alpha=True), ValueError, "aux_alpha needs alpha"),
    (lambda: KLMultiTaskLoss()({"logits": None}, torch.tensor([0])),
     ValueError, "outputs['logits'] is required"),
    (lambda: resolve_alpha("frequency"),
     KoaError, "loss.alpha='frequency' needs the training class counts"),
    (lambda: resolve_alpha("frequency", class_counts=[10, 0, 5, 0, 5]),
     KoaError, "loss.alpha='frequency': no training images for grade(s) KL1, KL3"),
    (lambda: resolve_alpha("frequency", class_counts=[10, 5, 5]),
     KoaError, "class counts: expected 5 values (KL0..KL4), got 3"),
    (lambda: resolve_alpha([0.2] * 6), KoaError, "loss.alpha: expected 5 values (KL0..KL4), got 6"),
    (lambda: resolve_alpha([0.0] * 5),
     KoaError, "loss.alpha: at least one class weight must be positive"),
    (lambda: effective_influence_share(TABLE2_COUNTS, ALPHA, p_correct=[1.0] * 5),
     KoaError, "effective_influence_share: alpha-and-focal-weighted weights are all zero"),
])
def test_loss_errors_are_whole_sentences(call, kind, message):
    with pytest.raises(kind) as err:
        call()
    assert str(err.value) == message


def test_the_objective_passes_its_gamma_and_alpha_to_every_term():
    """A gamma other than the default, and SORD at a scale below 1, reach each term as
    documented: the main focal term, the soft-label term weighted by alpha of the true
    grade, and the auxiliary terms."""
    from koa_core.train.losses import soft_focal_loss, sord_targets

    g = torch.Generator().manual_seed(4)
    out = {"logits": torch.randn(8, 5, generator=g), "aux_binary": torch.randn(8, 2, generator=g),
           "aux_early": torch.randn(8, 3, generator=g)}
    y = torch.tensor([0, 1, 2, 3, 4, 2, 1, 0])
    alpha = torch.tensor(ALPHA)
    early = y <= 2
    hard = KLMultiTaskLoss(alpha=alpha, gamma=0.5)(out, y)
    assert float(hard["main"]) == pytest.approx(
        float(focal_loss(out["logits"], y, alpha=alpha, gamma=0.5)), rel=1e-6)
    assert float(hard["aux_binary"]) == pytest.approx(
        float(focal_loss(out["aux_binary"], (y > 0).long(), gamma=0.5, mask=early)), rel=1e-6)
    assert float(hard["aux_early"]) == pytest.approx(
        float(focal_loss(out["aux_early"], y, gamma=0.5, mask=early)), rel=1e-6)
    soft = KLMultiTaskLoss(alpha=alpha, gamma=0.5, sord=0.5)(out, y)
    assert float(soft["main"]) == pytest.approx(float(soft_focal_loss(
        out["logits"], sord_targets(y, 5, 0.5), gamma=0.5, weight=alpha[y])), rel=1e-6)
    weighted = KLMultiTaskLoss(alpha=alpha, gamma=0.5, aux_alpha=True)(out, y)
    per = focal_loss(out["aux_early"], y, gamma=0.5, mask=early, reduction="none")
    assert float(weighted["aux_early"]) == pytest.approx(
        float((per * alpha[y]).sum() / early.sum()), rel=1e-6)


def test_aux_alpha_with_one_early_knee_divides_by_one():
    out = {"logits": torch.zeros(3, 5), "aux_binary": None,
           "aux_early": torch.tensor([[2.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3])}
    y = torch.tensor([0, 3, 4])  # one knee of KL0-2
    alpha = torch.tensor(ALPHA)
    got = KLMultiTaskLoss(alpha=alpha, aux_alpha=True)(out, y)["aux_early"]
    one = focal_loss(out["aux_early"][:1], y[:1], gamma=2.0)
    assert float(got) == pytest.approx(float(one * alpha[0]), rel=1e-6)


def test_the_objective_defaults_are_the_configs():
    from koa_core.config import LossConfig

    loss, cfg = KLMultiTaskLoss(), LossConfig()
    assert (loss.gamma, loss.aux_binary_weight, loss.aux_early_weight, loss.sord,
            loss.aux_alpha) == (cfg.gamma, cfg.aux_binary_weight, cfg.aux_early_weight,
                                cfg.sord, cfg.aux_alpha)


def test_influence_share_with_three_grades():
    s = effective_influence_share([10, 20, 70], [1.0, 1.0, 1.0])
    assert s["before"] == pytest.approx([0.1, 0.2, 0.7])
    assert s["after_alpha"] == pytest.approx([0.1, 0.2, 0.7])
