"""Dual-stream ResNet-18 with cross-attention and gated fusion (paper §2.4, Fig. 4, Table 5).

One model class covers every configuration of the paper's ablation:

* ``streams``: ``"raw"`` or ``"clahe"`` (single-stream baselines) or ``"dual"``;
* ``cross_attention``: bidirectional multi-head attention between the two streams'
  last-stage feature maps (7x7 = 49 tokens of width 512 at 224 px): raw queries attend
  to CLAHE keys/values and CLAHE queries to raw ones, each with a residual connection and
  LayerNorm (§2.4b);
* ``fusion``: ``"gated"`` - a small MLP on the pooled pair gives two softmax weights,
  ``w_raw + w_clahe = 1``, and ``F_fused = w_raw F_raw + w_clahe F_clahe`` (§2.4c) - or
  ``"mean"`` (fixed 0.5/0.5, the "no attention" ablation);
* dropout ``p = 0.4`` after fusion (§2.3), then the main 5-class head and, with
  ``aux_heads``, the auxiliary early-stage heads of §4: binary KL0 vs KL1-2 and 3-way
  KL0/KL1/KL2 (their label masking lives in :mod:`koa_core.train.losses`);
* ``head`` (beyond the paper): ``"softmax"`` (the paper's) or ``"corn"``, a
  rank-consistent ordinal head (:mod:`koa_core.model.ordinal`) whose class log-probabilities
  are returned as ``logits`` and its 4 conditional logits as ``corn``.

Both streams go through ONE torchvision ResNet-18 trunk (shared weights, §2.4a); the
grayscale view is duplicated to three channels and normalised with ImageNet statistics
(§2.4) inside the model, so inputs are ``(B, 2, H, W)`` tensors - channel 0 raw, channel 1
CLAHE - either ``uint8`` or float in [0, 1]. The forward pass returns a dict with
``logits``, ``aux_binary``, ``aux_early`` (None without aux heads) and ``gate``
(``(B, 2)`` fusion weights; None for single-stream models). ``tap_raw``/``tap_clahe``
are identity layers on each stream's trunk output: Grad-CAM hooks for each stream.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn

from koa_core.config import ModelConfig, validate_section
from koa_core.errors import KoaError
from koa_core.model.ordinal import corn_log_probs

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CrossAttention", "GatedFusion", "KLNet", "build_model",
           "load_pretrained_trunk", "resnet_trunk"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = 512  # ResNet-18 last-stage width


class CrossAttention(nn.Module):
    """Bidirectional cross-attention between two (B, C, H, W) feature maps (§2.4b)."""

    def __init__(self, dim: int = FEATURES, heads: int = 8, dropout: float = 0.0):
        super().__init__()
        self.raw_from_clahe = nn.MultiheadAttention(dim, heads, dropout=dropout,
                                                    batch_first=True)
        self.clahe_from_raw = nn.MultiheadAttention(dim, heads, dropout=dropout,
                                                    batch_first=True)
        self.norm_raw = nn.LayerNorm(dim)
        self.norm_clahe = nn.LayerNorm(dim)

    def forward(self, f_raw: torch.Tensor, f_clahe: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = f_raw.shape
        t_raw = f_raw.flatten(2).transpose(1, 2)  # (B, HW, C) tokens
        t_clahe = f_clahe.flatten(2).transpose(1, 2)
        a_raw = self.raw_from_clahe(t_raw, t_clahe, t_clahe, need_weights=False)[0]
        a_clahe = self.clahe_from_raw(t_clahe, t_raw, t_raw, need_weights=False)[0]
        out_raw = self.norm_raw(t_raw + a_raw)
        out_clahe = self.norm_clahe(t_clahe + a_clahe)

        def back(t):
            return t.transpose(1, 2).reshape(b, c, h, w)

        return back(out_raw), back(out_clahe)


class GatedFusion(nn.Module):
    """Softmax gate over the two pooled streams: w_raw + w_clahe = 1 (§2.4c)."""

    def __init__(self, dim: int = FEATURES, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 2))

    def forward(self, p_raw: torch.Tensor, p_clahe: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # the weights users see stay fp32 whatever the autocast precision (a bf16 copy of
        # them sums to 1 only within ~4e-3); the features are mixed in their own dtype
        w = torch.softmax(self.mlp(torch.cat([p_raw, p_clahe], dim=1)).float(), dim=1)
        wf = w.to(p_raw.dtype)
        return wf[:, :1] * p_raw + wf[:, 1:] * p_clahe, w


def resnet_trunk() -> nn.Sequential:
    r = torchvision.models.resnet18(weights=None)
    return nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3,
                         r.layer4)


def load_pretrained_trunk(trunk: nn.Sequential, spec: str) -> None:
    """Load ImageNet (``"imagenet"``) or local (PATH) ResNet-18 weights into the trunk.

    PATH may be a torchvision ``resnet18`` state dict as ``.safetensors`` or ``.pth``
    (read with ``weights_only=True``, so no code can run). Missing weights fail with one
    clear error naming the alternatives.
    """
    if spec in ("none", "", None):
        return
    if spec == "imagenet":
        try:
            state = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(
                progress=False)
        except Exception as exc:  # network, proxy or cache failures all mean "not available"
            raise KoaError(
                "ImageNet weights for ResNet-18 are not available "
                f"({type(exc).__name__}); set model.pretrained=none to train from scratch, "
                "or model.pretrained=PATH to a local resnet18 state dict "
                "(or place resnet18-f37072fd.pth in the torch hub cache)") from None
    else:
        path = Path(spec)
        if not path.is_file():
            raise KoaError(f"model.pretrained: {spec} is neither 'imagenet', 'none' nor a file")
        try:
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise KoaError(f"{path}: cannot load weights ({type(exc).__name__})") from None
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    mapped = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in names:
            mapped[f"{names.index(head)}.{rest}"] = v
    try:
        missing, _ = trunk.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:  # a tensor of the right name but the wrong shape
        raise KoaError(f"pretrained weights {spec}: not a ResNet-18 trunk "
                       f"({str(exc).splitlines()[-1].strip()[:120]})") from None
    if missing:
        raise KoaError(f"pretrained weights {spec}: {len(missing)} trunk tensors missing "
                       f"(e.g. {missing[0]}); is it a ResNet-18?")


class KLNet(nn.Module):
    """The paper's model and its ablations, configured by :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        validate_section("model", cfg, "model configuration")
        self.cfg = cfg
        self.trunk = resnet_trunk()
        self.tap_raw = nn.Identity()
        self.tap_clahe = nn.Identity()
        dual = cfg.streams == "dual"
        self.cross = CrossAttention(FEATURES, cfg.attention_heads) \
            if dual and cfg.cross_attention else None
        self.fusion = GatedFusion(FEATURES) if dual and cfg.fusion == "gated" else None
        self.dropout = nn.Dropout(cfg.dropout)
        # CORN: K-1 conditional logits, turned into class log-probabilities in forward_head
        self.head = nn.Linear(FEATURES, cfg.num_classes - (cfg.head == "corn"))
        self.aux_binary = nn.Linear(FEATURES, 2) if cfg.aux_heads else None
        self.aux_early = nn.Linear(FEATURES, 3) if cfg.aux_heads else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = x.expand(-1, 3, -1, -1)  # grayscale duplicated to RGB (§2.4)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) \
            if self.trunk[0].weight.is_contiguous(memory_format=torch.channels_last) else x

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused (B, 512) features before dropout, and the (B, 2) gate (None if single)."""
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"expected a (B, 2, H, W) tensor of raw+CLAHE views, got "
                             f"{tuple(x.shape)}")
        if self.cfg.streams != "dual":
            ch = 0 if self.cfg.streams == "raw" else 1
            f = self.trunk(self._normalise(x[:, ch:ch + 1]))
            f = (self.tap_raw if ch == 0 else self.tap_clahe)(f)
            return F.adaptive_avg_pool2d(f, 1).flatten(1), None
        b = x.shape[0]
        both = self.trunk(self._normalise(torch.cat([x[:, :1], x[:, 1:]], dim=0)))
        f_raw, f_clahe = self.tap_raw(both[:b]), self.tap_clahe(both[b:])
        if self.cross is not None:
            f_raw, f_clahe = self.cross(f_raw, f_clahe)
        p_raw = F.adaptive_avg_pool2d(f_raw, 1).flatten(1)
        p_clahe = F.adaptive_avg_pool2d(f_clahe, 1).flatten(1)
        if self.fusion is not None:
            return self.fusion(p_raw, p_clahe)
        gate = torch.full((b, 2), 0.5, device=x.device, dtype=p_raw.dtype)
        return 0.5 * (p_raw + p_clahe), gate

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor | None]:
        z = self.dropout(feats)
        main = self.head(z)
        out = {
            "logits": main,
            "aux_binary": self.aux_binary(z) if self.aux_binary is not None else None,
            "aux_early": self.aux_early(z) if self.aux_early is not None else None,
        }
        if self.cfg.head == "corn":  # the loss reads the conditional logits themselves
            out.update(logits=corn_log_probs(main), corn=main)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        feats, gate = self.forward_features(x)
        out = self.forward_head(feats)
        out["gate"] = gate
        return out


def build_model(cfg: ModelConfig | None = None) -> KLNet:
    """A :class:`KLNet` with the configured initialisation of the shared trunk."""
    cfg = cfg or ModelConfig()
    model = KLNet(cfg)
    load_pretrained_trunk(model.trunk, cfg.pretrained)
    return model
