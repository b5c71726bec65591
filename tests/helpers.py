"""Shared test helpers (imported by the test modules): devices, sample inputs, error measures."""
from __future__ import annotations

import pytest
import torch

from supcon_fast.testing import cuda_emulation

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


# (schedule, seed, poison) of the three emulated runs of every op call (Backend)
EMU_RUNS = [("ascending", 0, 1), ("descending", 0, 2), ("shuffled", 7, 1)]


def assert_bitwise_equal(a, b, what):
    if isinstance(a, (tuple, list)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{what}[{i}]")
        return
    assert a.dtype == b.dtype and a.shape == b.shape, what
    int_view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    diff = (a.contiguous().view(int_view) != b.contiguous().view(int_view))
    assert not diff.any(), f"{what}: {int(diff.sum())} elements differ between thread schedules / poison patterns"


class Backend:
    """Where the op runs: ``device`` for the tensors, and ``run(fn)`` to call the op.

    cuda: fn() on the GPU. emu: fn() on CPU tensors inside cuda_emulation(), once per EMU_RUNS entry;
    the results must agree bitwise, the first is returned."""

    def __init__(self, name, **emulation):
        self.name = name
        self.device = "cuda" if name == "cuda" else "cpu"
        self.emulated = name == "emu"
        self.emulation = emulation  # more cuda_emulation() arguments (arch, sm_count)
        self.launches = []          # the emulated launches of the last run()

    def run(self, fn):
        if not self.emulated:
            return fn()
        results = []
        for schedule, seed, poison in EMU_RUNS:
            with cuda_emulation(schedule, seed, poison=poison, **self.emulation) as emu:
                results.append(fn())
            self.launches = emu.launches
        for other, (schedule, _, poison) in zip(results[1:], EMU_RUNS[1:]):
            assert_bitwise_equal(results[0], other, f"{schedule} schedule, poison {poison}")
        return results[0]

    def size(self, gpu, emulated):
        """A problem size: the GPU's, or the emulation's (same code paths, affordable on a CPU)."""
        return emulated if self.emulated else gpu
