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
from .reference import cap_ranks, check_options, flatten_views, supcon_loss_reference, supcon_per_anchor_reference

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


def _check_contrast_options(features, mask, denominator, positives_cap, queue):
    """The official options and the queue: errors name the argument."""
    check_options(denominator, positives_cap, features.shape[1])
    if queue is not None:
        if not callable(getattr(queue, "contrast_rows", None)):
            raise TypeError(f"queue must be a supcon_fast.ContrastQueue, got {type(queue).__name__}")
        dim = features[0, 0].numel()
        if queue.dim != dim:
            raise ValueError(f"queue: rows of dim {queue.dim}, but features have dim {dim}")
        if torch.device(queue.device) != features.device:
            raise ValueError(f"queue is on device {queue.device} but features on device {features.device}")
    if mask is not None and (queue is not None or denominator != "all" or positives_cap >= 0):
        raise ValueError("mask takes the default sets only: give labels with queue, denominator or positives_cap")


def _use_fused(device, mask, impl) -> bool:
    if impl == "reference":
        return False
    fused_ok = ops.has_kernel(device)  # every fused kernel takes the options and a queue
    if impl == "fused":
        if mask is not None:
            raise ValueError("impl='fused' does not take a custom mask; use impl='reference' or 'auto' for mask")
        if not fused_ok:
            why = f" (extension not built: {ops.build_error()})" if not ops.available() else ""
            raise ValueError(f"impl='fused': no fused kernel for device {device}{why}")
        return True
    return fused_ok and mask is None


def loss_path(device, impl="auto") -> str:
    """'fused' or 'reference': the path supcon_loss takes on ``device`` without a custom mask."""
    return "fused" if _use_fused(torch.device(device), None, impl) else "reference"


def supcon_loss(features, labels=None, mask=None, *, temperature=0.07, base_temperature=None,
                contrast_mode="all", variant="out", impl="auto", gather=False, denominator="all",
                positives_cap=-1, queue=None):
    """Supervised contrastive loss (Khosla et al., 2020); SimCLR's NT-Xent when labels and mask are None.

    features: [bsz, n_views, dim, ...] (trailing dims flattened), L2-normalized by the caller.
    labels: [bsz] integer, or None. mask: [bsz, bsz] positive weights (reference path), or None.
    temperature: T in s_ij = z_i . z_j / T. base_temperature: scales the loss by T / T_base (None: = T).
    contrast_mode: 'all' (every view is an anchor) or 'one' (the first view of each sample).
    variant: 'out' (mean log-prob of positives; the paper's L_out) or 'in' (log of mean prob; L_in).
    impl: 'auto' (fused when a kernel exists for the device and no mask), 'fused', or 'reference'.
    gather: with torch.distributed initialized and world size > 1, contrast against the global batch
        (every rank's views); the loss then equals the single-process loss of the global batch.
    denominator: 'all' (every other view), 'one_positive' or 'only_negatives': the official
        implementation's modes (supcon_fast/reference.py). positives_cap: -1, or at most that many
        positives besides the anchor's own views (a multiple of n_views), the first same-class samples
        in contrast order. queue: a ContrastQueue whose rows join the contrast set (after the batch,
        newest first), contrast only: no gradient, no gradient work.
    Returns a scalar: fp32 (fp64 for fp64 features) on the fused path.
    """
    _check_args(features, labels, mask, temperature, base_temperature, contrast_mode, variant, impl)
    _check_contrast_options(features, mask, denominator, positives_cap, queue)
    base_temperature = temperature if base_temperature is None else base_temperature
    if labels is not None:
        labels = labels.reshape(-1)
    world = distributed.world_size() if gather else 1
    if world > 1 and mask is not None:
        raise ValueError("gather=True does not take a custom mask: give labels")
    default_sets = denominator == "all" and positives_cap < 0
    fused = _use_fused(features.device, mask, impl)
    if world == 1 and not fused and default_sets and queue is None:
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
    contrast = ContrastSet.build(z, y, queue, labelled=labels is not None, bsz=bsz, n_views=n_views,
                                 positives_cap=positives_cap)
    per_anchor, npos = anchor_block_terms(z, contrast.labels, offset, num_anchors, temperature=temperature,
                                          variant=variant, fused=fused, contrast=contrast, denominator=denominator)
    return masked_mean(per_anchor, npos > 0, world) * (temperature / base_temperature)


class ContrastSet:
    """What joins the batch in the contrast set: the queue's rows and the labels and cap ranks of both.

    labels: [N + K] int64 (the batch's, then the queue's: unlabelled queue rows, and every queue row
    when the batch has no labels, get labels no other row has: negatives to everything). rows: [K, dim]
    in z's dtype or None. cap: samples per anchor besides its own (-1: none); cap_rank [N + K] or None.
    """

    def __init__(self, labels, rows=None, cap=-1, cap_rank=None):
        self.labels, self.rows, self.cap, self.cap_rank = labels, rows, cap, cap_rank

    @classmethod
    def build(cls, z, y, queue, *, labelled, bsz, n_views, positives_cap):
        """z: [N, dim] the (gathered) batch, each rank's bsz samples view-major; y: [N] int64;
        queue: ContrastQueue or None."""
        rows, order = None, None
        if queue is not None and len(queue) > 0:
            q_rows, q_labels, q_labelled, q_age = queue.contrast_rows()
            rows = q_rows.detach().to(z.dtype)
            fresh = torch.minimum(y.min(), q_labels.min()) - 1 - torch.arange(len(q_labels), device=y.device)
            keep = q_labelled.to(y.device) if labelled else torch.zeros_like(q_labelled, device=y.device)
            y = torch.cat([y, torch.where(keep, q_labels.to(y.device), fresh)])
            order = q_age.to(y.device)
        if positives_cap < 0:
            return cls(y, rows)
        # contrast order: the batch's samples (rank-major after a gather: row r * V * bsz + v * bsz + b is
        # global sample r * bsz + b, for every view v), then the queue's from newest to oldest
        row = torch.arange(z.shape[0], device=y.device)
        sample = (row // (n_views * bsz)) * bsz + row % bsz
        if order is not None:
            sample = torch.cat([sample, sample.max() + 1 + order])
        return cls(y, rows, positives_cap // n_views, cap_ranks(y, sample))


def anchor_block_terms(z, y, offset, num_anchors, *, temperature, variant, fused=True, contrast=None,
                       denominator="all"):
    """Per-anchor SupCon terms of anchors ``z[offset : offset + M]`` against the contrast set ``z``
    (then ``contrast.rows``, a queue's, when given).

    z: [N, dim]; y: [N + K] int64. Returns (L [M] fp32 (fp64 for fp64 z), npos [M] int64). The fused op
    never materializes [M, N + K]; ``fused=False`` does (supcon_fast.reference). Used by the global-batch
    path and by the step profiler's stand-in contrast set.
    """
    rows, cap, cap_rank = (contrast.rows, contrast.cap, contrast.cap_rank) if contrast else (None, -1, None)
    if fused:
        per_anchor, _, _, npos, _ = ops.supcon_fwd(z.contiguous(), y.contiguous(), offset, num_anchors,
                                                   float(temperature), variant == "in", queue=rows,
                                                   denominator=denominator, cap_rank=cap_rank, cap=cap)
        return per_anchor, npos
    z_all = z if rows is None else torch.cat([z, rows])
    return supcon_per_anchor_reference(z_all, y, offset, num_anchors, temperature=temperature, variant=variant,
                                       denominator=denominator, positives_cap=cap, cap_rank=cap_rank)


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
                 impl="auto", gather=False, denominator="all", positives_cap=-1):
        super().__init__()
        _check_args(torch.empty(1, 1, 1), None, None, temperature, base_temperature, contrast_mode, variant, impl)
        check_options(denominator, positives_cap, 1)
        self.temperature, self.contrast_mode, self.base_temperature = temperature, contrast_mode, base_temperature
        self.variant, self.impl, self.gather = variant, impl, gather
        self.denominator, self.positives_cap = denominator, positives_cap

    def forward(self, features, labels=None, mask=None, queue=None):
        return supcon_loss(features, labels, mask, temperature=self.temperature,
                           base_temperature=self.base_temperature, contrast_mode=self.contrast_mode,
                           variant=self.variant, impl=self.impl, gather=self.gather, denominator=self.denominator,
                           positives_cap=self.positives_cap, queue=queue)

    def extra_repr(self):
        return (f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"contrast_mode={self.contrast_mode!r}, variant={self.variant!r}, impl={self.impl!r}, "
                f"gather={self.gather}, denominator={self.denominator!r}, positives_cap={self.positives_cap}")
