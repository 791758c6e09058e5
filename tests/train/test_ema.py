"""Tests for koa_core.train.ema: the weight average matches its definition and never syncs."""

import torch
from torch import nn

from koa_core.train.ema import WeightEMA


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_ema_follows_its_recurrence_over_steps_including_batchnorm_statistics():
    net = _net()
    ema = WeightEMA(net, 0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    expect = {k: v.clone().double() for k, v in net.state_dict().items()}
    for step in range(5):
        x = torch.randn(16, 4)
        net(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(net)
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expect[k] = 0.9 * expect[k] + 0.1 * v.double()
            else:
                expect[k] = v.clone().double()
    got = ema.state_dict()
    for k, v in expect.items():
        assert torch.allclose(got[k].double(), v, atol=1e-6), k
    # the average differs from the current weights and is not trainable
    assert not torch.allclose(got["0.weight"], net.state_dict()["0.weight"])
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_survives_load_state_dict_into_the_source_model():
    net = _net()
    ema = WeightEMA(net, 0.5)
    ema.update(net)
    other = _net()
    for p in other.parameters():
        p.data.add_(1.0)
    net.load_state_dict(other.state_dict())  # in place: the cached pairing stays valid
    ema.update(net)
    w0 = _net().state_dict()["0.weight"]
    assert torch.allclose(ema.state_dict()["0.weight"], w0 + 0.5)


def test_ema_rejects_a_decay_outside_0_1():
    import pytest
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            WeightEMA(_net(), bad)
