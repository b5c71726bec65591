"""The official options (denominator modes, positives cap) and the queue on the fused op, against the
materialized reference: values and gradients, through the public API and at the op level.

The reference for the options is supcon_per_anchor_reference, which reproduces the official
implementation's published values (tests/test_reference.py). Sizes are odd (not a multiple of any
tile); every dtype; both variants and contrast modes; labels none / few / one / distinct.
"""
import pytest
import torch

from helpers import OFFICIAL_CASES, OFFICIAL_FEATURES, Backend, loss_and_grad, sample_inputs
from supcon_fast import ops, supcon_loss
from supcon_fast.reference import cap_ranks, flatten_views, supcon_per_anchor_reference

pytestmark = pytest.mark.skipif(not ops.available(), reason="extension not built")

DENOMINATORS = ["all", "one_positive", "only_negatives"]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def rel_err(a, b):
    """max |a - b| / max |b|, with a floor of 1e-3 on the scale: where the options make a loss constant
    (one class, cap reaching the whole class) the exact gradient is 0 and the reference's is rounding."""
    a, b = a.detach().double(), b.detach().double()
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-3)


class RowsQueue:
    """A queue's contract as the loss reads it (supcon_fast.queue.ContrastQueue): filled rows in storage
    order with labels, a labelled flag and each row's sample age (0 = newest)."""

    def __init__(self, rows, labels, labelled, age):
        self.rows, self.labels, self.labelled, self.age = rows, labels, labelled, age
        self.dim, self.device = rows.shape[1], rows.device

    def __len__(self):
        return self.rows.shape[0]

    def contrast_rows(self):
        return self.rows, self.labels, self.labelled, self.age


def random_queue(k, dim, n_views=2, *, classes=5, seed=0, dtype=torch.float64, unlabelled_every=0):
    """k rows of samples of n_views rows each, in a rotated storage order (a ring that wrapped)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1).to(dtype)
    sample = torch.arange(k) // n_views
    labels = torch.randint(0, classes, (int(sample.max()) + 1,), generator=g)[sample]
    labelled = torch.ones(k, dtype=torch.bool)
    if unlabelled_every:
        labelled = sample % unlabelled_every != 0
    age = int(sample.max()) - sample
    shift = k // 3
    roll = lambda t: torch.roll(t, shift, 0)  # noqa: E731
    return RowsQueue(roll(rows), roll(labels), roll(labelled), roll(age))


def fused(f, y, **kw):
    return supcon_loss(f, y, impl="fused", **kw)


def reference64(f, y, queue=None, **kw):
    if queue is not None:
        rows, labels, labelled, age = queue.contrast_rows()
        queue = RowsQueue(rows.double(), labels, labelled, age)
    return supcon_loss(f.double(), y, impl="reference", queue=queue, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("labels", ["none", "few", "one", "distinct"])
@pytest.mark.parametrize("cap", [-1, 0, 2, 4])
def test_options_parity(cap, labels, mode, variant, denominator, dtype):
    if labels == "one" and denominator == "only_negatives":
        pytest.skip("no negatives: log 0 (tested below)")
    f, y = sample_inputs(37, 2, 19, labels=labels, dtype=dtype, seed=cap + 5)
    kw = dict(temperature=0.2, contrast_mode=mode, variant=variant, denominator=denominator, positives_cap=cap)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(loss, loss_ref) <= TOL[dtype], (loss, loss_ref)
    assert rel_err(grad, grad_ref) <= TOL[dtype]


@pytest.mark.parametrize("size", [(1, 2, 3), (129, 3, 67), (600, 2, 33)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("variant", ["out", "in"])
def test_options_sizes_across_tiles(size, denominator, variant):
    """More rows than a CPU tile (512 x 2048 at 600 x 2 x 2 rows with a queue) and odd dims."""
    bsz, n_views, dim = size
    if bsz == 1 and denominator == "only_negatives":
        pytest.skip("no negatives: log 0 (tested below)")
    f, y = sample_inputs(bsz, n_views, dim, labels="few", dtype=torch.float32, seed=dim)
    q = random_queue(2 * 1111 + 1, dim, n_views=1, seed=dim, dtype=torch.float32) if bsz > 500 else None
    kw = dict(temperature=0.1, variant=variant, denominator=denominator, positives_cap=2 * n_views, queue=q)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, **kw)
    assert rel_err(loss, loss_ref) <= 2e-5 and rel_err(grad, grad_ref) <= 2e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("variant", ["out", "in"])
def test_options_half_inputs(dtype, denominator, variant):
    """The accuracy rule: fused error vs fp64 at most twice the reference's own error in that dtype + eps."""
    f, y = sample_inputs(45, 2, 31, labels="few", dtype=dtype, seed=3)
    kw = dict(temperature=0.1, variant=variant, denominator=denominator, positives_cap=4)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss64, grad64 = loss_and_grad(reference64, f, y, **kw)
    loss_low, grad_low = loss_and_grad(lambda a, b, **k: supcon_loss(a, b, impl="reference", **k), f, y, **kw)
    assert grad.dtype == dtype
    assert rel_err(loss, loss64) <= 2 * rel_err(loss_low, loss64) + 1e-3
    assert rel_err(grad, grad64) <= 2 * rel_err(grad_low, grad64) + 1e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("cap", [-1, 2])
@pytest.mark.parametrize("labels", ["none", "few", "distinct"])
def test_queue_parity(labels, cap, variant, denominator, dtype):
    f, y = sample_inputs(23, 2, 17, labels=labels, dtype=dtype, seed=7)
    q = random_queue(41, 17, dtype=dtype, seed=1, unlabelled_every=3)
    kw = dict(temperature=0.2, variant=variant, denominator=denominator, positives_cap=cap, queue=q)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss_ref, grad_ref = loss_and_grad(reference64, f, y, **kw)
    assert rel_err(loss, loss_ref) <= TOL[dtype] and rel_err(grad, grad_ref) <= TOL[dtype]
    assert not q.rows.requires_grad


def official_per_sample(variant, denominator, cap, labels, dtype):
    """The fused op's loss on the official implementation's test features, per sample (the mean over
    its two views, as that test reports it), T = 1."""
    z = flatten_views(torch.tensor(OFFICIAL_FEATURES, dtype=torch.float64)).to(dtype)
    y = torch.tensor(labels).repeat(2)
    rank = cap_ranks(y, torch.arange(6) % 3) if cap >= 0 else None
    loss = ops.supcon_fwd(z, y, 0, 6, 1.0, variant == "in", denominator=denominator, cap_rank=rank,
                          cap=cap // 2 if cap >= 0 else -1)[0]
    return loss.double().view(2, 3).mean(0)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("emu", marks=pytest.mark.emulated)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant,denominator,cap,expected,labels", OFFICIAL_CASES,
                         ids=[f"{c[0]}-{c[1]}-cap{c[2]}" for c in OFFICIAL_CASES])
def test_fused_op_reproduces_the_official_values(variant, denominator, cap, expected, labels, dtype, backend):
    """The CPU op and the CUDA kernels (emu: under the emulation) on the official test's features."""
    got = official_per_sample(variant, denominator, cap, labels, dtype)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-5)


def test_queue_rows_are_contrast_rows():
    """A queue equals putting its rows in the batch as contrast-only rows: the reference built by hand."""
    f, y = sample_inputs(11, 2, 9, labels="few", seed=2)
    q = random_queue(14, 9, seed=4, unlabelled_every=2)
    rows, q_labels, labelled, _ = q.contrast_rows()
    z = flatten_views(f)
    fresh = 1000 + torch.arange(14)
    y_all = torch.cat([y.repeat(2), torch.where(labelled, q_labels, fresh)])
    per, npos = supcon_per_anchor_reference(torch.cat([z, rows]), y_all, 0, 22, temperature=0.3)
    want = per[npos > 0].mean()
    got = supcon_loss(f, y, temperature=0.3, impl="fused", queue=q)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_queue_cap_counts_batch_then_queue_newest_first():
    """One class: with a cap of one sample, each anchor's only other positive sample is the first of the
    batch (or the second sample, for the first one); with a batch of one sample it is the queue's newest."""
    f, y = sample_inputs(1, 2, 5, labels="one", seed=1)
    q = random_queue(6, 5, seed=2, classes=1)
    rows, labels, labelled, age = q.contrast_rows()
    q = RowsQueue(rows, torch.full_like(labels, 7), labelled, age)
    order = torch.cat([torch.zeros(2, dtype=torch.long), 1 + age])
    rank = cap_ranks(torch.full((8,), 7), order)
    newest = torch.nonzero(age == 0).flatten() + 2
    assert set(torch.nonzero(rank == 1).flatten().tolist()) == set(newest.tolist())
    _, _, _, npos, _ = ops.supcon_fwd(flatten_views(f).detach(), torch.full((8,), 7), 0, 2, 0.5, False,
                                   queue=rows, cap_rank=rank, cap=1)
    assert npos.tolist() == [3, 3]  # the other view + the newest queue sample's two views


def test_only_negatives_without_negatives_is_minus_infinity_like_the_reference():
    f, y = sample_inputs(5, 2, 4, labels="one", requires_grad=False)
    a = supcon_loss(f, y, impl="fused", denominator="only_negatives")
    b = supcon_loss(f, y, impl="reference", denominator="only_negatives")
    assert a.item() == b.item() == float("-inf")


def test_default_options_take_the_default_kernel():
    """denominator='all' without a cap is today's op: bitwise the same loss, no coef output."""
    f, y = sample_inputs(33, 2, 16, labels="few", dtype=torch.float32, requires_grad=False)
    z = flatten_views(f)
    out = ops.supcon_fwd(z, y.repeat(2), 0, 66, 0.1, False)
    assert out[4].numel() == 0
    assert torch.equal(supcon_loss(f, y, impl="fused"), supcon_loss(f, y, impl="fused", denominator="all",
                                                                     positives_cap=-1, queue=None))


def test_op_checks_name_the_argument():
    z = torch.randn(6, 4)
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="denominator"):
        ops.supcon_fwd(z, y, 0, 6, 0.1, False, denominator="most")
    with pytest.raises(RuntimeError, match="cap_rank"):
        ops.supcon_fwd(z, y, 0, 6, 0.1, False, cap=1)
    with pytest.raises(RuntimeError, match="labels must be \\[N \\+ K\\]"):
        ops.supcon_fwd(z, y, 0, 6, 0.1, False, queue=torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="queue must be \\[K, D\\]"):
        ops.supcon_fwd(z, torch.zeros(9, dtype=torch.long), 0, 6, 0.1, False, queue=torch.randn(3, 5))
    f, y = sample_inputs(4, 2, 3)
    with pytest.raises(ValueError, match="positives_cap"):
        supcon_loss(f, y, positives_cap=3)
    with pytest.raises(ValueError, match="mask"):
        supcon_loss(f, mask=torch.eye(4), denominator="one_positive")
    with pytest.raises(ValueError, match="queue"):
        supcon_loss(f, y, queue=random_queue(4, 5))


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_cuda_kernels_with_a_queue(dtype, variant):
    """The CUDA host code under the emulation: a queue joins the contrast set and gets no gradient;
    against the fp64 reference by the accuracy rule (fp32: 2e-5)."""
    f, y = sample_inputs(21, 2, 24, labels="few", dtype=dtype, seed=11)
    q = random_queue(75, 24, dtype=dtype, seed=3, unlabelled_every=4)
    kw = dict(temperature=0.1, variant=variant, queue=q)
    loss, grad = loss_and_grad(fused, f, y, **kw)
    loss64, grad64 = loss_and_grad(reference64, f, y, **kw)
    if dtype == torch.float32:
        assert rel_err(loss, loss64) <= 2e-5 and rel_err(grad, grad64) <= 2e-5
        return
    loss_low, grad_low = loss_and_grad(lambda a, b, **k: supcon_loss(a, b, impl="reference", **k), f, y, **kw)
    assert rel_err(loss, loss64) <= 2 * rel_err(loss_low, loss64) + 1e-3
    assert rel_err(grad, grad64) <= 2 * rel_err(grad_low, grad64) + 1e-2


def assert_accuracy_rule(dtype, f, y, kw, result=None):
    """The fused op's (loss, grad) (computed here unless given) against the fp64 reference: fp64 / fp32
    within TOL; fp16 / bf16 at most twice the reference's own error in that dtype, plus a small eps."""
    loss, grad = result if result is not None else loss_and_grad(fused, f, y, **kw)
    loss64, grad64 = loss_and_grad(reference64, f, y, **kw)
    assert grad.dtype == dtype
    if dtype in TOL:
        assert rel_err(loss, loss64) <= TOL[dtype], (loss, loss64)
        assert rel_err(grad, grad64) <= TOL[dtype]
        return
    loss_low, grad_low = loss_and_grad(lambda a, b, **k: supcon_loss(a, b, impl="reference", **k), f, y, **kw)
    assert rel_err(loss, loss64) <= 2 * rel_err(loss_low, loss64) + 1e-3, (loss, loss64, loss_low)
    assert rel_err(grad, grad64) <= 2 * rel_err(grad_low, grad64) + 1e-2


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("cap", [-1, 0, 2])
def test_cuda_kernels_options(cap, variant, denominator, dtype):
    """The CUDA kernels under the emulation: every option against the fp64 reference, 74 rows (more
    than a 64-row tile), an odd dim, labels with few classes."""
    if cap == -1 and denominator == "all":
        pytest.skip("the default sets: tests/test_ops_cuda.py")
    f, y = sample_inputs(37, 2, 19, labels="few", dtype=dtype, seed=cap + 9)
    assert_accuracy_rule(dtype, f, y, dict(temperature=0.2, variant=variant, denominator=denominator,
                                           positives_cap=cap))


@pytest.mark.emulated
@pytest.mark.parametrize("labels,mode,cap", [("none", "all", -1), ("one", "one", 2), ("distinct", "all", 0),
                                             ("few", "one", 4)])
@pytest.mark.parametrize("denominator", ["one_positive", "only_negatives"])
def test_cuda_kernels_options_labels_and_modes(labels, mode, cap, denominator):
    if labels == "one" and denominator == "only_negatives":
        cap = 0  # one class: still a negative-free denominator (tested on the CPU op); keep positives
        denominator = "one_positive"
    f, y = sample_inputs(23, 2, 12, labels=labels, dtype=torch.float32, seed=4)
    assert_accuracy_rule(torch.float32, f, y, dict(temperature=0.3, contrast_mode=mode, denominator=denominator,
                                                   positives_cap=cap))


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("denominator", DENOMINATORS)
def test_cuda_kernels_options_with_a_queue(dtype, denominator):
    """Options across a queue, with more rows than a tensor-core row tile (128): 140 rows + 61 queue rows."""
    f, y = sample_inputs(70, 2, 24, labels="few", dtype=dtype, seed=12)
    q = random_queue(61, 24, n_views=1, dtype=dtype, seed=5, unlabelled_every=4)
    assert_accuracy_rule(dtype, f, y, dict(temperature=0.1, variant="out", denominator=denominator, positives_cap=2,
                                           queue=q))


@pytest.fixture(params=[pytest.param("emu", marks=pytest.mark.emulated)])
def be(request):
    """The emulation in three thread schedules and poison patterns (helpers.Backend), run by the test."""
    return Backend(request.param)


@pytest.mark.parametrize("dtype,dim,arch,kernels", [
    (torch.bfloat16, 40, "sm_90", ("supcon_fwd_mma_kernel[options]<bf16, DP=64>", "supcon_bwd_mma_kernel[options]<bf16, DP=64>")),
    (torch.float16, 136, "sm_90", ("supcon_fwd_mma_kernel[options]<fp16, DP=256>", "supcon_bwd_tile_kernel[options]<fp16, BK=128>")),
    (torch.bfloat16, 264, "sm_90", ("supcon_fwd_tile_kernel[options]<bf16, BK=128>", "supcon_bwd_tile_kernel[options]<bf16, BK=128>")),
    (torch.float16, 72, "sm_86", ("supcon_fwd_mma_kernel[options]<fp16, DP=128>", "supcon_bwd_mma_kernel[options]<fp16, DP=128>")),
    (torch.bfloat16, 200, "sm_86", ("supcon_fwd_tile_kernel[options]<bf16, BK=128>", "supcon_bwd_tile_kernel[options]<bf16, BK=64>")),
    (torch.float32, 33, "sm_90", ("supcon_fwd_tile_kernel[options]<fp32, BK=64>", "supcon_bwd_tile_kernel[options]<fp32, BK=64>")),
    (torch.float64, 20, "sm_86", ("supcon_fwd_tile_kernel[options]<fp64, BK=32>", "supcon_bwd_tile_kernel[options]<fp64, BK=16>")),
])
@pytest.mark.parametrize("denominator,variant", [("one_positive", "in"), ("only_negatives", "out"), ("all", "in")])
def test_cuda_options_in_every_kernel_family(be, dtype, dim, arch, kernels, denominator, variant):
    """Each kernel family the host picks for the options (mma.sync and WMMA for fp16 / bf16, by D and
    the arch's shared memory; FFMA for fp32 / fp64, compact on 99 KB parts): the same bits in three
    thread schedules and poison patterns, and the accuracy rule against the fp64 reference."""
    emu = Backend("emu", arch=arch)
    f, y = sample_inputs(40, 2, dim, labels="few", dtype=dtype, seed=dim)
    kw = dict(temperature=0.1, variant=variant, denominator=denominator, positives_cap=2)
    loss, grad = emu.run(lambda: loss_and_grad(fused, f, y, **kw))
    names = {k["kernel"] for k in emu.launches if "finalize" not in k["kernel"]}
    assert names == set(kernels), names
    assert_accuracy_rule(dtype, f, y, kw, result=(loss, grad))


def to_device(queue, device):
    rows, labels, labelled, age = queue.contrast_rows()
    return RowsQueue(rows.to(device), labels.to(device), labelled.to(device), age.to(device))


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and ops.has_kernel("cuda")), reason="needs a CUDA GPU and build")
@pytest.mark.parametrize("dtype,dim", [(torch.bfloat16, 40), (torch.float16, 136), (torch.bfloat16, 264),
                                       (torch.float32, 33), (torch.float64, 20)])
@pytest.mark.parametrize("denominator,variant", [("one_positive", "in"), ("only_negatives", "out"), ("all", "in"),
                                                 ("one_positive", "out")])
@pytest.mark.parametrize("with_queue", [False, True])
def test_options_on_the_gpu(dtype, dim, denominator, variant, with_queue):
    """The kernels the GPU's own shared memory selects, with the options and a queue, against the fp64
    reference on the CPU (the emulated tests above cover every family on every arch)."""
    f, y = sample_inputs(40, 2, dim, labels="few", dtype=dtype, seed=dim)
    q = random_queue(53, dim, n_views=1, dtype=dtype, seed=2, unlabelled_every=3) if with_queue else None
    kw = dict(temperature=0.1, variant=variant, denominator=denominator, positives_cap=2)
    loss, grad = loss_and_grad(fused, f.cuda(), y.cuda(), queue=to_device(q, "cuda") if q else None, **kw)
    assert loss.is_cuda
    assert_accuracy_rule(dtype, f, y, dict(kw, queue=q), result=(loss.cpu(), grad.cpu()))


@pytest.mark.emulated
def test_cuda_capped_class_sums_match_the_kernel_sums():
    """fp32 'out' under a cap takes the positive term from fp64 capped class sums (a sort-and-scan on
    the host side): at large norms and a low temperature it holds fp32 accuracy where a sum of fp32
    logits would not."""
    f, y = sample_inputs(40, 2, 16, labels="few", dtype=torch.float32, norm=3.0, seed=6)
    assert_accuracy_rule(torch.float32, f, y, dict(temperature=0.05, denominator="only_negatives",
                                                   positives_cap=2))


@pytest.mark.emulated
def test_cuda_backward_plans_no_gradient_work_on_the_queue():
    """With a queue of K rows after z's N rows, the backward's row blocks cover z's rows only (the same
    rows as without the queue), while the anchors' blocks walk the queue's columns too."""
    n, k = 300, 2000
    with_queue = torch.ops.supcon_fast.cuda_plan("bwd", n + k, n, 0, 128, torch.bfloat16, "sm_90", n)
    without = torch.ops.supcon_fast.cuda_plan("bwd", n, n, 0, 128, torch.bfloat16, "sm_90")
    assert set(with_queue[:, 0].tolist()) == set(without[:, 0].tolist()) == set(range((n + 63) // 64))
    assert with_queue[:, 1].sum() == -(-(n + k) // 64) * len(set(without[:, 0].tolist()))  # every column tile
