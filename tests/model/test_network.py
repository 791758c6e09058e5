"""Model variants of paper §2.4 / Table 5: shapes, sharing, gating, pretrained loading."""

import urllib.error

import pytest
import torch
import torchvision

from koa_core.config import ModelConfig
from koa_core.errors import KoaError
from koa_core.model.network import KLNet, build_model, load_pretrained_trunk

VARIANTS = {
    "proposed": {},
    "raw-only": {"streams": "raw"},
    "clahe-only": {"streams": "clahe"},
    "dual-no-attention": {"cross_attention": False, "fusion": "mean"},
    "dual-attn-mean": {"fusion": "mean"},
    "no-aux": {"aux_heads": False},
}


def _model(**kw) -> KLNet:
    torch.manual_seed(0)
    return build_model(ModelConfig(pretrained="none", **kw)).eval()


def _x(b=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 2, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_shapes_and_finite(name):
    kw = VARIANTS[name]
    out = _model(**kw)(_x())
    assert out["logits"].shape == (3, 5)
    assert torch.isfinite(out["logits"]).all()
    if kw.get("aux_heads", True):
        assert out["aux_binary"].shape == (3, 2) and out["aux_early"].shape == (3, 3)
    else:
        assert out["aux_binary"] is None and out["aux_early"] is None
    if kw.get("streams", "dual") == "dual":
        assert out["gate"].shape == (3, 2)
    else:
        assert out["gate"] is None


def test_one_trunk_shared_by_both_streams():
    m = _model()
    stems = [mod for mod in m.modules()
             if isinstance(mod, torch.nn.Conv2d) and mod.in_channels == 3]
    assert len(stems) == 1
    # No-attention dual model has exactly the single-stream parameter count: no second trunk.
    def n(mod):
        return sum(p.numel() for p in mod.parameters())

    assert n(_model(cross_attention=False, fusion="mean")) == n(_model(streams="raw"))
    # A loss that only sees the CLAHE stream still trains the (shared) trunk.
    m.train()
    x = _x()
    x[:, 0] = 0
    feats, _ = m.forward_features(x)
    m.zero_grad()
    feats.sum().backward()
    assert m.trunk[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_gate_weights_sum_to_one(amp):
    """In fp32 and under bf16 autocast (forced, whatever this CPU's bf16 support): the
    reported gate is fp32 and sums to 1 (a bf16 gate is off by up to ~4e-3)."""
    m = _model().eval()
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None), torch.no_grad():
        gate = m(_x(b=5))["gate"]
    assert gate.dtype == torch.float32
    assert torch.allclose(gate.sum(1), torch.ones(5), atol=1e-6)
    assert ((gate > 0) & (gate < 1)).all()
    mean_gate = _model(fusion="mean")(_x())["gate"]
    assert torch.equal(mean_gate, torch.full_like(mean_gate, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_fusion_mixes_features_in_their_own_dtype(dtype):
    """The gate stays fp32 for users; the fused features keep the streams' dtype (bf16
    features under autocast are not promoted to fp32 by an fp32 gate)."""
    from koa_core.model.network import GatedFusion

    torch.manual_seed(0)
    fusion = GatedFusion(dim=8, hidden=4)
    p_raw, p_clahe = torch.randn(3, 8).to(dtype), torch.randn(3, 8).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        fused, w = fusion(p_raw, p_clahe)
    assert w.dtype == torch.float32 and fused.dtype == dtype
    wf = w.to(dtype)
    assert torch.equal(fused, wf[:, :1] * p_raw + wf[:, 1:] * p_clahe)


def test_gate_is_the_softmax_of_a_two_layer_relu_mlp():
    """Recomputed from the MLP's weights: Linear, ReLU, Linear, softmax over the pair."""
    import torch.nn.functional as F

    from koa_core.model.network import GatedFusion

    torch.manual_seed(0)
    fusion = GatedFusion(dim=8, hidden=16)
    p_raw, p_clahe = torch.randn(4, 8), torch.randn(4, 8)
    (l1, _, l2) = fusion.mlp
    hidden = F.relu(F.linear(torch.cat([p_raw, p_clahe], 1), l1.weight, l1.bias))
    expected = torch.softmax(F.linear(hidden, l2.weight, l2.bias), 1)
    assert (hidden == 0).any()  # the ReLU clips something here, so it is exercised
    assert torch.allclose(fusion(p_raw, p_clahe)[1], expected, atol=1e-6)


def test_cross_attention_keeps_the_knees_of_a_batch_apart():
    """Tokens attend within their own knee: changing knee 2 leaves knees 0 and 1 as they
    were (attention over the batch axis, e.g. batch_first lost, would mix them)."""
    from koa_core.model.network import CrossAttention

    torch.manual_seed(0)
    att = CrossAttention(dim=16, heads=2).eval()
    f_raw, f_clahe = torch.randn(3, 16, 2, 2), torch.randn(3, 16, 2, 2)
    with torch.no_grad():
        a = att(f_raw, f_clahe)
        f_raw2, f_clahe2 = f_raw.clone(), f_clahe.clone()
        f_raw2[2] += 1.0
        f_clahe2[2] -= 1.0
        b = att(f_raw2, f_clahe2)
    for i in range(2):
        assert torch.allclose(a[i][:2], b[i][:2], atol=1e-6)
        assert not torch.allclose(a[i][2], b[i][2])


def test_mean_fusion_is_the_mean_of_the_pooled_streams():
    m = _model(fusion="mean", cross_attention=False)
    x = _x()
    with torch.no_grad():
        feats, gate = m.forward_features(x)
        pooled = [m.trunk(m._normalise(x[:, c:c + 1])).mean((2, 3)) for c in (0, 1)]
    assert torch.allclose(feats, (pooled[0] + pooled[1]) / 2, atol=1e-5)
    assert torch.equal(gate, torch.full((3, 2), 0.5))


def test_uint8_and_float_inputs_agree():
    m = _model()
    x = _x()
    a = m(x)["logits"]
    b = m(x.float() / 255.0)["logits"]
    assert torch.allclose(a, b, atol=1e-5)


def _raw_stream(model, x):
    """The raw stream's feature map after cross-attention (its trunk output without)."""
    seen = {}

    def keep(mod, inputs, out):  # returns None: the output is left as it is
        seen["f"] = out[0] if isinstance(out, tuple) else out

    h = (model.cross if model.cross is not None else model.tap_raw).register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen["f"]


def test_cross_attention_mixes_streams():
    """Changing only the CLAHE view changes the raw stream's features after cross-attention;
    without cross-attention (same gate) the raw stream does not see the CLAHE view at all."""
    x = _x()
    y = x.clone()
    y[:, 1] = 255 - y[:, 1]
    m = _model()
    assert not torch.allclose(_raw_stream(m, x), _raw_stream(m, y), atol=1e-4)
    no_attn = _model(cross_attention=False)
    assert torch.equal(_raw_stream(no_attn, x), _raw_stream(no_attn, y))


def test_both_streams_go_through_the_same_trunk():
    """The raw stream of (a, b) equals the CLAHE stream of (b, a): true for one shared trunk,
    false for two trunks with their own weights."""
    m = _model(cross_attention=False, fusion="mean")
    x = _x()
    swapped = x.flip(1)
    seen = {}

    def keep(name):
        def hook(mod, inputs, out):
            seen[name] = out
        return hook

    hooks = [m.tap_raw.register_forward_hook(keep("raw")),
             m.tap_clahe.register_forward_hook(keep("clahe"))]
    with torch.no_grad():
        m(x)
        first = dict(seen)
        seen.clear()
        m(swapped)
    for h in hooks:
        h.remove()
    assert torch.allclose(first["raw"], seen["clahe"], atol=1e-5)
    assert torch.allclose(first["clahe"], seen["raw"], atol=1e-5)
    assert not torch.allclose(first["raw"], first["clahe"], atol=1e-3)


def _drive_gate(model, w_raw: float):
    last = model.fusion.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([50.0, -50.0] if w_raw == 1 else [-50.0, 50.0]))


@pytest.mark.parametrize("w_raw,streams", [(1, "raw"), (0, "clahe")])
def test_gate_at_an_extreme_is_one_stream(w_raw, streams):
    """Gate driven to (1, 0) / (0, 1): the fused features are the raw-only / CLAHE-only
    model's features with the same trunk."""
    dual = _model(cross_attention=False)
    _drive_gate(dual, w_raw)
    single = _model(streams=streams)
    single.trunk.load_state_dict(dual.trunk.state_dict())
    x = _x()
    with torch.no_grad():
        fused, gate = dual.forward_features(x)
        alone, _ = single.forward_features(x)
    assert gate[:, 0].tolist() == pytest.approx([w_raw] * len(x))
    assert torch.allclose(fused, alone, atol=1e-5)


@pytest.mark.parametrize("streams,ignored", [("raw", 1), ("clahe", 0)])
def test_single_stream_models_ignore_the_other_view(streams, ignored):
    m = _model(streams=streams)
    x = _x()
    y = x.clone()
    y[:, ignored] = 255 - y[:, ignored]
    with torch.no_grad():
        assert torch.equal(m(x)["logits"], m(y)["logits"])
        z = x.clone()
        z[:, 1 - ignored] = 255 - z[:, 1 - ignored]
        assert not torch.allclose(m(x)["logits"], m(z)["logits"])


@pytest.mark.parametrize("bad", [{"streams": "triple"}, {"fusion": "concat"}])
def test_bad_config_is_user_error(bad):
    with pytest.raises(KoaError):
        KLNet(ModelConfig(pretrained="none", **bad))


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        _model()(torch.zeros(2, 3, 64, 64))


def test_imagenet_unavailable_is_one_clear_error(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__,
                        "get_state_dict", offline)
    with pytest.raises(KoaError) as err:
        build_model(ModelConfig(pretrained="imagenet"))
    msg = str(err.value)
    assert msg.startswith("ImageNet weights for ResNet-18 are not available (URLError); ")
    for alternative in ("model.pretrained=none", "model.pretrained=PATH",
                        "resnet18-f37072fd.pth"):
        assert alternative in msg


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_from_local_file(tmp_path, suffix):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save(ref.state_dict(), path)
    m = build_model(ModelConfig(pretrained=str(path)))
    assert torch.equal(m.trunk[0].weight, ref.conv1.weight)
    assert torch.equal(m.trunk[7][1].conv2.weight, ref.layer4[1].conv2.weight)


def test_pretrained_missing_file():
    with pytest.raises(KoaError) as err:
        build_model(ModelConfig(pretrained="/no/such/weights.pth"))
    assert str(err.value) == ("model.pretrained: /no/such/weights.pth is neither 'imagenet', "
                              "'none' nor a file")


@pytest.mark.parametrize("spec", ["none", "", None])
def test_no_pretrained_weights_leaves_the_trunk_alone(spec):
    torch.manual_seed(0)
    trunk = _model().trunk
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    assert load_pretrained_trunk(trunk, spec) is None
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())


def test_pretrained_pickle_bomb_is_refused_without_running(tmp_path):
    """A .pth whose unpickling would run code (here: create a file) is refused, and the
    code never runs (torch.load with weights_only=True)."""
    import pickle

    marker = tmp_path / "ran"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "bomb.pth"
    with open(path, "wb") as fh:
        pickle.dump({"conv1.weight": Bomb()}, fh, protocol=2)
    with pytest.raises(KoaError) as err:
        build_model(ModelConfig(pretrained=str(path)))
    assert str(err.value) == f"{path}: cannot load weights (UnpicklingError)"
    assert not marker.exists()


def test_pretrained_that_is_not_a_resnet18_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(10, 512)}, str(path))  # a head, no trunk
    # all 100 trunk weights and BN statistics (a missing num_batches_tracked is allowed)
    with pytest.raises(KoaError, match=rf"^pretrained weights {path}: 100 trunk tensors "
                                       r"missing \(e\.g\. 0\.weight\); is it a ResNet-18\?$"):
        build_model(ModelConfig(pretrained=str(path)))
    save_file({"layer1.0.conv1.weight": torch.zeros(3, 3, 1, 1)}, str(path))  # wrong shape
    with pytest.raises(KoaError, match=rf"^pretrained weights {path}: not a ResNet-18 trunk "
                                       r"\(size mismatch for 4\.0\.conv1\.weight"):
        build_model(ModelConfig(pretrained=str(path)))


# ---------------------------------------------------------------- exact compositions
def test_cross_attention_is_a_residual_per_position_in_the_maps_layout():
    """out = LayerNorm(t + MHA(t, other, other)) token by token, tokens being the map's
    positions in row-major order; recomputed here from the block's own parts."""
    from koa_core.model.network import CrossAttention

    torch.manual_seed(0)
    block = CrossAttention(dim=16, heads=4).eval()
    f_raw, f_clahe = torch.randn(2, 16, 3, 5), torch.randn(2, 16, 3, 5)
    out_raw, out_clahe = block(f_raw, f_clahe)
    for f, g, mha, norm, out in ((f_raw, f_clahe, block.raw_from_clahe, block.norm_raw,
                                  out_raw),
                                 (f_clahe, f_raw, block.clahe_from_raw, block.norm_clahe,
                                  out_clahe)):
        for i in range(3):
            for j in range(5):
                t = f.permute(0, 2, 3, 1).reshape(2, 15, 16)
                o = g.permute(0, 2, 3, 1).reshape(2, 15, 16)
                a = mha(t, o, o)[0]
                want = norm(t + a)[:, i * 5 + j]
                assert torch.allclose(out[:, :, i, j], want, atol=1e-5), (i, j)


def test_normalise_is_imagenet_standardisation_of_each_view():
    from koa_core.config import ModelConfig
    from koa_core.model.network import build_model

    m = build_model(ModelConfig(pretrained="none", streams="raw"))
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    got = m._normalise(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = (x.float().div(255).expand(-1, 3, -1, -1) - mean) / std
    assert got.shape == (2, 3, 8, 8) and torch.allclose(got, want, atol=1e-6)
    # float input is taken as already scaled to [0, 1]
    assert torch.allclose(m._normalise(x.float() / 255), want, atol=1e-6)


@pytest.mark.parametrize("streams", ["raw", "clahe"])
def test_a_single_stream_model_taps_its_own_stream(streams):
    """Grad-CAM hooks the tap of the stream a single-stream model uses; the other stays idle."""
    m = _model(streams=streams)
    fired = []
    hooks = [m.tap_raw.register_forward_hook(lambda *a: fired.append("raw")),
             m.tap_clahe.register_forward_hook(lambda *a: fired.append("clahe"))]
    with torch.no_grad():
        m(_x())
    for h in hooks:
        h.remove()
    assert fired == [streams]
