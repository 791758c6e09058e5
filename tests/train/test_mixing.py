"""Mixup and CutMix on two-view batches (koa_core.train.mixing; beyond the paper, off by
default)."""

import pytest
import torch

from koa_core.config import AugmentConfig, load_config
from koa_core.errors import KoaError
from koa_core.train.losses import KLMultiTaskLoss
from koa_core.train.mixing import Mixer, mixed_loss


def _views(b=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 2, size, size), dtype=torch.uint8, generator=g)


def test_off_by_default_so_the_papers_recipe_is_unchanged():
    aug = load_config(None).augment
    assert (aug.mixup, aug.cutmix) == (0.0, 0.0)
    assert Mixer.from_config(aug) is None
    assert Mixer.from_config(AugmentConfig(mixup=0.2, mix_prob=0.0)) is None
    assert Mixer.from_config(AugmentConfig(cutmix=1.0)) is not None


def test_mixup_blends_both_views_of_a_knee_with_the_same_partner_and_weight():
    x = _views()
    mix = Mixer(mixup=0.4, seed=3)(x, epoch=2, step=5)
    assert mix.kind == "mixup" and 0 < mix.lam < 1
    assert sorted(mix.perm.tolist()) == list(range(6)) and mix.perm.tolist() != list(range(6))
    xf = x.float() / 255
    expected = mix.lam * xf + (1 - mix.lam) * xf[mix.perm]  # the view axis is not permuted
    assert mix.x.dtype == torch.float32 and torch.allclose(mix.x, expected, atol=1e-6)


def test_cutmix_pastes_one_box_of_the_partner_into_both_views():
    x = _views(size=32)
    mix = Mixer(cutmix=1.0, seed=1)(x, epoch=1, step=0)
    assert mix.kind == "cutmix" and mix.x.dtype == torch.uint8
    y0, y1, x0, x1 = mix.box
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert inside.any() and not inside.all()
    assert torch.equal(mix.x[..., inside], x[mix.perm][..., inside])
    assert torch.equal(mix.x[..., ~inside], x[..., ~inside])
    assert mix.lam == pytest.approx(1 - inside.sum().item() / 32 ** 2)


def test_draws_are_a_function_of_seed_epoch_and_step():
    x = _views()
    m = Mixer(mixup=0.4, cutmix=1.0, seed=7)
    a, b = m(x, 3, 4), m(x, 3, 4)
    assert (a.kind, a.lam, a.perm.tolist()) == (b.kind, b.lam, b.perm.tolist())
    draws = {(m(x, 3, s).kind, round(m(x, 3, s).lam, 6)) for s in range(40)}
    assert {k for k, _ in draws} == {"mixup", "cutmix"}  # both levers used, one per batch
    assert len(draws) > 30
    other = Mixer(mixup=0.4, cutmix=1.0, seed=8)(x, 3, 4)
    assert (other.lam, other.perm.tolist()) != (a.lam, a.perm.tolist())


def test_mix_prob_leaves_that_share_of_batches_unmixed():
    x = _views()
    m = Mixer(mixup=0.4, prob=0.25, seed=0)
    mixed = sum(m(x, 1, s) is not None for s in range(400))
    assert 70 <= mixed <= 130  # 100 expected
    assert Mixer(mixup=0.4)(x[:1], 1, 0) is None  # one knee has no partner


def test_mixed_loss_is_the_mix_of_the_losses_against_both_grades_on_every_head():
    torch.manual_seed(0)
    loss_fn = KLMultiTaskLoss()
    out = {"logits": torch.randn(6, 5), "aux_binary": torch.randn(6, 2),
           "aux_early": torch.randn(6, 3)}
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    mix = Mixer(mixup=0.4, seed=3)(_views(), 2, 5)
    parts = mixed_loss(loss_fn, out, y, mix)
    a, b = loss_fn(out, y), loss_fn(out, y[mix.perm])
    assert set(parts) == set(a)
    for k in a:
        assert torch.allclose(parts[k], mix.lam * a[k] + (1 - mix.lam) * b[k]), k
    # the auxiliary heads keep their label masks: grades 3-4 count for neither
    assert not torch.allclose(parts["aux_early"], a["aux_early"])
    assert mixed_loss(loss_fn, out, y, None)["loss"] == a["loss"]


def test_a_training_run_with_both_levers_records_them(tmp_path):
    import json

    from koa_core.train import engine

    cfg = load_config(None, [f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=32",
                             "data.phantom_per_class=6", "model.pretrained=none",
                             "train.epochs=1", "train.batch_size=8",
                             "train.max_steps_per_epoch=1", "train.amp=off",
                             "augment.mixup=0.2", "augment.cutmix=1.0",
                             "data.device_resident=on"])  # the GPU campaign's input path
    engine.fit(cfg, tmp_path / "run", progress=False)
    side = json.loads((tmp_path / "run" / "best.json").read_text())
    assert side["config"]["augment"]["mixup"] == 0.2
    assert side["config"]["augment"]["cutmix"] == 1.0


@pytest.mark.parametrize("key,value", [("mixup", "-1"), ("cutmix", "x"), ("mix_prob", "1.5")])
def test_bad_settings_are_refused(key, value):
    with pytest.raises(KoaError, match=f"augment.{key}"):
        load_config(None, [f"augment.{key}={value}"])
