"""A rank-consistent ordinal head: CORN (beyond the paper, which uses a 5-way softmax).

KL grades are ordered, and a softmax head treats KL0-vs-KL4 confusions like KL2-vs-KL3
ones. CORN (Shi, Cao & Raschka, "Deep neural networks for rank-consistent ordinal
regression based on conditional training", Pattern Recognit. Lett. 2023) replaces the
5-way head with K-1 = 4 binary tasks, task ``k`` answering "is the grade above k?" for
the knees whose grade is at least ``k``. Its outputs ``c_k`` are conditional logits,
``P(y > k | y > k-1) = sigmoid(c_k)``, so ``P(y > k)`` is a running product and can never
rise with ``k`` (rank consistency).

* :func:`corn_log_probs` turns the K-1 logits into the K class log-probabilities,
  ``log P(y = k) = log P(y > k-1) + log(1 - sigmoid(c_k))``, computed in log space. The
  model returns them as its ``logits``: their softmax is the class distribution itself,
  so evaluation, calibration, export and every decoding treat a CORN model like any other.
* :func:`corn_loss` is CORN's training loss, the binary cross-entropy of each task over
  the knees it conditions on, averaged over all (knee, task) pairs. It equals
  ``coral_pytorch.losses.corn_loss`` (the authors' implementation; tested), but is
  written with masks rather than boolean indexing, so a GPU step does not wait for the
  host, and takes per-knee weights (Table 2's alpha of the knee's grade).
* Decoding: the project's grade is the argmax of the class probabilities, as for the
  softmax head. The authors count the tasks whose cumulative ``P(y > k)`` exceeds 0.5,
  which is the median grade: ``koa_core.experiments.recipe.decode(probs, "median")``, a post-hoc
  lever of the recipe table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["corn_log_probs", "corn_loss"]


def corn_log_probs(logits: Tensor) -> Tensor:
    """Class log-probabilities ``(B, K)`` from CORN's conditional logits ``(B, K-1)``,
    in float32 whatever the input precision."""
    c = logits.float()
    above = F.logsigmoid(c).cumsum(1)  # log P(y > k), k = 0..K-2
    reached = F.pad(above, (1, 0))  # log P(y > k-1), with P(y > -1) = 1
    stop = F.pad(F.logsigmoid(-c), (0, 1))  # log P(y = k | y > k-1); the last grade: 1
    return reached + stop


def corn_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """CORN's loss of conditional logits ``(B, K-1)`` for grades ``target`` ``(B,)``:
    task ``k`` is trained on the knees with grade ``>= k`` to answer ``grade > k``. The
    sum over (knee, task) pairs, each times its knee's ``weight`` (default 1), divided by
    the number of pairs."""
    c = logits.float()
    k = torch.arange(c.shape[1], device=c.device)
    y = target.long().to(c.device)[:, None]
    conditioned = (y >= k).to(c.dtype)
    per = F.binary_cross_entropy_with_logits(c, (y > k).to(c.dtype), reduction="none")
    w = conditioned if weight is None else conditioned * weight.to(c)[:, None]
    return (per * w).sum() / conditioned.sum().clamp(min=1)

