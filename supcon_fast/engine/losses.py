"""The training objectives, behind one small indirection so the engine does not care where SupCon lives.

``supcon_fast.supcon_loss`` (fused op, global-batch ``gather``) is used when the package exports it;
before that lands, the materialized reference stands in (single process only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _supcon_impl():
    try:
        from supcon_fast import supcon_loss  # the public API (DESIGN.md)
        return supcon_loss, True
    except ImportError:
        from supcon_fast.reference import supcon_loss_reference
        return supcon_loss_reference, False


def make_criterion(loss: str, *, temperature: float = 0.1, base_temperature: float | None = None,
                   variant: str = "out", impl: str = "auto", gather: bool = False):
    """Return ``criterion(out, labels) -> scalar loss``.

    supcon / simclr: ``out`` is L2-normalized embeddings [bsz, n_views, dim]; simclr ignores labels.
    ce: ``out`` is logits [bsz * n_views, classes] (every view is a training sample), labels [bsz].
    ``gather=True`` contrasts against the global batch under torch.distributed (world size > 1).
    """
    if loss == "ce":
        def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            n_views = logits.shape[0] // labels.shape[0]
            return F.cross_entropy(logits.float(), labels.repeat(n_views))
        return ce
    if loss not in ("supcon", "simclr"):
        raise ValueError(f"loss: unknown {loss!r}; choose supcon, simclr or ce")
    fn, is_public = _supcon_impl()
    kwargs = dict(temperature=temperature, base_temperature=base_temperature, variant=variant,
                  contrast_mode="all")
    if is_public:
        kwargs.update(impl=impl, gather=gather)
    elif gather and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise RuntimeError("gather: global-batch contrast needs supcon_fast.supcon_loss (not built yet)")

    def supcon(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return fn(features, None if loss == "simclr" else labels, **kwargs)
    return supcon
