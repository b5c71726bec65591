"""Binds the compiled ops (supcon_fast._C) to Python: autograd and fake (meta) kernels.

The C++ library defines ``supcon_fast::supcon_fwd`` and ``supcon_fast::supcon_bwd`` (csrc/ops.cpp);
here the forward gets its backward through ``torch.library.register_autograd`` and both get fake
kernels, so ``torch.compile`` and ``torch.library.opcheck`` work.
"""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
    _IMPORT_ERROR = None
except ImportError as e:  # not built: the reference path still works
    _IMPORT_ERROR = e


def available() -> bool:
    """True when the compiled extension is loaded."""
    return _IMPORT_ERROR is None


def _registered(key: str) -> bool:
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("supcon_fast::supcon_fwd", key)


# Which device types have a fused kernel is fixed once the library is loaded; a plain dict keeps
# the lookup traceable by torch.compile (fullgraph).
_KERNELS = {"cpu": _registered("CPU"), "cuda": _registered("CUDA")}


def has_kernel(device: torch.device | str) -> bool:
    """True when a fused kernel is registered for ``device``'s type (cpu, cuda)."""
    return _KERNELS.get(torch.device(device).type if isinstance(device, str) else device.type, False)


def build_error() -> ImportError | None:
    return _IMPORT_ERROR


def cuda_archs() -> dict[str, list[str]]:
    """What the CUDA kernels were compiled for: {'sass': ['sm_80', ...], 'ptx': ['compute_90', ...]};
    both empty when the extension was built without CUDA."""
    tag = torch.ops.supcon_fast.cuda_archs() if available() else ""
    parts = [p for p in tag.split("_") if p]
    return {"sass": ["sm_" + p[2:].removesuffix("ptx") for p in parts],
            "ptx": ["compute_" + p[2:].removesuffix("ptx") for p in parts if p.endswith("ptx")]}


def supcon_fwd(z, labels, offset: int, num_anchors: int, temperature: float, variant_in: bool, *, queue=None,
               denominator: str = "all", cap_rank=None, cap: int = -1):
    """Per-anchor SupCon terms of anchors ``z[offset : offset + num_anchors]`` against all of ``z``, then
    the ``queue``'s rows (contrast only: no gradient reaches them).

    z: [N, D] float; labels: [N + K] int64 (z's rows, then the queue's); queue: [K, D] z's dtype or None.
    denominator: 'all' | 'one_positive' | 'only_negatives'; cap >= 0: at most ``cap`` other samples of the
    anchor's class are positives, chosen by cap_rank [N + K] int64 (reference.cap_ranks); -1: no cap.
    Returns (loss [M], lse [M], pos_term [M], npos [M] int64, coef [M] for 'one_positive' else [0]);
    the float outputs fp64 for fp64 z, else fp32.
    """
    return torch.ops.supcon_fast.supcon_fwd.default(z, labels, offset, num_anchors, temperature, variant_in,
                                                    queue, denominator, cap_rank, cap)


if available():
    @torch.library.register_fake("supcon_fast::supcon_fwd")
    def _fwd_fake(z, labels, offset, num_anchors, temperature, variant_in, queue=None, denominator="all",
                  cap_rank=None, cap=-1):
        torch._check(z.dim() == 2, lambda: f"supcon_fwd: z must be 2-D [N, D], got {tuple(z.shape)}")
        rows = z.shape[0] + (queue.shape[0] if queue is not None else 0)
        torch._check(labels.shape[0] == rows, lambda: "supcon_fwd: labels must be [N + K]")
        stat = torch.float64 if z.dtype == torch.float64 else torch.float32
        loss = z.new_empty((num_anchors,), dtype=stat)
        coef = z.new_empty((num_anchors if denominator == "one_positive" else 0,), dtype=stat)
        return (loss, torch.empty_like(loss), torch.empty_like(loss), z.new_empty((num_anchors,), dtype=torch.long),
                coef)

    @torch.library.register_fake("supcon_fast::supcon_bwd")
    def _bwd_fake(grad_loss, z, labels, lse, pos_term, npos, offset, num_anchors, temperature, variant_in,
                  queue=None, denominator="all", cap_rank=None, cap=-1, coef=None):
        return torch.empty_like(z, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        z, labels, offset, num_anchors, temperature, variant_in, queue, denominator, cap_rank, cap = inputs
        _, lse, pos_term, npos, coef = output
        ctx.save_for_backward(z, labels, lse, pos_term, npos, coef, queue, cap_rank)
        ctx.args = (offset, num_anchors, temperature, variant_in)
        ctx.options = (denominator, cap)

    def _backward(ctx, grad_loss, _grad_lse, _grad_pos, _grad_npos, _grad_coef):
        # Only the per-anchor loss is differentiable; lse/pos_term/npos/coef are saved statistics, and
        # the queue's rows are contrast only.
        z, labels, lse, pos_term, npos, coef, queue, cap_rank = ctx.saved_tensors
        denominator, cap = ctx.options
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.ops.supcon_fast.supcon_bwd.default(grad_loss.contiguous(), z, labels, lse, pos_term,
                                                              npos, *ctx.args, queue, denominator, cap_rank, cap,
                                                              coef)
        return grad_z, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("supcon_fast::supcon_fwd", _backward, setup_context=_setup_context)
