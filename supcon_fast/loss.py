"""Public SupCon loss: a drop-in for the popular reference ``SupConLoss``, served by the fused op.

``supcon_loss`` checks its arguments, lays out the contrast set (view-major), picks the path
(fused kernel or the materialized reference), and reduces the per-anchor terms to the loss:

    loss = (T / T_base) * mean of L_i over anchors with a positive   (exactly 0 if there are none)

The contract is in docs/design.md and, as code, in ``supcon_fast/reference.py``.
"""
from __future__ import annotations

import torch
from torch import nn

from . import distributed, ops
from .reference import flatten_views, supcon_loss_reference, supcon_per_anchor_reference

MODES = ("all", "one")
VARIANTS = ("out", "in")
IMPLS = ("auto", "fused", "reference")


def _check_args(features, labels, mask, temperature, base_temperature, contrast_mode, variant, impl):
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() < 3:
        raise ValueError(f"features must be [bsz, n_views, dim, ...] (at least 3 dims), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    if contrast_mode not in MODES:
        raise ValueError(f"contrast_mode must be one of {MODES}, got {contrast_mode!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if base_temperature is not None and not base_temperature > 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
    bsz = features.shape[0]
    if labels is not None and mask is not None:
        raise ValueError("labels and mask are mutually exclusive: give one or neither")
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.numel() != bsz or labels.dim() > 1 and labels.shape != (bsz, 1):
            raise ValueError(f"labels must be [bsz] = [{bsz}] to match features {tuple(features.shape)}, "
                             f"got shape {tuple(labels.shape)}")
        if labels.device != features.device:
            raise ValueError(f"labels are on device {labels.device} but features on device {features.device}: "
                             "move them to the same device")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.shape != (bsz, bsz):
            raise ValueError(f"mask must be [bsz, bsz] = [{bsz}, {bsz}], got shape {tuple(mask.shape)}")
        if mask.device != features.device:
            raise ValueError(f"mask is on device {mask.device} but features on device {features.device}")


def _use_fused(features, mask, impl) -> bool:
    if impl == "reference":
        return False
    fused_ok = ops.has_kernel(features.device)
    if impl == "fused":
        if mask is not None:
            raise ValueError("impl='fused' does not take a custom mask; use impl='reference' or 'auto' for mask")
        if not fused_ok:
            why = f" (extension not built: {ops.build_error()})" if not ops.available() else ""
            raise ValueError(f"impl='fused': no fused kernel for device {features.device}{why}")
        return True
    return fused_ok and mask is None


def supcon_loss(features, labels=None, mask=None, *, temperature=0.07, base_temperature=None,
                contrast_mode="all", variant="out", impl="auto", gather=False):
    """Supervised contrastive loss (Khosla et al., 2020); SimCLR's NT-Xent when labels and mask are None.

    features: [bsz, n_views, dim, ...] (trailing dims flattened), L2-normalized by the caller.
    labels: [bsz] integer, or None. mask: [bsz, bsz] positive weights (reference path), or None.
    temperature: T in s_ij = z_i . z_j / T. base_temperature: scales the loss by T / T_base (None: = T).
    contrast_mode: 'all' (every view is an anchor) or 'one' (the first view of each sample).
    variant: 'out' (mean log-prob of positives; the paper's L_out) or 'in' (log of mean prob; L_in).
    impl: 'auto' (fused when a kernel exists for the device and no mask), 'fused', or 'reference'.
    gather: with torch.distributed initialized and world size > 1, contrast against the global batch
        (every rank's views); the loss then equals the single-process loss of the global batch.
    Returns a scalar: fp32 (fp64 for fp64 features) on the fused path.
    """
    _check_args(features, labels, mask, temperature, base_temperature, contrast_mode, variant, impl)
    base_temperature = temperature if base_temperature is None else base_temperature
    if labels is not None:
        labels = labels.reshape(-1)
    world = distributed.world_size() if gather else 1
    if world > 1 and mask is not None:
        raise ValueError("gather=True does not take a custom mask: give labels")
    fused = _use_fused(features, mask, impl)
    if world == 1 and not fused:
        return supcon_loss_reference(features, labels, mask, temperature=temperature,
                                     base_temperature=base_temperature, contrast_mode=contrast_mode, variant=variant)

    bsz, n_views = features.shape[0], features.shape[1]
    z = flatten_views(features)                                           # [n_views * bsz, dim]
    if fused and torch.is_autocast_enabled(z.device.type) and z.dtype != torch.float64:
        z = z.to(torch.get_autocast_dtype(z.device.type))                 # tensor-core inputs
    y = labels if labels is not None else torch.arange(bsz, device=z.device)
    y = y.to(torch.long).repeat(n_views)                                  # [n_views * bsz]
    num_anchors = z.shape[0] if contrast_mode == "all" else bsz
    offset = 0
    if world > 1:
        if labels is None:  # SimCLR: sample identity must be global
            y = y + distributed.rank() * bsz
        offset = distributed.rank() * z.shape[0]
        z, y = distributed.gather_rows(z), distributed.gather_rows(y, check=False)  # [world * n_views * bsz, dim]
    per_anchor, npos = anchor_block_terms(z, y, offset, num_anchors, temperature=temperature, variant=variant,
                                          fused=fused)
    return masked_mean(per_anchor, npos > 0, world) * (temperature / base_temperature)


def anchor_block_terms(z, y, offset, num_anchors, *, temperature, variant, fused=True):
    """Per-anchor SupCon terms of anchors ``z[offset : offset + M]`` against the contrast set ``z``.

    z: [N, dim]; y: [N] int64. Returns (L [M] fp32 (fp64 for fp64 z), npos [M] int64). The fused op
    never materializes [M, N]; ``fused=False`` does (supcon_fast.reference). Used by the global-batch
    path and by the step profiler's stand-in contrast set.
    """
    if fused:
        per_anchor, _, _, npos = ops.supcon_fwd(z.contiguous(), y.contiguous(), offset, num_anchors,
                                                float(temperature), variant == "in")
        return per_anchor, npos
    return supcon_per_anchor_reference(z, y, offset, num_anchors, temperature=temperature, variant=variant)


def masked_mean(per_anchor, valid, world=1):
    """Mean of per_anchor [M] over valid anchors; 0 with zero gradients if none (no data-dependent branch,
    so torch.compile(fullgraph=True) traces it). With world > 1 the mean runs over the global batch."""
    kept = torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum()
    if world == 1:
        return kept / valid.sum().clamp(min=1)
    count = distributed.all_reduce_sum(valid.sum()).clamp(min=1)
    local = kept * world / count  # DDP averages gradients over ranks: x world makes them the global batch's
    total = distributed.all_reduce_sum(kept) / count
    return total + (local - local.detach())  # value: the global loss on every rank; gradient: local's


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss`, argument-compatible with the popular reference ``SupConLoss``.

    forward(features [bsz, n_views, dim], labels [bsz] | None, mask [bsz, bsz] | None) -> scalar.
    """

    def __init__(self, temperature=0.07, contrast_mode="all", base_temperature=0.07, variant="out",
                 impl="auto", gather=False):
        super().__init__()
        _check_args(torch.empty(1, 1, 1), None, None, temperature, base_temperature, contrast_mode, variant, impl)
        self.temperature, self.contrast_mode, self.base_temperature = temperature, contrast_mode, base_temperature
        self.variant, self.impl, self.gather = variant, impl, gather

    def forward(self, features, labels=None, mask=None):
        return supcon_loss(features, labels, mask, temperature=self.temperature,
                           base_temperature=self.base_temperature, contrast_mode=self.contrast_mode,
                           variant=self.variant, impl=self.impl, gather=self.gather)

    def extra_repr(self):
        return (f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"contrast_mode={self.contrast_mode!r}, variant={self.variant!r}, impl={self.impl!r}, gather={self.gather}")
