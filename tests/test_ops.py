"""Fused op (through the public API) against the materialized reference: values and gradients.

Parametrized over device: the CPU op always; the CUDA op on a GPU when one is present, and under the
CUDA emulation (the same kernels on the CPU) everywhere. Sizes are odd on purpose (not a
multiple of any tile) and cover every listed bsz, n_views and dim at least once.
"""
import pytest
import torch

from helpers import DEVICES, loss_and_grad, rel_err, sample_inputs
from supcon_fast import supcon_loss, supcon_loss_reference
from supcon_fast.reference import supcon_per_anchor_reference

# (bsz, n_views, dim): every bsz in {1, 3, 37, 129, 1000}, n_views in {1..4}, dim in {1, 3, 64, 127, 128, 300}
SIZES = [(1, 2, 3), (3, 1, 1), (3, 4, 64), (37, 2, 127), (37, 3, 300), (129, 2, 128), (129, 4, 3), (1000, 2, 64)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def fused(f, y, **kw):
    return supcon_loss(f, y, impl="fused", **kw)


def reference64(f, y, **kw):
    return supcon_loss_reference(f.double(), y, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("labels", ["none", "few", "one", "distinct", "sparse"])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_parity(size, mode, variant, labels, dtype, device):
    bsz, n_views, dim = size
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("fp64 is a CPU accuracy path")
    f, y = sample_inputs(bsz, n_views, dim, labels=labels, dtype=dtype, device=device, seed=bsz + dim)
    kw = dict(temperature=0.1, base_temperature=0.07, contrast_mode=mode, variant=variant)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype and grad.shape == f.shape
    assert rel_err(loss, loss_ref) <= TOL[dtype]
    assert rel_err(grad, grad_ref) <= TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.01, 0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_temperatures(temperature, variant, device):
    f, y = sample_inputs(53, 2, 37, labels="few", dtype=torch.float32, device=device)
    kw = dict(temperature=temperature, variant=variant)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, **kw)
    assert rel_err(loss, loss_ref) <= 1e-5 and rel_err(grad, grad_ref) <= 1e-5


def lowp_rule(dtype, device, f, y, eps, **kw):
    """The accuracy rule for a low-precision input dtype: the fused error against fp64 is at most twice
    the reference's own error when the reference runs in that dtype, plus eps."""
    loss64, grad64 = loss_and_grad(reference64, f, y, **kw)
    loss_lp, grad_lp = loss_and_grad(supcon_loss_reference, f.to(dtype), y, **kw)
    loss_fu, grad_fu = loss_and_grad(fused, f.to(dtype), y, **kw)
    assert torch.isfinite(loss_fu) and torch.isfinite(grad_fu).all()
    assert rel_err(loss_fu, loss64) <= 2 * rel_err(loss_lp, loss64) + eps
    assert rel_err(grad_fu, grad64) <= 2 * rel_err(grad_lp, grad64) + eps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("mode", ["all", "one"])
def test_half_inputs(dtype, variant, mode, device):
    f, y = sample_inputs(67, 2, 65, labels="few", dtype=torch.float64, device=device)
    lowp_rule(dtype, device, f, y, 1e-4, temperature=0.1, contrast_mode=mode, variant=variant)
    loss, grad = loss_and_grad(fused, f.to(dtype), y, temperature=0.1, contrast_mode=mode, variant=variant)
    assert loss.dtype == torch.float32 and grad.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", [10.0, 100.0])
@pytest.mark.parametrize("temperature", [0.01, 1.0])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_unnormalized_features_stay_finite(norm, temperature, variant, device):
    """Logits up to norm^2 / T = 1e6: the online running max keeps everything finite, and fp64 stays exact.

    In fp32 a logit of size |s| carries an absolute rounding error of about eps32 * |s|, and the softmax
    inherits it as a relative error; the forward and the backward's recomputed tile round differently,
    so fp32 is held to twice the fp32 reference's error plus that conditioning term."""
    f, y = sample_inputs(41, 2, 19, labels="few", dtype=torch.float64, norm=norm, device=device)
    kw = dict(temperature=temperature, variant=variant)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, **kw)
    assert rel_err(loss, loss_ref) <= 1e-10 and rel_err(grad, grad_ref) <= 1e-9
    conditioning = 8 * torch.finfo(torch.float32).eps * norm**2 / temperature
    loss32, grad32 = loss_and_grad(fused, f.float(), y, **kw)
    loss_lp, grad_lp = loss_and_grad(supcon_loss_reference, f.float(), y, **kw)
    assert torch.isfinite(loss32) and torch.isfinite(grad32).all()
    assert rel_err(loss32, loss_ref) <= 2 * rel_err(loss_lp, loss_ref) + conditioning
    assert rel_err(grad32, grad_ref) <= 2 * rel_err(grad_lp, grad_ref) + conditioning


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["out", "in"])
def test_no_positive_anywhere_is_exactly_zero(variant, device):
    f, y = sample_inputs(17, 1, 8, labels="distinct", dtype=torch.float32, device=device)
    loss, grad = loss_and_grad(fused, f, y, variant=variant)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["out", "in"])
def test_some_anchors_without_positive_are_left_out(variant, device):
    f, _ = sample_inputs(11, 1, 6, dtype=torch.float64, device=device)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6], device=device)  # 1, 3, 4, 6 are singletons
    loss, grad = loss_and_grad(fused, f, y, variant=variant)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, variant=variant)
    assert torch.isfinite(loss) and rel_err(loss, loss_ref) <= 1e-10 and rel_err(grad, grad_ref) <= 1e-10


@pytest.mark.parametrize("device", DEVICES)
def test_single_view_single_sample(device):
    f, _ = sample_inputs(1, 1, 4, dtype=torch.float32, device=device)
    loss, grad = loss_and_grad(fused, f, None)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["out", "in"])
def test_anchor_block_with_offset(variant, device):
    """The op's anchor-block form (the multi-GPU case): anchors z[offset:offset+M] against all of z equal
    the same rows of the full reference's per-anchor terms."""
    from supcon_fast import ops
    g = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(150, 33, generator=g, dtype=torch.float64), dim=1).to(device)
    y = torch.randint(0, 7, (150,), generator=g).to(device)
    full, _, _, npos_full, _ = ops.supcon_fwd(z, y, 0, 150, 0.1, variant == "in")
    for offset, m in [(0, 37), (37, 41), (101, 49), (149, 1)]:
        zz = z.clone().requires_grad_()
        part, _, _, npos, _ = ops.supcon_fwd(zz, y, offset, m, 0.1, variant == "in")
        assert torch.allclose(part, full[offset:offset + m], rtol=1e-12, atol=1e-12)
        assert torch.equal(npos, npos_full[offset:offset + m])
        w = torch.randn(m, generator=g, dtype=torch.float64).to(device)
        (grad,) = torch.autograd.grad((part * w).sum(), zz)
        zr = z.clone().requires_grad_()
        per_anchor, _ = supcon_per_anchor_reference(zr, y, 0, 150, temperature=0.1, variant=variant)
        (grad_ref,) = torch.autograd.grad((per_anchor[offset:offset + m] * w).sum(), zr)
        assert rel_err(grad, grad_ref) <= 1e-10

