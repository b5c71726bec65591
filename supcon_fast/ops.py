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


def supcon_fwd(z, labels, offset: int, num_anchors: int, temperature: float, variant_in: bool):
    """Per-anchor SupCon terms of anchors ``z[offset : offset + num_anchors]`` against all of ``z``.

    z: [N, D] float; labels: [N] int64 (same device).
    Returns (loss [M], lse [M], pos_term [M], npos [M] int64); loss/lse/pos_term fp64 for fp64 z, else fp32.
    """
    return torch.ops.supcon_fast.supcon_fwd.default(z, labels, offset, num_anchors, temperature, variant_in)


if available():
    @torch.library.register_fake("supcon_fast::supcon_fwd")
    def _fwd_fake(z, labels, offset, num_anchors, temperature, variant_in):
        torch._check(z.dim() == 2, lambda: f"supcon_fwd: z must be 2-D [N, D], got {tuple(z.shape)}")
        torch._check(labels.shape[0] == z.shape[0], lambda: "supcon_fwd: labels must be [N]")
        stat = torch.float64 if z.dtype == torch.float64 else torch.float32
        loss = z.new_empty((num_anchors,), dtype=stat)
        return loss, torch.empty_like(loss), torch.empty_like(loss), z.new_empty((num_anchors,), dtype=torch.long)

    @torch.library.register_fake("supcon_fast::supcon_bwd")
    def _bwd_fake(grad_loss, z, labels, lse, pos_term, npos, offset, num_anchors, temperature, variant_in):
        return torch.empty_like(z, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        z, labels, offset, num_anchors, temperature, variant_in = inputs
        _, lse, pos_term, npos = output
        ctx.save_for_backward(z, labels, lse, pos_term, npos)
        ctx.args = (offset, num_anchors, temperature, variant_in)

    def _backward(ctx, grad_loss, _grad_lse, _grad_pos, _grad_npos):
        # Only the per-anchor loss is differentiable; lse/pos_term/npos are saved statistics.
        z, labels, lse, pos_term, npos = ctx.saved_tensors
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.ops.supcon_fast.supcon_bwd.default(grad_loss.contiguous(), z, labels, lse, pos_term,
                                                              npos, *ctx.args)
        return grad_z, None, None, None, None, None

    torch.library.register_autograd("supcon_fast::supcon_fwd", _backward, setup_context=_setup_context)
