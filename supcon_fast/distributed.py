"""Rows across ranks: the one place the package gathers tensors and asks for the world size.

Global-batch contrast: each rank holds its local rows ``x [n, ...]``; ``gather_rows`` returns
``[world * n, ...]`` in rank order, and its backward sums every rank's gradient of the gathered tensor
and hands each rank its own slice (a reduce-scatter; on gloo, which lacks one, an all-reduce then a
slice). ``gather_ragged_rows`` concatenates shards of different lengths (features of an eval split).
Works with NCCL and gloo; without an initialized process group every function is the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _row_counts(x: torch.Tensor) -> list[int]:
    """Every rank's ``x.shape[0]``, in rank order."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def _check_same_rows(x: torch.Tensor) -> None:
    sizes = _row_counts(x)
    if len(set(sizes)) != 1:
        raise ValueError(f"gather: every rank must hold the same number of rows (the same local batch); "
                         f"got {sizes} across ranks")


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    if dist.get_backend() == "nccl":
        out = x.new_empty((world_size() * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x)
        return out
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.n = x.shape[0]
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((ctx.n, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[rank() * ctx.n:(rank() + 1) * ctx.n]


def gather_rows(x: torch.Tensor, check: bool = True) -> torch.Tensor:
    """[n, ...] on each rank -> [world * n, ...], rank-major; differentiable when x requires grad."""
    if world_size() == 1:
        return x
    if check:
        _check_same_rows(x)
    if x.requires_grad:
        return _GatherRows.apply(x)
    return _all_gather(x)


def gather_ragged_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order, when ranks hold different counts:
    [n_r, ...] on rank r -> [sum n_r, ...] on every rank (no autograd)."""
    if world_size() == 1:
        return x
    sizes = _row_counts(x)
    m = max(sizes)
    pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
    parts = [x.new_empty((m, *x.shape[1:])) for _ in sizes]
    dist.all_gather(parts, torch.cat([x, pad]))
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a copy; no autograd)."""
    t = t.detach().clone()
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
