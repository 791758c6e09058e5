"""The CORN ordinal head (beyond the paper): its loss against the authors' implementation,
its class distribution, and the model and objective wired to it."""

import pytest
import torch
import torch.nn.functional as F
from coral_pytorch.losses import corn_loss as reference_corn_loss

from koa_core.config import ModelConfig
from koa_core.model.network import build_model
from koa_core.model.ordinal import corn_log_probs, corn_loss
from koa_core.train.losses import KLMultiTaskLoss

LABEL_SETS = [
    [0, 1, 2, 2, 2, 3, 4, 4],
    [0, 0, 0, 0],  # only the first task has knees
    [4, 4, 3],  # every task has knees, all "above"
    [2, 0, 2, 1, 3, 1],  # no KL4
]


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_corn_loss_equals_the_authors_implementation(labels):
    torch.manual_seed(len(labels))
    y = torch.tensor(labels)
    logits = torch.randn(len(labels), 4) * 3
    assert corn_loss(logits, y) == pytest.approx(float(reference_corn_loss(logits, y, 5)),
                                                  rel=1e-6)


def test_corn_loss_weights_each_knee():
    """sum_i w_i * (knee i's own loss summed over its tasks) / all (knee, task) pairs."""
    torch.manual_seed(0)
    y = torch.tensor([0, 3, 1, 4, 2])
    logits = torch.randn(5, 4)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25])
    tasks = (y + 1).clamp(max=4)  # knee of grade g conditions min(g + 1, 4) tasks
    own = torch.stack([corn_loss(logits[i:i + 1], y[i:i + 1]) * tasks[i] for i in range(5)])
    assert corn_loss(logits, y, w) == pytest.approx(float((w * own).sum() / tasks.sum()),
                                                    rel=1e-6)
    assert corn_loss(logits, y, torch.ones(5)) == pytest.approx(float(corn_loss(logits, y)))
    # weights in another dtype (alpha kept as float64) are cast to the loss's float32
    assert corn_loss(logits, y, w.double()).dtype == torch.float32


def test_corn_loss_gradients_reach_only_the_conditioned_tasks():
    logits = torch.zeros(1, 4, requires_grad=True)
    corn_loss(logits, torch.tensor([1])).backward()  # a KL1 knee: tasks 0 and 1 only
    assert (logits.grad[0, :2] != 0).all() and (logits.grad[0, 2:] == 0).all()


def test_class_distribution_is_the_conditional_product():
    torch.manual_seed(1)
    c = torch.randn(64, 4) * 4
    s = torch.sigmoid(c.double())
    above = torch.cumprod(s, 1)  # P(y > k)
    expected = torch.cat([1 - above[:, :1], above[:, :-1] - above[:, 1:], above[:, -1:]], 1)
    p = corn_log_probs(c).exp()
    assert p.dtype == torch.float32
    assert p.double() == pytest.approx(expected.numpy(), abs=1e-6)
    assert p.sum(1) == pytest.approx(torch.ones(64).numpy(), abs=1e-5)
    # rank consistency: P(y > k) never rises with k
    tail = 1 - p.cumsum(1)[:, :-1]
    assert (tail[:, 1:] <= tail[:, :-1] + 1e-6).all()


def test_extreme_logits_stay_finite_and_bf16_gives_float32():
    c = torch.tensor([[60.0, 60.0, 60.0, 60.0], [-60.0, -60.0, -60.0, -60.0]])
    lp = corn_log_probs(c)
    assert torch.isfinite(lp).all()
    assert lp.argmax(1).tolist() == [4, 0]
    assert corn_log_probs(c.bfloat16()).dtype == torch.float32


def test_a_corn_model_returns_its_distribution_as_logits():
    torch.manual_seed(0)
    m = build_model(ModelConfig(pretrained="none", head="corn")).eval()
    assert m.head.out_features == 4
    with torch.no_grad():
        out = m(torch.randint(0, 256, (3, 2, 64, 64), dtype=torch.uint8))
    assert out["corn"].shape == (3, 4)
    assert F.softmax(out["logits"], 1) == pytest.approx(
        corn_log_probs(out["corn"]).exp().numpy(), abs=1e-6)
    plain = build_model(ModelConfig(pretrained="none")).eval()
    assert plain.head.out_features == 5
    with torch.no_grad():
        assert "corn" not in plain(torch.zeros(1, 2, 64, 64, dtype=torch.uint8))


def test_the_objective_trains_corn_with_alpha_and_keeps_the_aux_heads():
    torch.manual_seed(3)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    alpha = torch.tensor([0.1, 0.3, 0.2, 0.5, 0.9])
    corn = torch.randn(6, 4)
    out = {"logits": corn_log_probs(corn), "corn": corn,
           "aux_binary": torch.randn(6, 2), "aux_early": torch.randn(6, 3)}
    loss = KLMultiTaskLoss(alpha=alpha, gamma=2.0)(out, y)
    assert loss["main"] == pytest.approx(float(corn_loss(corn, y, alpha[y])), rel=1e-6)
    softmax_head = KLMultiTaskLoss(alpha=alpha, gamma=2.0)({**out, "corn": None}, y)
    assert loss["aux_binary"] == softmax_head["aux_binary"]
    assert loss["aux_early"] == softmax_head["aux_early"]
    assert loss["loss"] == pytest.approx(float(loss["main"] + 0.3 * loss["aux_binary"]
                                               + 0.3 * loss["aux_early"]), rel=1e-6)
    assert loss["main"] != pytest.approx(float(softmax_head["main"]))


def test_a_corn_model_learns_and_its_checkpoint_reloads(tmp_path):
    """The objective's gradient reaches the CORN head and the trunk; the checkpoint's
    sidecar rebuilds the 4-output head, and the backend reports a proper distribution."""
    import numpy as np

    from koa_core.config import Config, config_to_dict
    from koa_core.infer.backends import TorchBackend
    from koa_core.model.checkpoint import save_checkpoint

    cfg = Config()
    cfg.model.pretrained, cfg.model.head = "none", "corn"
    torch.manual_seed(0)
    m = build_model(cfg.model).train()
    views = torch.randint(0, 256, (4, 2, 64, 64), dtype=torch.uint8)
    KLMultiTaskLoss(alpha=torch.ones(5))(m(views), torch.tensor([0, 2, 3, 4]))["loss"].backward()
    assert m.head.weight.grad.abs().sum() > 0 and m.trunk[0].weight.grad.abs().sum() > 0
    path = save_checkpoint(tmp_path / "corn.safetensors", m.eval(),
                           {"config": config_to_dict(cfg),
                            "preprocess": {"size": 64, "crop": True, "clahe_clip": 2.0,
                                           "clahe_tiles": 8}})
    b = TorchBackend(path, "cpu")
    assert b.model.cfg.head == "corn" and b.model.head.out_features == 4
    probs, _ = b.predict(views.numpy())
    with torch.no_grad():
        expected = corn_log_probs(m(views)["corn"]).exp().numpy()
    assert probs.shape == (4, 5) and np.allclose(probs, expected, atol=1e-2)  # bf16 where native
