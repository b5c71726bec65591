"""Checks of the fused op's CUDA implementation (csrc/cuda/): tile edges, dtypes, large N against a
chunked fp64 reference, memory, autocast through the public API, and opcheck.

Every test runs on two backends: a real GPU ("cuda", skipped without one) and the CUDA emulation
("emu": the same csrc/cuda kernels and host code compiled for the CPU, supcon_fast.testing), which
runs in every CI. Under emulation each op call runs three times, under the ascending, descending
and shuffled thread schedules with both shared-memory poison patterns, and the three results must be
bitwise identical: a missing barrier, a race or a read of uninitialized shared memory shows up as
a difference. Large-N cases run at a size the emulation affords (several tiles and splits).
"""
from __future__ import annotations

import math

import pytest
import torch

from supcon_fast import ops, supcon_loss
from supcon_fast.reference import supcon_loss_reference
from supcon_fast.testing import ARCHS

from helpers import Backend, assert_bitwise_equal

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_cuda_build = pytest.mark.skipif(not ops.has_kernel("cuda"), reason="supcon_fast._C built without CUDA kernels")
needs_extension = pytest.mark.skipif(not ops.available(), reason="supcon_fast._C not built")


@pytest.fixture(params=[pytest.param("cuda", marks=[pytest.mark.cuda, needs_gpu, needs_cuda_build]),
                        pytest.param("emu", marks=[pytest.mark.emulated, needs_extension])])
def be(request):
    return Backend(request.param)


# ------------------------------------------------------------------------------------------------
# Materialized op reference (the contract of csrc/supcon.h), any dtype; fp64 is the truth.
# ------------------------------------------------------------------------------------------------
def op_reference(z, labels, offset, m, temperature, variant_in):
    """(loss, lse, pos_term, npos) for anchors z[offset:offset+m] against all of z, materialized."""
    n = z.shape[0]
    s = z[offset:offset + m] @ z.T / temperature                       # [M, N]
    rows = torch.arange(m, device=z.device) + offset
    not_self = torch.ones(m, n, dtype=torch.bool, device=z.device)
    not_self[torch.arange(m, device=z.device), rows] = False
    pos = (labels[rows][:, None] == labels[None, :]) & not_self
    npos = pos.sum(1)
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=z.device)
    lse = torch.logsumexp(torch.where(not_self, s, neg_inf), 1)
    if variant_in:
        pos_term = torch.logsumexp(torch.where(pos, s, neg_inf), 1)
        loss = lse - pos_term + torch.log(npos.clamp(min=1).to(s.dtype))
    else:
        pos_term = torch.where(pos, s, torch.zeros_like(s)).sum(1) / npos.clamp(min=1).to(s.dtype)
        loss = lse - pos_term
    loss = torch.where(npos > 0, loss, torch.zeros_like(loss))
    return loss, lse, pos_term, npos


def fused(be, z, labels, offset, m, temperature, variant_in):
    """(loss, lse, pos_term, npos) of the op (its coef output is for 'one_positive' only)."""
    return be.run(lambda: ops.supcon_fwd(z, labels, offset, m, temperature, variant_in))[:4]


def fused_grad(be, z, labels, offset, m, temperature, variant_in, grad_loss):
    def fwd_bwd():
        zz = z.detach().clone().requires_grad_()
        loss = ops.supcon_fwd(zz, labels, offset, m, temperature, variant_in)[0]
        (loss * grad_loss).sum().backward()
        return loss.detach(), zz.grad
    return be.run(fwd_bwd)


def ref_grad(z, labels, offset, m, temperature, variant_in, grad_loss, dtype):
    zz = z.detach().to(dtype).clone().requires_grad_()
    loss = op_reference(zz, labels, offset, m, temperature, variant_in)[0]
    (loss * grad_loss.to(loss.dtype)).sum().backward()
    return loss.detach(), zz.grad


def make(be, n, d, n_classes, dtype, seed=0, scale=1.0, normalize=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    z = (z * scale).to(dtype).to(be.device)
    labels = (torch.randint(0, n_classes, (n,), generator=g) * 7919 - 3).to(be.device)  # arbitrary int64 values
    return z, labels


def assert_half_rule(fused_v, ref64, ref_lowp, what, eps):
    """The accuracy rule (docs/design.md, "Accuracy"): fused error vs fp64 <= 2 x (the reference's own error
    in that dtype) + eps."""
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(fused_v), finite), f"{what}: finite entries differ from the fp64 reference"
    if not finite.any():
        return
    err = (fused_v.double() - ref64)[finite].abs().max().item()
    ref_err = (ref_lowp.double() - ref64)[finite].abs().max().item()
    assert err <= 2 * ref_err + eps, f"{what}: fused err {err:.3e} > 2 x reference err {ref_err:.3e} + {eps:g}"


# ------------------------------------------------------------------------------------------------
# Tile edges: N, M not multiples of the tiles (128 x 64 tensor-core, 64 x 64 FFMA), D not a multiple
# of 8 / 16 or larger than a 128-wide D chunk, anchor blocks with an offset, classes without positives,
# one column split and several (small row counts split the columns to fill the GPU's SMs).
# ------------------------------------------------------------------------------------------------
SHAPES = [  # (N, D, offset, M)
    (1, 4, 0, 1), (2, 3, 0, 2), (2, 3, 1, 1), (37, 13, 0, 37), (130, 64, 0, 130), (130, 64, 5, 70),
    (257, 128, 0, 257), (200, 130, 0, 200), (300, 257, 40, 129), (70, 1030, 0, 70), (513, 8, 0, 513),
    (129, 1, 128, 1), (1000, 33, 0, 100), (1000, 33, 700, 150), (600, 64, 130, 5), (601, 127, 0, 601),
    (333, 300, 11, 222), (97, 129, 0, 97),
]


@pytest.mark.parametrize("variant_in", [False, True], ids=["out", "in"])
@pytest.mark.parametrize("n,d,offset,m", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_precision_paths(be, n, d, offset, m, dtype, variant_in):
    z, labels = make(be, n, d, max(1, n // 3), dtype, seed=n + d)
    t = 0.1
    loss, lse, pos, npos = fused(be, z, labels, offset, m, t, variant_in)
    r_loss, r_lse, r_pos, r_npos = op_reference(z.double(), labels, offset, m, t, variant_in)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert npos.dtype == torch.int64 and torch.equal(npos, r_npos)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), r_lse, **tol)
    torch.testing.assert_close(loss.double(), r_loss, **tol)
    has = r_npos > 0
    torch.testing.assert_close(pos.double()[has], r_pos[has], **tol)
    if variant_in:
        assert torch.isneginf(pos[~has]).all()
    gl = torch.randn(m, dtype=torch.float64, generator=torch.Generator().manual_seed(m)).to(be.device)
    _, grad = fused_grad(be, z, labels, offset, m, t, variant_in, gl.to(loss.dtype))
    _, r_grad = ref_grad(z, labels, offset, m, t, variant_in, gl, torch.float64)
    assert grad.dtype == dtype and grad.shape == z.shape
    torch.testing.assert_close(grad.double(), r_grad, **tol)


@pytest.mark.parametrize("variant_in", [False, True], ids=["out", "in"])
@pytest.mark.parametrize("n,d,offset,m", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_core_paths(be, n, d, offset, m, dtype, variant_in):
    z, labels = make(be, n, d, max(1, n // 3), dtype, seed=n + d)
    t = 0.1
    loss, lse, pos, npos = fused(be, z, labels, offset, m, t, variant_in)
    assert loss.dtype == torch.float32 and lse.dtype == torch.float32
    r_loss, r_lse, _, r_npos = op_reference(z.double(), labels, offset, m, t, variant_in)
    lp_loss, lp_lse, _, _ = op_reference(z, labels, offset, m, t, variant_in)  # the reference in that dtype
    assert torch.equal(npos, r_npos)
    assert_half_rule(lse, r_lse, lp_lse, "lse", eps=1e-3)
    assert_half_rule(loss, r_loss, lp_loss, "loss", eps=1e-3)
    gl = (torch.rand(m, dtype=torch.float32, generator=torch.Generator().manual_seed(m)) / max(m, 1)).to(be.device)
    _, grad = fused_grad(be, z, labels, offset, m, t, variant_in, gl)
    _, r_grad = ref_grad(z, labels, offset, m, t, variant_in, gl, torch.float64)
    _, lp_grad = ref_grad(z, labels, offset, m, t, variant_in, gl, dtype)
    assert grad.dtype == dtype
    assert_half_rule(grad, r_grad, lp_grad, "grad", eps=1e-3 * max(r_grad.abs().max().item(), 1e-6))


def check_case(be, n, d, offset, m, dtype, variant_in, t=0.1):
    """Forward and backward of one case against the fp64 reference: fp64 / fp32 to their precision,
    fp16 / bf16 by the accuracy rule (twice the reference's own error in that dtype, plus eps)."""
    z, labels = make(be, n, d, max(1, n // 3), dtype, seed=n + d)
    gl = torch.rand(m, dtype=torch.float64, generator=torch.Generator().manual_seed(m)).to(be.device) / max(m, 1)
    loss, lse, pos, npos = fused(be, z, labels, offset, m, t, variant_in)
    _, grad = fused_grad(be, z, labels, offset, m, t, variant_in, gl.to(loss.dtype))
    r_loss, r_lse, _, r_npos = op_reference(z.double(), labels, offset, m, t, variant_in)
    _, r_grad = ref_grad(z, labels, offset, m, t, variant_in, gl, torch.float64)
    assert torch.equal(npos, r_npos)
    if dtype in (torch.float64, torch.float32):
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse.double(), r_lse, **tol)
        torch.testing.assert_close(loss.double(), r_loss, **tol)
        torch.testing.assert_close(grad.double(), r_grad, **tol)
        return
    lp_loss, lp_lse, _, _ = op_reference(z, labels, offset, m, t, variant_in)
    _, lp_grad = ref_grad(z, labels, offset, m, t, variant_in, gl, dtype)
    assert_half_rule(lse, r_lse, lp_lse, "lse", eps=1e-3)
    assert_half_rule(loss, r_loss, lp_loss, "loss", eps=1e-3)
    assert_half_rule(grad, r_grad, lp_grad, "grad", eps=1e-3 * max(r_grad.abs().max().item(), 1e-6))


@pytest.mark.parametrize("variant_in", [False, True], ids=["out", "in"])
@pytest.mark.parametrize("n,d,offset,m", [(601, 127, 0, 601), (333, 72, 40, 200)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_one_column_split(be, n, d, offset, m, dtype, variant_in):
    """Large problems run with few column splits: each forward block walks many column tiles, and in the
    backward an uncut row block writes its grad rows once, in z's dtype, with no fp32 partials. A GPU
    plans that only from about 34,000 rows on; the emulation reaches the same plans at small N by
    planning for one SM."""
    if not be.emulated:
        pytest.skip("the large-N tests cover this plan on a GPU")
    one_sm = Backend("emu", sm_count=1)
    check_case(one_sm, n, d, offset, m, dtype, variant_in)
    fwd = next(k for k in one_sm.launches if k["kernel"].startswith("supcon_fwd") and "finalize" not in k["kernel"])
    bwd = next(k for k in one_sm.launches if k["kernel"].startswith("supcon_bwd"))
    bm = 64  # every backward here: 64-row blocks (fp16 / bf16 at D <= 128 on the mma.sync kernel)
    assert fwd["grid"][1] <= 2 < math.ceil(n / 64)  # several column tiles per block
    if m == n:  # every row an anchor: one block per row block, writing its grad rows directly
        assert bwd["grid"][0] == math.ceil(n / bm)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_every_arch(be, arch, dtype):
    """Forward and backward planned for each GPU's SM count and shared-memory limit (sm_80 A100: 108
    SMs, 163 KB; sm_86 A10: 72, 99 KB; sm_89 L40S: 142, 99 KB; sm_90 H200: 132, 227 KB; sm_100 B200:
    148, 227 KB; sm_120 RTX 5090: 170, 99 KB), both variants, an anchor block."""
    if not be.emulated:
        pytest.skip("a GPU is one arch; the emulation plans for each")
    for variant_in in (False, True):
        check_case(Backend("emu", arch=arch), 450, 80, 70, 260, dtype, variant_in)


@pytest.mark.parametrize("dtype,d,arch,kernel", [
    (torch.float16, 13, "sm_90", "supcon_fwd_mma_kernel<fp16, DP=64>"),
    (torch.bfloat16, 128, "sm_90", "supcon_fwd_mma_kernel<bf16, DP=128>"),
    (torch.bfloat16, 129, "sm_90", "supcon_fwd_mma_kernel<bf16, DP=256>"),
    (torch.bfloat16, 256, "sm_86", "supcon_fwd_tile_kernel<bf16"),     # DP=256 needs 101 KB: over 99 KB
    (torch.float16, 257, "sm_90", "supcon_fwd_tile_kernel<fp16"),
    (torch.float32, 64, "sm_90", "supcon_fwd_tile_kernel<fp32"),
])
def test_forward_kernel_choice(be, dtype, d, arch, kernel):
    """fp16 / bf16 with D <= 256 run the mma.sync forward where its shared memory fits the arch, the
    rest the tile engines' kernel; both give the same statistics to the accuracy rule (the shape tests)."""
    if not be.emulated:
        pytest.skip("the emulation lists its launches")
    emu = Backend("emu", arch=arch)
    check_case(emu, 150, d, 20, 100, dtype, False)
    names = [k["kernel"] for k in emu.launches if k["kernel"].startswith("supcon_fwd") and "finalize" not in k["kernel"]]
    assert len(names) == 1 and names[0].startswith(kernel), names


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("temperature,scale", [(0.01, 1.0), (1.0, 100.0), (0.01, 100.0)])
def test_extreme_logits_stay_finite(be, dtype, temperature, scale):
    # |s| up to 1e6: only a running max keeps exp() finite
    z, labels = make(be, 300, 64, 10, dtype, seed=3, scale=scale, normalize=True)
    for variant_in in (False, True):
        loss, lse, pos, npos = fused(be, z, labels, 0, 300, temperature, variant_in)
        assert torch.isfinite(loss).all() and torch.isfinite(lse).all()
        r_lse = op_reference(z.double(), labels, 0, 300, temperature, variant_in)[1]
        torch.testing.assert_close(lse.double(), r_lse, rtol=1e-4, atol=1e-3)
        _, grad = fused_grad(be, z, labels, 0, 300, temperature, variant_in,
                             torch.full((300,), 1 / 300, device=be.device))
        assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("variant_in", [False, True], ids=["out", "in"])
@pytest.mark.parametrize("n,d,classes", [(300, 64, 10), (700, 96, 50), (1000, 33, 300)])
def test_fp32_within_1e5_at_extreme_logits(be, n, d, classes, variant_in):
    """T = 0.01 and norms of 100 (logits up to 1e6): fp32 stays within 1e-5 of fp64 on the same input.
    LSE per anchor; the 'out' positive term per anchor (fp64 class sums: the mean of fp32 logits over
    the positives cancels); the 'in' positive term and the loss relative to their largest entry (the
    'in' loss is a difference of two ~1e6 terms: its per-anchor error is the fp32 logits' own)."""
    t = 0.01
    z, labels = make(be, n, d, classes, torch.float32, seed=3, scale=100.0)
    loss, lse, pos, npos = fused(be, z, labels, 0, n, t, variant_in)
    r_loss, r_lse, r_pos, r_npos = op_reference(z.double(), labels, 0, n, t, variant_in)
    has = r_npos > 0
    assert torch.equal(npos, r_npos) and has.any()
    per_anchor = lambda a, b: ((a.double() - b).abs() / b.abs())[has].max().item()  # noqa: E731
    normwise = lambda a, b: ((a.double() - b)[has].abs().max() / b[has].abs().max()).item()  # noqa: E731
    assert per_anchor(lse, r_lse) <= 1e-5
    assert (normwise if variant_in else per_anchor)(pos, r_pos) <= 1e-5
    assert normwise(loss, r_loss) <= 1e-5


def test_cuda_graph_capture_replays_forward_and_backward(be):
    """No host synchronization in forward or backward (positives are counted in the kernels), so
    both capture in a CUDA graph; a replay on new inputs equals eager results bitwise."""
    if be.emulated:
        pytest.skip("CUDA graphs need a GPU; under emulation, ops.cpp's path has no sync to find")
    n, t = 1000, 0.1
    z, labels = make(be, n, 64, 50, torch.bfloat16, seed=4)
    gl = torch.full((n,), 1.0 / n, device="cuda")

    def step():
        loss, lse, pos, npos, _ = ops.supcon_fwd(z, labels, 0, n, t, True)
        grad = torch.ops.supcon_fast.supcon_bwd.default(gl, z, labels, lse, pos, npos, 0, n, t, True)
        return loss, grad

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    z.copy_(make(be, n, 64, 50, torch.bfloat16, seed=5)[0])
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    assert_bitwise_equal(captured, eager, "graph replay vs eager")


@pytest.mark.parametrize("grad_scale", [1e-3, 1.0, 3e3], ids=["tiny", "unit", "large"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_grad_scaling(be, dtype, grad_scale):
    """The fp16 H tile is scaled by a power of two from max |grad_loss| so that neither tiny upstream
    gradients (1e-3 / N: H ~ 1e-8, below fp16's smallest subnormal, while the result ~ 1e-4 is still
    representable) nor large ones underflow or overflow fp16: the result scales with them."""
    n, t = 203, 0.1
    z, labels = make(be, n, 72, 20, dtype, seed=11)
    gl = (torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.5).to(be.device) / n
    _, grad1 = fused_grad(be, z, labels, 0, n, t, True, gl)
    _, grad_s = fused_grad(be, z, labels, 0, n, t, True, gl * grad_scale)
    _, r_grad = ref_grad(z, labels, 0, n, t, True, gl.double() * grad_scale, torch.float64)
    _, lp_grad = ref_grad(z, labels, 0, n, t, True, gl.double() * grad_scale, dtype)
    assert torch.isfinite(grad_s.float()).all()
    assert (grad_s != 0).float().mean() > 0.9, "scaled gradients underflowed"
    assert_half_rule(grad_s, r_grad, lp_grad, "grad", eps=1e-3 * r_grad.abs().max().item())
    # Powers of two aside, scaling g scales H's fp16 rounding too: the relative error stays put.
    rel = ((grad_s.double() / grad_scale - grad1.double()).abs().max() / grad1.double().abs().max()).item()
    assert rel < 2e-2, f"gradient relative change {rel:.2e} under a {grad_scale:g} x upstream scale"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_empty_and_misaligned_inputs(be, dtype):
    z, labels = make(be, 50, 8, 5, dtype)
    loss, lse, pos, npos = fused(be, z, labels, 10, 0, 0.1, False)
    assert loss.shape == lse.shape == pos.shape == npos.shape == (0,)
    grad = be.run(lambda: torch.ops.supcon_fast.supcon_bwd.default(loss, z, labels, lse, pos, npos, 10, 0, 0.1, False))
    assert grad.shape == z.shape and (grad == 0).all()
    # data pointer not 16-byte aligned (vector loads off) against the aligned copy (vector loads on):
    # the two load paths must agree bitwise, forward and backward
    for d in (8, 64, 136):
        flat = torch.randn(50 * d + 3, generator=torch.Generator().manual_seed(d)).to(dtype).to(be.device)
        zm = flat[3:].view(50, d)
        assert zm.data_ptr() % 16 != 0
        zc = zm.clone()
        assert zc.data_ptr() % 16 == 0
        gl = torch.full((50,), 0.02, device=be.device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        a, b = fused_grad(be, zm, labels, 0, 50, 0.1, True, gl), fused_grad(be, zc, labels, 0, 50, 0.1, True, gl)
        assert_bitwise_equal(a, b, f"misaligned vs aligned z, D = {d}")
    zt = torch.randn(8, 50).to(dtype).to(be.device).T
    assert_bitwise_equal(fused(be, zt, labels, 0, 50, 0.1, False)[0], fused(be, zt.contiguous(), labels, 0, 50, 0.1, False)[0],
                         "transposed z")


def test_bad_arguments_name_the_argument(be):
    z, labels = make(be, 10, 4, 2, torch.float32)
    if be.emulated:
        with pytest.raises(RuntimeError, match="labels"):
            fused(be, z, labels.to(torch.int32), 0, 10, 0.1, False)
    else:
        with pytest.raises(RuntimeError, match="labels"):
            fused(be, z, labels.cpu(), 0, 10, 0.1, False)
    with pytest.raises(RuntimeError, match="anchor block"):
        fused(be, z, labels, 5, 6, 0.1, False)
    with pytest.raises(RuntimeError, match="temperature"):
        fused(be, z, labels, 0, 10, 0.0, False)


def test_symmetric_backward_is_deterministic(be):
    n = be.size(4096, 1100)
    z, labels = make(be, n, 128, 100, torch.bfloat16, seed=1)
    gl = torch.full((n,), 1 / n, device=be.device)
    g1 = fused_grad(be, z, labels, 0, n, 0.1, False, gl)[1]
    g2 = fused_grad(be, z, labels, 0, n, 0.1, False, gl)[1]
    assert torch.equal(g1, g2)


# ------------------------------------------------------------------------------------------------
# Large N against a chunked fp64 reference (never an N x N matrix in memory).
# ------------------------------------------------------------------------------------------------
def chunked_lse64(z, rows, chunk=1024):
    """fp64 LSE over j != a for the given global rows, computed in row chunks."""
    z64 = z.double()
    out = torch.empty(len(rows), dtype=torch.float64, device=z.device)
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        logits = z64[r] @ z64.T
        logits[torch.arange(len(r), device=z.device), r] = float("-inf")
        out[s:s + chunk] = torch.logsumexp(logits, 1)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("size", ["large", "larger"])
def test_large_n_lse_against_chunked_fp64(be, size, dtype):
    t = 0.1
    n = be.size({"large": 65536, "larger": 262144}[size], {"large": 1500, "larger": 2900}[size])
    z, labels = make(be, n, 128, be.size(1000, 60), dtype, seed=n)
    loss, lse, pos, npos = fused(be, z, labels, 0, n, t, False)
    assert torch.isfinite(lse).all() and torch.isfinite(loss).all()
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:4096].to(be.device)
    zs = z.double() / math.sqrt(t)  # s_ij = (z_i / sqrt t) . (z_j / sqrt t)
    r_lse = chunked_lse64(zs, rows)
    # z is the same (rounded) input for both: the only differences are fp32 accumulation and sums
    torch.testing.assert_close(lse[rows].double(), r_lse, rtol=2e-5, atol=2e-4)
    # 'out' positive term via class sums in fp64
    z64 = z.double()
    _, inv = torch.unique(labels, return_inverse=True)
    csum = torch.zeros(int(inv.max()) + 1, 128, dtype=torch.float64, device=be.device).index_add_(0, inv, z64)
    r_np = torch.bincount(inv)[inv[rows]] - 1
    r_pos = (z64[rows] * (csum[inv[rows]] - z64[rows])).sum(1) / (t * r_np.clamp(min=1))
    assert torch.equal(npos[rows], r_np)
    torch.testing.assert_close(pos[rows].double(), r_pos, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant_in", [False, True], ids=["out", "in"])
@pytest.mark.parametrize("case", ["symmetric", "anchor_block"])
def test_large_n_grad_against_chunked_fp64(be, case, variant_in):
    d, t = 128, 0.1
    gpu = {"symmetric": (65536, 0, 65536), "anchor_block": (40000, 10000, 5000)}[case]
    emu = {"symmetric": (1300, 0, 1300), "anchor_block": (1500, 390, 260)}[case]
    n, offset, m = be.size(gpu, emu)
    z, labels = make(be, n, d, be.size(2000, 50), torch.bfloat16, seed=7)
    gl = torch.full((m,), 1.0 / m, device=be.device)
    loss, grad = fused_grad(be, z, labels, offset, m, t, variant_in, gl)
    assert torch.isfinite(grad.float()).all()
    dev = be.device
    # fp64 statistics of every anchor, chunked, then the gradient of a subset of rows:
    # grad[r] = sum_j ([r anchor] G_rj + [j anchor] G_jr) z_j / t, with
    # G_ij = g_i (exp(s_ij - lse_i) - [j in P(i)] ('in': exp(s_ij - pt_i) | 'out': 1 / npos_i))
    z64 = z.double()
    _, inv = torch.unique(labels, return_inverse=True)
    anchors = torch.arange(offset, offset + m, device=dev)
    lse64 = chunked_lse64(z64 / math.sqrt(t), anchors)
    npos = (torch.bincount(inv)[inv[anchors]] - 1).double()
    pt64 = torch.zeros(m, dtype=torch.float64, device=dev)
    if variant_in:
        for s in range(0, m, 2048):
            r = anchors[s:s + 2048]
            logits = z64[r] @ z64.T / t
            same = inv[r][:, None] == inv[None, :]
            same[torch.arange(len(r), device=dev), r] = False
            pt64[s:s + 2048] = torch.logsumexp(logits.masked_fill(~same, float("-inf")), 1)
    pt64 = torch.where(npos > 0, pt64, torch.zeros_like(pt64))  # anchors without a positive: g = 0 anyway
    g = torch.where(npos > 0, torch.full_like(npos, 1.0 / m), torch.zeros_like(npos))

    def g_term(logits, same, lse_, pt_, npos_):
        if variant_in:
            return torch.exp(logits - lse_) - same * torch.exp(logits - pt_)
        return torch.exp(logits - lse_) - same / npos_.clamp(min=1)

    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(n, generator=gen).to(dev)
    rows = torch.cat([perm[:512], anchors[torch.randperm(m, generator=gen).to(dev)[:512]]])
    logits = z64[rows] @ z64.T / t                                     # s_rj = s_jr
    not_self = torch.ones(len(rows), n, dtype=torch.bool, device=dev)
    not_self[torch.arange(len(rows), device=dev), rows] = False
    same = (inv[rows][:, None] == inv[None, :]) & not_self
    hmat = torch.zeros_like(logits)
    is_anchor_row = (rows >= offset) & (rows < offset + m)
    ia = (rows - offset).clamp(0, m - 1)                               # anchor index of each row (if any)
    row_term = g[ia][:, None] * g_term(logits, same, lse64[ia][:, None], pt64[ia][:, None], npos[ia][:, None])
    hmat += torch.where(is_anchor_row[:, None], row_term, torch.zeros_like(row_term))
    cols = slice(offset, offset + m)
    hmat[:, cols] += g[None, :] * g_term(logits[:, cols], same[:, cols], lse64[None, :], pt64[None, :], npos[None, :])
    hmat *= not_self
    r_grad = hmat @ z64 / t
    err = (grad[rows].double() - r_grad).abs().max().item()
    scale = r_grad.abs().max().item()
    assert err <= 2e-2 * scale, f"grad err {err:.3e} vs max |grad| {scale:.3e}"


def test_memory_is_linear_in_n(be):
    if be.emulated:
        pytest.skip("device memory is not emulated (CPU tensors); the GPU run measures it")
    n, d = 65536, 128
    z, labels = make(be, n, d, 1000, torch.bfloat16, seed=5)
    z.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = supcon_loss(z.view(n // 2, 2, d), labels[: n // 2], impl="fused")
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    budget = 64 * 2**20 + 4 * n * d
    assert peak <= budget, f"loss-attributable peak {peak / 2**20:.1f} MiB > {budget / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------------
# Public API under autocast, and opcheck.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_autocast_public_api(be, amp_dtype, variant):
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(96, 2, 32, generator=g), dim=-1).to(be.device)
    labels = torch.randint(0, 10, (96,), generator=g).to(be.device)

    def fwd_bwd():
        f = feats.clone().requires_grad_()
        with torch.autocast(be.device, dtype=amp_dtype):
            loss = supcon_loss(f.to(amp_dtype), labels, temperature=0.1, variant=variant, impl="fused")
        loss.backward()
        return loss.detach(), f.grad
    loss, grad = be.run(fwd_bwd)
    assert loss.dtype == torch.float32
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    f64 = feats.double().requires_grad_()
    ref = supcon_loss_reference(f64, labels, temperature=0.1, variant=variant)
    ref.backward()
    flp = feats.to(amp_dtype).requires_grad_()
    ref_lp = supcon_loss_reference(flp, labels, temperature=0.1, variant=variant)
    ref_lp.backward()
    assert abs(loss.item() - ref.item()) <= 2 * abs(ref_lp.item() - ref.item()) + 1e-3
    err = (grad.double() - f64.grad).abs().max().item()
    ref_err = (flp.grad.double() - f64.grad).abs().max().item()
    assert err <= 2 * ref_err + 1e-3 * f64.grad.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset,m", [(0, 70), (10, 30)])
def test_opcheck_cuda(be, dtype, offset, m):
    z, labels = make(be, 70, 20, 7, dtype, seed=2)
    z.requires_grad_()
    loss, lse, pos, npos = fused(be, z.detach(), labels, offset, m, 0.1, False)

    def check():
        torch.library.opcheck(torch.ops.supcon_fast.supcon_fwd.default, (z, labels, offset, m, 0.1, True))
        torch.library.opcheck(torch.ops.supcon_fast.supcon_fwd.default, (z, labels, offset, m, 0.1, False))
        torch.library.opcheck(torch.ops.supcon_fast.supcon_bwd.default,
                              (torch.ones_like(loss), z.detach(), labels, lse, pos, npos, offset, m, 0.1, False))
        return torch.zeros(())
    be.run(check)
