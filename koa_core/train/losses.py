"""Losses: weighted focal loss and the multi-task KL objective (paper §2.3b, Table 2).

The main head is trained with the weighted focal loss of Lin et al.,
``L = -alpha_t (1 - p_t)^gamma log p_t``, with the per-class ``alpha`` of Table 2
(:data:`koa_core.paper.ALPHA`) and ``gamma = 2``. The auxiliary early-stage heads
(§4: KL0-1-2 with label masking) add two masked focal terms, see :class:`KLMultiTaskLoss`.

Beyond the paper (each off by default, each a row of the recipe ablation):
:func:`normalise_alpha` rescales Table 2's alpha so its mean over the training labels is 1
(the paper's alpha averages ~0.16 per knee, so the unscaled auxiliary terms outweigh the
main head), ``aux_alpha`` weights the auxiliary samples by the same alpha, and
:func:`sord_targets` + :func:`soft_focal_loss` train on ordinal soft labels (SORD, Diaz &
Marathe 2019: ``q_k ∝ exp(-s (k - y)^2)``), so a KL2 called KL3 costs less than one
called KL0.

:func:`effective_influence_share` recomputes Table 2's "effective gradient influence
share" column under a stated, transparent model; its docstring records why the paper's
numbers cannot be reproduced from the paper's own counts and alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from koa_core.errors import KoaError
from koa_core.model.ordinal import corn_loss

__all__ = [
    "FocalLoss",
    "KLMultiTaskLoss",
    "effective_influence_share",
    "focal_loss",
    "normalise_alpha",
    "resolve_alpha",
    "soft_focal_loss",
    "sord_targets",
]

NUM_CLASSES = 5

_REDUCTIONS = ("mean", "sum", "none")


def focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
) -> Tensor:
    """Weighted focal loss ``-alpha_t (1 - p_t)^gamma log p_t``.

    ``logits`` is ``(B, C)`` (or ``(B, C, d1, ...)`` like :func:`F.cross_entropy`),
    ``target`` the matching class indices. ``alpha`` is None (every class weight 1) or
    ``C`` per-class weights. ``mask`` (bool, shaped like ``target``) drops samples:
    they contribute exactly nothing, and their targets may be out of range.

    Normalisation of ``reduction="mean"``: the plain mean of ``alpha_t * focal_t`` over
    the (unmasked) samples, i.e. ``sum / n_unmasked``. This is *not* PyTorch's weighted
    cross-entropy mean, which divides by ``sum(alpha_t)``; at ``gamma = 0`` this equals
    ``F.cross_entropy(logits, target, weight=alpha, reduction="sum") / n``. With no
    unmasked sample the mean is 0.0 and still carries a graph (never NaN).
    ``reduction="none"`` returns per-sample losses with masked entries set to 0.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, C, ...), got shape {tuple(logits.shape)}")
    # Compute in float32 even under bf16 autocast: log_softmax and the focal factor lose
    # too much precision in bf16 for confident samples.
    logits = logits.float()
    target = target.long()
    if mask is not None:
        mask = mask.to(device=target.device, dtype=torch.bool)
        if mask.shape != target.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != target shape "
                             f"{tuple(target.shape)}")
        # Masked targets may be outside [0, C) (e.g. KL3-4 on a 3-way head): gather a
        # harmless class 0 for them; their loss is zeroed below.
        target = torch.where(mask, target, torch.zeros_like(target))

    logp = F.log_softmax(logits, dim=1)
    loss = _focal_terms(logp, target, gamma)
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=logp.dtype, device=logp.device)
        if alpha_t.dim() != 1 or alpha_t.numel() != logits.shape[1]:
            raise ValueError(f"alpha must have {logits.shape[1]} entries, "
                             f"got shape {tuple(alpha_t.shape)}")
        loss = alpha_t[target] * loss

    return _reduce(loss, mask, reduction)


def _focal_terms(logp: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Per-sample ``(1 - p_t)^gamma (-log p_t)`` from log-probabilities ``logp``."""
    logp_t = logp.gather(1, target.unsqueeze(1)).squeeze(1)
    if gamma == 0:
        return -logp_t
    # 1 - p_t as the sum of the other grades' probabilities, and for confident samples
    # -log p_t as -log1p(-(1 - p_t)): both keep their relative precision where p_t
    # rounds to 1 in float32 (and log_softmax's log p_t to 0), so the focal loss does
    # not collapse to 0 there; elsewhere -log p_t comes from log_softmax as usual.
    others = torch.ones_like(logp, dtype=torch.bool).scatter_(1, target.unsqueeze(1), False)
    one_minus_p = logp.exp().masked_fill(~others, 0.0).sum(1)
    confident = one_minus_p < 0.5
    nll = torch.where(confident, -torch.log1p(-one_minus_p.clamp(max=0.5)), -logp_t)
    return one_minus_p.pow(gamma) * nll


def _reduce(loss: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Masked samples count nothing; ``mean`` divides by the unmasked samples."""
    if mask is not None:
        # where (not multiply) so a non-finite value in a masked slot cannot leak through.
        loss = torch.where(mask, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if mask is None:
        return loss.mean()
    # clamp keeps an all-masked batch at 0 / 1 = 0 (with grad) instead of 0 / 0 = NaN,
    # and avoids a host sync that an `if mask.any()` branch would need.
    return loss.sum() / mask.sum().clamp(min=1).to(loss.dtype)


def sord_targets(target: Tensor, num_classes: int, scale: float) -> Tensor:
    """Ordinal soft labels (SORD): ``q_k ∝ exp(-scale (k - y)^2)`` for each target ``y``.

    ``scale`` > 0; larger is closer to one-hot (at 2.0 the true grade keeps 0.79 of the
    mass in the middle of the scale, each neighbour 0.11)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    k = torch.arange(num_classes, device=target.device, dtype=torch.float32)
    d = k.unsqueeze(0) - target.long().unsqueeze(1).float()
    return torch.softmax(-float(scale) * d * d, dim=1)


def soft_focal_loss(logits: Tensor, q: Tensor, gamma: float = 2.0,
                    weight: Tensor | None = None) -> Tensor:
    """Focal loss against a target distribution: the mean over samples of
    ``w * sum_k q_k (1 - p_k)^gamma (-log p_k)``, with ``w`` the per-sample ``weight``
    (e.g. alpha of the true grade; 1 if None). With one-hot ``q`` it equals
    :func:`focal_loss` with ``alpha_t = w``. Computed in float32 with ``1 - p_k`` from the
    other grades' log-sum-exp, so confident samples keep their precision."""
    z = logits.float()
    q = q.to(z.dtype)
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    logp = z - lse
    c = z.shape[1]
    eye = torch.eye(c, dtype=torch.bool, device=z.device)
    others = z.unsqueeze(1).expand(-1, c, -1).masked_fill(eye, -math.inf)  # (B, k, j != k)
    log_one_minus_p = torch.logsumexp(others, dim=2) - lse  # log(1 - p_k)
    one_minus_p = log_one_minus_p.exp()
    confident = one_minus_p < 0.5
    nll = torch.where(confident, -torch.log1p(-one_minus_p.clamp(max=0.5)), -logp)
    per_sample = (q * one_minus_p.pow(gamma) * nll).sum(1) if gamma else (q * nll).sum(1)
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.dtype)
    return per_sample.mean()


def normalise_alpha(alpha: Tensor, class_counts: Sequence[int]) -> Tensor:
    """``alpha`` rescaled so its mean over the training labels is 1 (ratios kept):
    ``alpha * N / sum_c n_c alpha_c``. Table 2's alpha on Table 2's counts averages 0.163
    per knee, so this multiplies it by ~6.1."""
    counts = torch.as_tensor(_check_weights(class_counts, "class counts", alpha.numel()),
                             dtype=torch.float32)
    mass = float((counts * alpha.float()).sum())
    if mass <= 0:
        raise KoaError("loss.alpha_norm=mean1: alpha gives every training image weight 0")
    return (alpha.float() * float(counts.sum()) / mass).to(torch.float32)


class FocalLoss(nn.Module):
    """:func:`focal_loss` as a module; ``alpha`` is a buffer so it follows ``.to(device)``."""

    alpha: Tensor | None

    def __init__(
        self,
        alpha: Tensor | Sequence[float] | None = None,
        gamma: float = 2.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.register_buffer(
            "alpha",
            None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).clone(),
        )

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma,
                          reduction=self.reduction, mask=mask)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


def _check_weights(values: Any, what: str, num_classes: int) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise KoaError(f"{what}: expected {num_classes} numbers, got {values!r}") from None
    if len(out) != num_classes:
        raise KoaError(f"{what}: expected {num_classes} values (KL0..KL{num_classes - 1}), "
                       f"got {len(out)}")
    if any(not math.isfinite(v) for v in out):
        raise KoaError(f"{what}: values must be finite, got {out}")
    if any(v < 0 for v in out):
        raise KoaError(f"{what}: values must be non-negative, got {out}")
    return out


def resolve_alpha(
    spec: str | Sequence[float] | Tensor,
    class_counts: Sequence[int] | None = None,
    num_classes: int = NUM_CLASSES,
) -> Tensor:
    """Turn a ``loss.alpha`` setting into a float32 tensor of per-class weights.

    ``spec`` is ``num_classes`` non-negative numbers (e.g. :data:`koa_core.paper.ALPHA`,
    used as given), ``"uniform"`` or ``"frequency"`` (inverse class frequency from
    ``class_counts``). Both named specs sum to 1, like the paper's alpha (which sums to
    0.999), so switching between them in an ablation does not rescale the loss, which
    matters because gradients are clipped at a fixed norm. Bad specs raise KoaError.
    """
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name == "uniform":
            return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float32)
        if name == "frequency":
            if class_counts is None:
                raise KoaError("loss.alpha='frequency' needs the training class counts")
            counts = _check_weights(class_counts, "class counts", num_classes)
            empty = [c for c, n in enumerate(counts) if n == 0]
            if empty:
                raise KoaError(f"loss.alpha='frequency': no training images for grade(s) "
                               f"{', '.join(f'KL{c}' for c in empty)}")
            inv = [1.0 / n for n in counts]
            total = sum(inv)
            return torch.tensor([w / total for w in inv], dtype=torch.float32)
        raise KoaError(f"loss.alpha: unknown spec {spec!r} "
                       f"(use 'uniform', 'frequency' or {num_classes} numbers)")
    if isinstance(spec, Tensor):
        spec = spec.detach().cpu().flatten().tolist()
    weights = _check_weights(spec, "loss.alpha", num_classes)
    if sum(weights) == 0:
        raise KoaError("loss.alpha: at least one class weight must be positive")
    return torch.tensor(weights, dtype=torch.float32)


class KLMultiTaskLoss(nn.Module):
    """Main weighted focal loss plus the two masked early-stage auxiliary losses.

    ``total = main + aux_binary_weight * aux_binary + aux_early_weight * aux_early``.

    - ``main``: focal loss on ``outputs["logits"]`` (B, 5) with ``alpha`` and ``gamma``
      (§2.3b, Table 2).
    - Auxiliary heads. The paper (§4) says only that auxiliary heads focus on the early
      grades KL0-1-2 with label masking. Our reading: ``outputs["aux_binary"]`` (B, 2)
      is KL0 vs KL1-2 (target ``grade > 0``) and ``outputs["aux_early"]`` (B, 3) is
      KL0 / KL1 / KL2 (target ``grade``); both are trained only on samples with
      grade <= 2, and KL3-4 samples are masked out (they contribute nothing, and the
      mean runs over the unmasked samples). A batch of only KL3-4 gives both aux
      losses exactly 0, so ``total == main``.
    - Our choice (the paper is silent): the aux losses use focal loss with the same
      ``gamma`` and uniform alpha (no class weighting), since Table 2's alpha is defined
      for the 5-grade problem only. Their weights are ``LossConfig.aux_*_weight``.

    - Beyond the paper: with the CORN head (``outputs["corn"]``, :mod:`koa_core.model.ordinal`)
      ``main`` is CORN's loss, each knee weighted by alpha of its grade (no focusing
      term: ``gamma`` applies to the auxiliary heads only). ``sord`` > 0 trains the
      softmax main head on ordinal soft labels
      (:func:`sord_targets`, each sample still weighted by alpha of its true grade);
      ``aux_alpha`` weights each auxiliary sample by alpha of its grade, so the auxiliary
      terms are on the main term's scale.

    Missing or None aux outputs (aux heads off) contribute 0. ``forward`` returns a dict:
    ``"loss"`` (the total, with grad) and ``"main"``, ``"aux_binary"``, ``"aux_early"``
    as detached 0-d tensors (unweighted). They stay tensors so that logging does not
    force a device sync every step; call ``.item()`` when needed.
    """

    alpha: Tensor | None

    def __init__(
        self,
        alpha: Tensor | Sequence[float] | None = None,
        gamma: float = 2.0,
        aux_binary_weight: float = 0.3,
        aux_early_weight: float = 0.3,
        sord: float = 0.0,
        aux_alpha: bool = False,
    ) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.aux_binary_weight = float(aux_binary_weight)
        self.aux_early_weight = float(aux_early_weight)
        self.sord = float(sord)
        self.aux_alpha = bool(aux_alpha)
        if self.aux_alpha and alpha is None:
            raise ValueError("aux_alpha needs alpha")
        self.register_buffer(
            "alpha",
            None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).clone(),
        )

    def forward(self, outputs: Mapping[str, Tensor | None], target: Tensor) -> dict[str, Tensor]:
        logits = outputs["logits"]
        if logits is None:
            raise ValueError("outputs['logits'] is required")
        target = target.long().to(logits.device)
        if outputs.get("corn") is not None:  # the ordinal head trains its own tasks
            w = self.alpha[target] if self.alpha is not None else None
            main = corn_loss(outputs["corn"], target, weight=w)
        elif self.sord > 0:
            w = self.alpha[target] if self.alpha is not None else None
            main = soft_focal_loss(logits, sord_targets(target, logits.shape[1], self.sord),
                                   gamma=self.gamma, weight=w)
        else:
            main = focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma)
        total = main

        early = target <= 2  # label masking: aux heads see KL0-1-2 only
        zero = main.new_zeros(())
        aux_binary = zero
        aux_early = zero
        if outputs.get("aux_binary") is not None:
            aux_binary = self._aux(outputs["aux_binary"], (target > 0).long(), target, early)
            total = total + self.aux_binary_weight * aux_binary
        if outputs.get("aux_early") is not None:
            aux_early = self._aux(outputs["aux_early"], target, target, early)
            total = total + self.aux_early_weight * aux_early

        return {
            "loss": total,
            "main": main.detach(),
            "aux_binary": aux_binary.detach(),
            "aux_early": aux_early.detach(),
        }

    def _aux(self, logits: Tensor, aux_target: Tensor, grade: Tensor, early: Tensor) -> Tensor:
        """A masked auxiliary focal term; with ``aux_alpha`` each sample weighs alpha of
        its grade (the mean still runs over the unmasked samples)."""
        if not self.aux_alpha:
            return focal_loss(logits, aux_target, gamma=self.gamma, mask=early)
        per = focal_loss(logits, aux_target, gamma=self.gamma, mask=early, reduction="none")
        w = self.alpha[grade.clamp(0, self.alpha.numel() - 1)]
        return (per * w).sum() / early.sum().clamp(min=1).to(per.dtype)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, aux_binary_weight={self.aux_binary_weight}, "
                f"aux_early_weight={self.aux_early_weight}, sord={self.sord}, "
                f"aux_alpha={self.aux_alpha}")


def effective_influence_share(
    counts: Sequence[int],
    alpha: str | Sequence[float] | Tensor,
    gamma: float = 2.0,
    p_correct: Sequence[float] | None = None,
) -> dict[str, list[float]]:
    """Per-class share of the total loss weight, as in Table 2's last column.

    Model (ours, stated because the paper gives none): class ``c`` with ``n_c`` training
    images, weight ``alpha_c`` and typical probability ``p_c`` of its true grade has
    influence ``n_c * alpha_c * (1 - p_c)^gamma``; shares are influences over their sum.
    Returns ``"before"`` (``n_c / N``), ``"after_alpha"`` (``n_c alpha_c``, normalised)
    and ``"after_alpha_gamma"``, each a list of fractions summing to 1. ``p_correct``
    defaults to the same ``p`` for every class, under which the focal factor cancels and
    ``after_alpha_gamma == after_alpha``. ``alpha`` takes anything :func:`resolve_alpha`
    takes (``"frequency"`` uses ``counts``).

    The paper's shares (:data:`koa_core.paper.TABLE2_SHARES_PCT`) cannot be reproduced
    from its own counts (:data:`koa_core.paper.TABLE2_COUNTS`) and alpha
    (:data:`koa_core.paper.ALPHA`). ``n_c alpha_c`` = 513.0, 472.6, 342.9, 171.0, 98.2
    (sum 1597.7) gives 32.1, 29.6, 21.5, 10.7, 6.1 %. The paper's share divided by
    ``n_c alpha_c`` is 0.0380, 0.0381, 0.0373, 0.0380 for KL0-KL3 but 0.379 for KL4: the
    paper's numbers are proportional to ``n_c alpha_c`` for KL0-3 and ten times that for
    KL4. A focal factor would have to be equal for KL0-3 and 10x larger for KL4 (e.g. ``p = 0.90``
    for KL0-3, ``p = 0.68`` for KL4); no natural assumption gives that (``p_c`` = class
    prior gives 20.6, 34.7, 20.4, 14.1, 10.1 %). The paper's shares also sum to 94.0 %,
    not 100 %. A conjecture that fits: alpha_KL4 taken ten times as large as printed
    (normalised 20.7, 19.0, 13.8, 6.9, 39.6 %; times 0.94: 19.4, 17.9, 13.0, 6.5,
    37.2 %, each within 0.2 points of the paper). That is a guess, not a documented
    computation, so it is not built in. Separately, the paper's KL3 count is 1,286 in
    Table 2, 1,086 in Table 1 and 1,786 in Fig. 1.
    """
    if isinstance(counts, Tensor):
        counts = counts.detach().cpu().flatten().tolist()
    counts = list(counts)
    if not counts:
        raise KoaError("class counts: empty")
    n = _check_weights(counts, "class counts", len(counts))
    k = len(n)
    if sum(n) <= 0:
        raise KoaError("class counts: total must be positive")
    a = resolve_alpha(alpha, class_counts=n, num_classes=k).tolist()
    if p_correct is None:
        focal = [1.0] * k  # one shared p: (1 - p)^gamma is a common factor and cancels
    else:
        p = _check_weights(p_correct, "p_correct", k)
        if any(v > 1 for v in p):
            raise KoaError(f"p_correct: probabilities must lie in [0, 1], got {p}")
        focal = [(1.0 - v) ** gamma for v in p]

    return {
        "before": _shares(n, "count"),
        "after_alpha": _shares([nc * ac for nc, ac in zip(n, a)], "alpha-weighted"),
        "after_alpha_gamma": _shares(
            [nc * ac * fc for nc, ac, fc in zip(n, a, focal)], "alpha-and-focal-weighted"),
    }


def _shares(values: list[float], what: str) -> list[float]:
    """``values`` as fractions of their sum."""
    total = sum(values)
    if total <= 0:
        raise KoaError(f"effective_influence_share: {what} weights are all zero")
    return [float(v / total) for v in values]
