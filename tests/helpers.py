"""Shared test helpers (imported by the test modules): devices, sample inputs, error measures."""
from __future__ import annotations

import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Parity tests run on every device with a fused kernel: the CPU; CUDA on a GPU (skipped without one);
# and "emu", the CUDA kernels under the CPU emulation (CPU tensors; see the fixture below).
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA), pytest.param("cpu", id="emu", marks=pytest.mark.emulated)]


def label_kind(kind: str, bsz: int, generator: torch.Generator) -> torch.Tensor | None:
    """Labels [bsz] of a kind: none (SimCLR), few (a handful of classes), one class, distinct (all
    different), sparse (arbitrary int64 values, some singletons)."""
    if kind == "none":
        return None
    if kind == "few":
        return torch.randint(0, 5, (bsz,), generator=generator)
    if kind == "one":
        return torch.full((bsz,), 7, dtype=torch.long)
    if kind == "distinct":
        return torch.randperm(bsz, generator=generator)
    if kind == "sparse":  # huge and negative values, and singleton classes
        base = torch.randint(0, max(bsz // 2, 1), (bsz,), generator=generator)
        return base * 1_000_003 - 2**40
    raise ValueError(kind)


def sample_inputs(bsz: int, n_views: int, dim: int, *, labels: str = "few", dtype=torch.float64,
                  device="cpu", norm: float | None = 1.0, seed: int = 0, requires_grad: bool = True):
    """features [bsz, n_views, dim] (rows of L2 norm `norm`; None: raw normal draws) and labels [bsz]."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(bsz, n_views, dim, generator=g, dtype=torch.float64)
    if norm is not None:
        f = torch.nn.functional.normalize(f, dim=-1) * norm
    f = f.to(dtype=dtype, device=device).requires_grad_(requires_grad)
    y = label_kind(labels, bsz, g)
    return f, (y.to(device) if y is not None else None)


def loss_and_grad(fn, features, labels, **kw):
    """(loss, d loss / d features) of fn(features, labels, **kw) on a fresh leaf copy."""
    f = features.detach().clone().requires_grad_(True)
    loss = fn(f, labels, **kw)
    (grad,) = torch.autograd.grad(loss, f)
    return loss.detach(), grad


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in fp64 (0 when both are all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff
