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


DENOMINATORS = ("all", "one_positive", "only_negatives")


def supcon_per_anchor_reference(z, labels, offset, num_anchors, *, temperature=0.07, variant="out",
                                denominator="all", positives_cap=-1, n_views=1, cap_rank=None):
    """Per-anchor terms of the anchor block ``z[offset : offset + M]`` against all of ``z``, materialized.

    z: [N, dim] view-major (row v * bsz + b is view v of sample b, bsz = N / n_views); labels: [N]
    integer. Returns (L [M], npos [M]); L_i = 0 where anchor i has no positive. The [M, N] block is what
    one rank of a multi-GPU job materializes; the fused op computes the same.

    The options of the official implementation (google-research supcon/losses.py), same semantics:
    ``denominator``: which columns enter anchor i's denominator besides its negatives (other classes):
    'all' its positives too (every j != i when nothing is capped); 'one_positive' for each positive
    p only exp(s_ip) itself (a denominator per (i, p)); 'only_negatives' none. ``positives_cap`` >= 0
    (a multiple of n_views): besides the other views of i's own sample, only the first
    ``positives_cap // n_views`` other samples of i's class in contrast order are positives, with all
    their views; the same-class samples past the cap are neither positives nor negatives.
    ``cap_rank``: [N] each row's sample rank within its class in contrast order (:func:`cap_ranks`);
    None: the view-major batch order above. A contrast set with rows that are no anchor's batch (a
    queue) passes its own.
    """
    check_options(denominator, positives_cap, n_views)
    n = z.shape[0]
    rows = torch.arange(offset, offset + num_anchors, device=z.device)
    cols = torch.arange(n, device=z.device)
    logits = z[offset:offset + num_anchors] @ z.T / temperature                  # [M, N]
    is_self = rows[:, None] == cols[None, :]
    same = labels[rows][:, None] == labels[None, :]
    negatives = ~same
    pos = same & ~is_self
    if positives_cap >= 0:
        if cap_rank is None:
            bsz = n // n_views
            cap_rank = cap_ranks(labels, torch.arange(n, device=z.device) % bsz)
        pos &= within_cap(cap_rank[rows][:, None], cap_rank[None, :], positives_cap // n_views)
    return _per_anchor_terms(logits, negatives, pos, variant, denominator)


def _per_anchor_terms(logits, negatives, pos, variant, denominator):
    """L [M] and npos [M] from logits [M, N] and the negative / positive masks [M, N] (neither: left out)."""
    npos = pos.sum(1)
    valid = npos > 0
    safe = torch.where(valid, npos, torch.ones_like(npos)).to(logits.dtype)
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    neg_lse = torch.logsumexp(torch.where(negatives, logits, neg_inf), dim=1)   # [M]; -inf: no negatives
    if denominator == "all":
        log_den = torch.logsumexp(torch.where(negatives | pos, logits, neg_inf), dim=1)[:, None].expand_as(logits)
    elif denominator == "one_positive":
        log_den = torch.logaddexp(logits, neg_lse[:, None])                       # per (i, p)
    else:
        log_den = neg_lse[:, None].expand_as(logits)
    log_prob = logits - log_den                                                    # [M, N], used on positives
    if variant == "out":
        pos_term = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / safe
        per_anchor = -pos_term
    else:
        kept = torch.where(pos | ~valid[:, None], log_prob, neg_inf)               # no positive: stays finite
        per_anchor = -(torch.logsumexp(kept, dim=1) - torch.log(safe))
    return torch.where(valid, per_anchor, torch.zeros_like(per_anchor)), npos


def check_options(denominator, positives_cap, n_views):
    """The ValueErrors of the official options, naming the argument."""
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator: expected one of {DENOMINATORS}, got {denominator!r}")
    if not isinstance(positives_cap, int) or positives_cap < -1:
        raise ValueError(f"positives_cap: must be -1 (no cap) or an int >= 0, got {positives_cap!r}")
    if positives_cap >= 0 and positives_cap % n_views:
        raise ValueError(f"positives_cap: must be -1 (no cap) or a multiple of n_views = {n_views} (a sample's "
                         f"views are kept together), got {positives_cap}")


def cap_ranks(labels, order):
    """Each row's sample rank within its class: how many other samples of its class come first.

    labels: [N] integer; order: [N] int64, the row's sample position in contrast order (the rows of one
    sample share it). Returns [N] int64. O(N log N), no N x N mask: the fused op takes it as is.
    """
    n = labels.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    by_order = torch.argsort(order, stable=True)
    perm = by_order[torch.argsort(labels[by_order], stable=True)]                # by (label, order)
    y, o = labels[perm], order[perm]
    new_class = torch.ones(n, dtype=torch.bool, device=labels.device)
    new_class[1:] = y[1:] != y[:-1]
    new_sample = new_class.clone()
    new_sample[1:] |= o[1:] != o[:-1]
    dense = torch.cumsum(new_sample.long(), 0) - 1                               # sample index in sorted order
    class_first = torch.cummax(torch.where(new_class, dense, torch.zeros_like(dense)), 0).values
    rank = torch.empty_like(dense)
    rank[perm] = dense - class_first
    return rank


def within_cap(anchor_rank, col_rank, k):
    """Same-class column kept as a positive of an anchor under a cap of ``k`` samples (broadcasting):
    its own sample (equal rank), or one of the first ``k`` other samples of the class; the anchor's own
    sample takes no slot when it comes first. The fused op computes the same test."""
    return (col_rank == anchor_rank) | (col_rank < k + (col_rank > anchor_rank).long())
