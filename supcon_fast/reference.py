"""The SupCon loss, materialized: the specification in code.

Everything fast in this package is tested against this file. It builds the full N x N logit matrix,
so it is O(N^2) in memory; use it for checking, small batches, and a custom ``mask``.

Contract (docs/design.md): ``z = features.transpose(0, 1).reshape(bsz * n_views, dim)`` (view-major);
anchors are all rows of ``z`` (``contrast_mode='all'``) or the first ``bsz`` rows (``'one'``);
``s_ij = z_i . z_j / T``; self-contrast ``j == i`` is excluded everywhere;

    out: L_i = LSE_i - (1/|P(i)|) sum_{p in P(i)} s_ip
    in:  L_i = LSE_i - log sum_{p in P(i)} exp(s_ip) + log |P(i)|
    loss = (T / T_base) * mean of L_i over anchors with |P(i)| > 0   (exactly 0 if there are none)

A float ``mask`` weights the positives (the popular reference's semantics): ``out`` uses
``sum_p w_ip s_ip / sum_p w_ip``, ``in`` uses ``log sum_p w_ip exp(s_ip) - log sum_p w_ip``.
"""
from __future__ import annotations

import torch


def flatten_views(features: torch.Tensor) -> torch.Tensor:
    """[bsz, n_views, ...] -> z [n_views * bsz, dim], view-major (row v * bsz + b is view v of sample b)."""
    bsz, n_views = features.shape[0], features.shape[1]
    return features.reshape(bsz, n_views, -1).transpose(0, 1).reshape(bsz * n_views, -1)


def supcon_loss_reference(features, labels=None, mask=None, *, temperature=0.07, base_temperature=None,
                          contrast_mode="all", variant="out"):
    """Materialized SupCon loss.

    features: [bsz, n_views, ...]; labels: [bsz] integer or None; mask: [bsz, bsz] or None.
    Returns a scalar in features' dtype: half inputs are computed in half, which is how the tests
    measure "the reference's own error in that dtype".
    """
    base_temperature = temperature if base_temperature is None else base_temperature
    bsz, n_views = features.shape[0], features.shape[1]
    z = flatten_views(features)
    if mask is None:
        y = labels if labels is not None else torch.arange(bsz, device=z.device)
        mask = y.view(-1, 1) == y.view(1, -1)
    weights = mask.to(z.dtype).repeat(n_views, n_views)               # [N, N]
    n_anchors = z.shape[0] if contrast_mode == "all" else bsz
    anchors = z[:n_anchors]
    logits = anchors @ z.T / temperature                               # [M, N]
    not_self = ~torch.eye(n_anchors, z.shape[0], dtype=torch.bool, device=z.device)
    weights = weights[:n_anchors] * not_self
    lse = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1)
    npos = weights.sum(1)
    valid = npos > 0
    safe_npos = torch.where(valid, npos, torch.ones_like(npos))
    if variant == "out":
        pos_term = (weights * logits).sum(1) / safe_npos
    else:
        pos_logits = logits + torch.log(weights)                      # log 0 = -inf drops non-positives
        pos_logits = torch.where(valid[:, None], pos_logits, 0.0)     # no positive: keep logsumexp finite
        pos_term = torch.logsumexp(pos_logits, dim=1) - torch.log(safe_npos)
    per_anchor = torch.where(valid, lse - pos_term, torch.zeros_like(lse))
    # masked mean: anchors without a positive are left out; none at all gives exactly 0 with zero grads
    return (temperature / base_temperature) * per_anchor.sum() / valid.sum().clamp(min=1)


def supcon_per_anchor_reference(z, labels, offset, num_anchors, *, temperature=0.07, variant="out"):
    """Per-anchor terms of the anchor block ``z[offset : offset + M]`` against all of ``z``, materialized.

    z: [N, dim]; labels: [N] integer. Returns (L [M], npos [M]); L_i = 0 where anchor i has no positive.
    The [M, N] block is what one rank of a multi-GPU job materializes; the fused op computes the same.
    """
    n = z.shape[0]
    rows = torch.arange(offset, offset + num_anchors, device=z.device)
    logits = z[offset:offset + num_anchors] @ z.T / temperature                  # [M, N]
    is_self = rows[:, None] == torch.arange(n, device=z.device)[None, :]
    pos = (labels[rows][:, None] == labels[None, :]) & ~is_self
    lse = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1)
    npos = pos.sum(1)
    valid = npos > 0
    safe = torch.where(valid, npos, torch.ones_like(npos)).to(logits.dtype)
    if variant == "out":
        pos_term = (logits * pos).sum(1) / safe
    else:
        pos_logits = torch.where(pos | ~valid[:, None], logits, float("-inf"))  # no positive: stays finite
        pos_term = torch.logsumexp(pos_logits, dim=1) - torch.log(safe)
    return torch.where(valid, lse - pos_term, torch.zeros_like(lse)), npos
