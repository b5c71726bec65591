"""The training objectives: SupCon / SimCLR through ``supcon_fast.supcon_loss`` (fused op, global-batch
``gather``), and cross-entropy over every view."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..loss import supcon_loss


def make_criterion(loss: str, *, temperature: float = 0.1, base_temperature: float | None = None,
                   variant: str = "out", impl: str = "auto", gather: bool = False, queue=None,
                   denominator: str = "all", positives_cap: int = -1):
    """Return ``criterion(out, labels) -> scalar loss``.

    supcon / simclr: ``out`` is L2-normalized embeddings [bsz, n_views, dim]; simclr ignores labels.
    ce: ``out`` is logits [bsz * n_views, classes] (every view is a training sample), labels [bsz].
    The loss runs in the dtype of ``out``: the training step (engine/step.py) chooses it by the one
    precision policy (engine/precision.py), fp32 for ce.
    ``gather=True`` contrasts against the global batch under torch.distributed (world size > 1).
    ``denominator`` / ``positives_cap``: the official implementation's options (supcon_loss).
    ``queue``: a ``ContrastQueue`` whose rows the loss also contrasts against (supcon / simclr only);
    the training step pushes into it (engine/momentum.py).
    """
    if loss == "ce" and queue is not None:
        raise ValueError("queue: applies to the contrastive losses (supcon, simclr), not --loss ce")
    if loss == "ce":
        def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            n_views = logits.shape[0] // labels.shape[0]
            return F.cross_entropy(logits, labels.repeat(n_views))
        return ce
    if loss not in ("supcon", "simclr"):
        raise ValueError(f"loss: unknown {loss!r}; choose supcon, simclr or ce")
    kwargs = dict(temperature=temperature, base_temperature=base_temperature, variant=variant,
                  contrast_mode="all", impl=impl, gather=gather, queue=queue, denominator=denominator,
                  positives_cap=positives_cap)

    def supcon(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(features, None if loss == "simclr" else labels, **kwargs)
    return supcon
