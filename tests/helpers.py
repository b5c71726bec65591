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


# The official implementation's published test values (google-research supcon/losses_test.py,
# testLossForSummationLocationsAndDenominatorModes): per sample, the mean over its two views, T = 1.
OFFICIAL_FEATURES = [[[0.01, 0.02, 0.14], [0.38, 0.61, 0.50]],
                     [[0.86, 0.97, 0.33], [0.26, 0.68, 0.45]],
                     [[0.32, 0.64, 0.28], [0.45, 0.74, 0.73]]]
OFFICIAL_CASES = [
    ("out", "all", -1, [1.6755852, 1.7973773, 1.58471], (0, 0, 1)),
    ("out", "one_positive", -1, [1.1782627, 1.3435497, 1.58471], (0, 0, 1)),
    ("out", "only_negatives", -1, [0.79652834, 1.0154991, 1.3529458], (0, 0, 1)),
    ("out", "all", 4, [1.6755852, 1.7973773, 1.58471], (0, 0, 1)),
    ("out", "all", 2, [1.1385298, 1.1824025, 1.1557417], (0, 0, 0)),
    ("out", "all", 0, [1.3769293, 1.0785717, 1.58471], (0, 0, 1)),
    ("in", "all", -1, [1.6356678, 1.7135872, 1.58471], (0, 0, 1)),
    ("in", "one_positive", -1, [1.1571673, 1.2941568, 1.58471], (0, 0, 1)),
    ("in", "only_negatives", -1, [0.756611, 0.93170905, 1.3529458], (0, 0, 1)),
    ("in", "all", 4, [1.6356678, 1.7135872, 1.58471], (0, 0, 1)),
    ("in", "all", 2, [1.0986123, 1.0986123, 1.0986123], (0, 0, 0)),
    ("in", "all", 0, [1.3769293, 1.0785717, 1.58471], (0, 0, 1)),
]


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
