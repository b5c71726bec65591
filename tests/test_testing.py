"""supcon_fast.testing.cuda_emulation: the session, its launch records, the arch the host planning
sees, and errors. (The kernels' results under emulation: tests/test_ops_cuda.py and test_ops.py.)"""
import pytest
import torch

from supcon_fast import ops, supcon_loss
from supcon_fast.testing import ARCHS, cuda_emulation, gpu_archs

pytestmark = pytest.mark.skipif(not ops.available(), reason="supcon_fast._C not built")


def problem(n, dtype, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    return z, torch.randint(0, 10, (n,), generator=g)


def fwd_bwd(z, labels, offset=0, m=None):
    zz = z.clone().requires_grad_()
    loss = ops.supcon_fwd(zz, labels, offset, z.shape[0] if m is None else m, 0.1, False)[0]
    loss.sum().backward()
    return loss.detach(), zz.grad


def test_launches_record_every_kernel_with_grid_block_and_shared_memory():
    z, labels = problem(200, torch.bfloat16)
    with cuda_emulation() as emu:
        fwd_bwd(z, labels)
    assert [r["kernel"] for r in emu.launches] == [
        "supcon_fwd_mma_kernel<bf16, DP=64>", "supcon_fwd_finalize_kernel<bf16, BK=128>",
        "supcon_bwd_mma_kernel<bf16, DP=64>"]
    fwd, fin, bwd = emu.launches
    # 64-row blocks; the 4 column tiles of 64 split over the grid's y to fill an H200's 132 SMs
    assert fwd["grid"] == (4, 4, 1) and fwd["block"] == (128, 1, 1)
    assert fin["grid"] == (1, 1, 1) and fin["block"] == (256, 1, 1) and fin["smem_bytes"] == 0
    # backward: a 1-D grid of (row block, column part) items, here the 4 row blocks of 64 cut in 4
    assert bwd["grid"] == (16, 1, 1) and bwd["block"] == (128, 1, 1)
    # forward: the anchor tile, two column-tile stages (64 rows x (64 + 8) halves each) + int32 labels;
    # backward: the same three tiles + two stages of the columns' statistics (5 floats and a label)
    assert fwd["smem_bytes"] == 3 * 9216 + 768
    assert bwd["smem_bytes"] == 3 * 9216 + 2 * 1536
    z32, _ = problem(200, torch.float32)
    with cuda_emulation() as emu32:
        ops.supcon_fwd(z32, labels, 0, 200, 0.1, True)
    assert emu32.launches[0]["kernel"] == "supcon_fwd_tile_kernel<fp32, BK=64>"
    assert emu32.launches[0]["grid"] == (4, 4, 1)


def test_arch_sets_the_sm_count_the_planning_sees():
    z, labels = problem(2000, torch.bfloat16, d=8)
    grids = {}
    for arch in ("sm_80", "sm_90"):
        with cuda_emulation(arch=arch) as emu:
            ops.supcon_fwd(z, labels, 0, 2000, 0.1, False)
        grids[arch] = emu.launches[0]["grid"]
    # 32 row blocks of 64, 32 column tiles: the whole-wave search (supcon_plan.cuh) picks 32 splits of
    # one tile on 108 SMs (makespan 1.055 x the ideal) and 8 splits of 4 tiles on 132 SMs (1.031)
    assert grids == {"sm_80": (32, 32, 1), "sm_90": (32, 8, 1)}
    with cuda_emulation(sm_count=4) as emu:  # 8 blocks wanted: the 32 row blocks alone are enough
        ops.supcon_fwd(z, labels, 0, 2000, 0.1, False)
    assert emu.launches[0]["grid"] == (32, 1, 1) and emu.sm_count == 4


@pytest.mark.parametrize("dtype,d,bwd_kernel,bwd_smem", [
    (torch.bfloat16, 160, "supcon_bwd_tile_kernel<bf16, BK=64>", 83968),
    (torch.float16, 160, "supcon_bwd_tile_kernel<fp16, BK=64>", 83968),
    (torch.bfloat16, 100, "supcon_bwd_mma_kernel<bf16, DP=128>", 3 * 17408 + 2 * 1536),
    (torch.float64, 32, "supcon_bwd_tile_kernel<fp64, BK=16>", 87552),
    (torch.float32, 32, "supcon_bwd_tile_kernel<fp32, BK=64>", 68608),
])
def test_99kb_parts_take_the_compact_backward(dtype, d, bwd_kernel, bwd_smem):
    """sm_86 / sm_89 / sm_120 allow 99 KB (101,376 B) of shared memory per block; the tensor-core
    tile backward's default layout needs 108,544 B and fp64's 103,936 B, so there the host takes the
    configuration with the smaller D chunk; on sm_90 the default. The mma.sync backward (fp16 / bf16,
    D <= 128) fits every arch."""
    z, labels = problem(100, dtype, d=d)
    for arch in ("sm_86", "sm_89", "sm_120"):
        with cuda_emulation(arch=arch) as emu:
            loss, grad = fwd_bwd(z, labels)
        assert torch.isfinite(loss).all() and torch.isfinite(grad.float()).all()
        bwd = emu.launches[-1]
        assert (bwd["kernel"], bwd["smem_bytes"]) == (bwd_kernel, bwd_smem) and bwd_smem <= 101376
    with cuda_emulation(arch="sm_90") as emu:
        fwd_bwd(z, labels)
    expected = {torch.float64: "BK=32>", torch.float32: "BK=64>"}.get(dtype, "BK=128>" if d > 128 else "DP=128>")
    assert emu.launches[-1]["kernel"].endswith(expected)


def test_results_do_not_depend_on_schedule_poison_or_arch():
    z, labels = problem(150, torch.float16, d=40)
    results = []
    for schedule, poison, arch in [("ascending", 1, "sm_90"), ("descending", 2, "sm_80"), ("shuffled", 1, "sm_100")]:
        with cuda_emulation(schedule, seed=3, poison=poison, arch=arch):
            results.append(fwd_bwd(z, labels, 20, 90))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad.view(torch.int16), results[0][1].view(torch.int16))


def test_outside_a_session_the_cpu_op_runs():
    z, labels = problem(90, torch.float32)
    cpu = fwd_bwd(z, labels)
    with cuda_emulation() as emu:
        emulated = fwd_bwd(z, labels)
    again = fwd_bwd(z, labels)
    assert len(emu.launches) == 3
    assert torch.equal(cpu[0], again[0]) and torch.equal(cpu[1], again[1])
    torch.testing.assert_close(emulated, cpu, rtol=1e-5, atol=1e-6)


def test_public_api_and_autograd_under_emulation():
    g = torch.Generator().manual_seed(1)
    f = torch.nn.functional.normalize(torch.randn(33, 2, 24, generator=g), dim=-1).requires_grad_()
    y = torch.randint(0, 4, (33,), generator=g)
    with cuda_emulation() as emu:
        loss = supcon_loss(f, y, impl="fused", contrast_mode="one", variant="in")
        loss.backward()
    assert {r["kernel"] for r in emu.launches} >= {"supcon_fwd_tile_kernel<fp32, BK=64>", "supcon_bwd_tile_kernel<fp32, BK=64>"}
    f2 = f.detach().clone().requires_grad_()
    ref = supcon_loss(f2, y, impl="reference", contrast_mode="one", variant="in")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.grad, f2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(schedule="random"), "schedule"), (dict(poison=3), "poison"), (dict(arch="sm_75"), "arch"),
    (dict(seed=-1), "seed"), (dict(sm_count=0), "sm_count"),
])
def test_bad_arguments_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        with cuda_emulation(**kw):
            pass


def test_sessions_do_not_nest_and_end_on_errors():
    with cuda_emulation():
        with pytest.raises(RuntimeError, match="nest"):
            with cuda_emulation():
                pass
    with pytest.raises(KeyError):
        with cuda_emulation():
            raise KeyError("boom")
    with cuda_emulation() as emu:  # the failed session ended: a new one starts
        ops.supcon_fwd(*problem(10, torch.float32), 0, 10, 0.1, False)
    assert len(emu.launches) == 2


def test_every_arch_is_known():
    assert ARCHS == ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
    assert gpu_archs()["sm_90"] == {"example": "H200", "sms": 132, "smem_optin": 232448}
    assert gpu_archs()["sm_86"]["smem_optin"] == 101376
    for arch in ARCHS:
        with cuda_emulation(arch=arch) as emu:
            ops.supcon_fwd(*problem(20, torch.float32), 0, 20, 0.1, False)
        assert emu.launches
