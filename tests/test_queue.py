"""ContrastQueue: FIFO ring order, wrap-around, partial fill, labels, ages, exact state round trip, no
gradient into the queue, argument errors; and the loss with a queue (empty: the loss without one)."""
import pytest
import torch

from supcon_fast import ContrastQueue
from supcon_fast.queue import ContrastQueue as QueueFromModule


class Oracle:
    """Every row ever pushed, in push order: global row g sits at storage row g % size."""

    def __init__(self, size):
        self.size, self.rows, self.labels, self.labelled, self.sample, self.samples = size, [], [], [], [], 0

    def push(self, f, y):
        bsz, v, _ = f.shape
        for b in range(bsz):
            for j in range(v):
                self.rows.append(f[b, j].clone())
                self.labels.append(int(y[b]) if y is not None else -1)
                self.labelled.append(y is not None)
                self.sample.append(self.samples + b)
        self.samples += bsz

    def expected(self):
        """(features, labels, labelled, age) in storage order."""
        n = len(self.rows)
        k = min(n, self.size)
        order = sorted(range(n - k, n), key=lambda g: g % self.size)
        age = [self.samples - 1 - self.sample[g] for g in order]
        return (torch.stack([self.rows[g] for g in order]), torch.tensor([self.labels[g] for g in order]),
                torch.tensor([self.labelled[g] for g in order]), torch.tensor(age))


def batch(bsz, n_views, dim, seed, labels=True):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(bsz, n_views, dim, generator=g), dim=-1)
    return f, (torch.randint(0, 5, (bsz,), generator=g) if labels else None)


def check(q, oracle):
    got = q.contrast_rows()
    want = oracle.expected()
    assert len(q) == want[0].shape[0] == got[0].shape[0]
    for a, b in zip(got, want):
        assert torch.equal(a, b.to(a.dtype))
    assert got[1].dtype == torch.long and got[2].dtype == torch.bool and got[3].dtype == torch.long


def test_exported_and_empty():
    q = ContrastQueue(8, 4)
    assert ContrastQueue is QueueFromModule
    assert (q.size, q.dim, q.dtype, q.device) == (8, 4, torch.float32, torch.device("cpu"))
    assert len(q) == 0
    f, y, lab, age = q.contrast_rows()
    assert f.shape == (0, 4) and y.shape == lab.shape == age.shape == (0,)


@pytest.mark.parametrize("size,n_views", [(12, 2), (10, 3), (7, 2), (5, 4), (1, 2)])
def test_fifo_order_wrap_and_partial_fill(size, n_views):
    """Sizes that are and are not multiples of n_views (a sample partly overwritten), pushes of
    different batch sizes, a push longer than the queue, and every intermediate state."""
    q, oracle = ContrastQueue(size, 3), Oracle(size)
    for i, bsz in enumerate([1, 2, 3, 1, 5, 2, 4]):
        f, y = batch(bsz, n_views, 3, seed=i)
        q.push(f, y)
        oracle.push(f, y)
        check(q, oracle)
        assert len(q) == min(size, len(oracle.rows))


def test_partial_fill_is_the_pushed_rows_in_order_newest_age_zero():
    q = ContrastQueue(10, 2)
    f1, y1 = batch(2, 2, 2, seed=0)
    f2, y2 = batch(1, 2, 2, seed=1)
    q.push(f1, y1)
    q.push(f2, y2)
    f, y, lab, age = q.contrast_rows()
    assert len(q) == 6
    assert torch.equal(f, torch.cat([f1.reshape(4, 2), f2.reshape(2, 2)]))   # sample-major rows
    assert torch.equal(y, torch.tensor([y1[0], y1[0], y1[1], y1[1], y2[0], y2[0]]))
    assert lab.all() and torch.equal(age, torch.tensor([2, 2, 1, 1, 0, 0]))


def test_unlabelled_rows_and_mixed_pushes():
    q, oracle = ContrastQueue(9, 3), Oracle(9)
    for i, labelled in enumerate([True, False, True, False, False]):
        f, y = batch(2, 2, 3, seed=i, labels=labelled)
        q.push(f, y)
        oracle.push(f, y)
        check(q, oracle)
    _, y, lab, _ = q.contrast_rows()
    assert lab.any() and not lab.all() and (y[~lab] == -1).all()


def test_labels_of_any_integer_dtype_stored_as_int64():
    q = ContrastQueue(4, 2)
    q.push(torch.zeros(2, 2, 2), torch.tensor([3, -7], dtype=torch.int32))
    assert torch.equal(q.contrast_rows()[1], torch.tensor([3, 3, -7, -7]))


def test_dtype_cast_and_storage_view():
    q = ContrastQueue(6, 4, dtype=torch.bfloat16)
    f, y = batch(2, 2, 4, seed=0)
    q.push(f.double(), y)
    rows = q.contrast_rows()[0]
    assert rows.dtype == torch.bfloat16 and torch.equal(rows, f.reshape(4, 4).to(torch.bfloat16))
    assert rows.data_ptr() == q.contrast_rows()[0].data_ptr()             # a view of the storage, not a copy


def test_no_gradient_flows_into_the_queue():
    q = ContrastQueue(8, 3)
    src = torch.randn(2, 2, 3, requires_grad=True)
    feats = src * 2                                                        # a non-leaf in a graph
    q.push(feats, torch.tensor([0, 1]))
    rows = q.contrast_rows()[0]
    assert not rows.requires_grad and rows.grad_fn is None
    kept = rows.clone()
    with torch.no_grad():
        feats.add_(1.0)                                                    # the source changes afterwards
        src.zero_()
    assert torch.equal(q.contrast_rows()[0], kept)


def test_state_dict_round_trip_then_push_equals_never_saving(tmp_path):
    """Save mid-wrap, load into a fresh queue (through torch.save / weights_only load), push on both:
    bitwise the same as the queue that was never saved."""
    a = ContrastQueue(7, 3)
    for i in range(3):
        a.push(*batch(2, 2, 3, seed=i, labels=i != 1))
    torch.save(a.state_dict(), tmp_path / "q.pt")
    b = ContrastQueue(7, 3)
    b.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    for i in range(3, 6):
        f, y = batch(3, 2, 3, seed=i, labels=i != 4)
        a.push(f, y)
        b.push(f, y)
        for x, z in zip(a.contrast_rows(), b.contrast_rows()):
            assert torch.equal(x, z)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k], k


def test_state_dict_is_a_copy():
    q = ContrastQueue(4, 2)
    q.push(torch.ones(1, 2, 2), torch.tensor([1]))
    state = q.state_dict()
    q.push(torch.zeros(2, 2, 2), torch.tensor([2, 3]))
    assert torch.equal(state["features"][:2], torch.ones(2, 2)) and state["filled"] == 2


def test_load_state_dict_refuses_another_shape():
    state = ContrastQueue(4, 2).state_dict()
    with pytest.raises(ValueError, match="state: .*size=4"):
        ContrastQueue(5, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="state: .*dim=2"):
        ContrastQueue(4, 3).load_state_dict(state)


def test_to_moves_the_storage():
    q = ContrastQueue(4, 2)
    q.push(torch.ones(1, 2, 2), None)
    assert q.to("cpu") is q and q.contrast_rows()[0].device.type == "cpu" and len(q) == 2


@pytest.mark.parametrize("kwargs,match,exc", [
    (dict(size=0, dim=4), "size", ValueError),
    (dict(size=4.0, dim=4), "size", ValueError),
    (dict(size=True, dim=4), "size", ValueError),
    (dict(size=4, dim=0), "dim", ValueError),
    (dict(size=4, dim=4, dtype=torch.int64), "dtype", TypeError),
    (dict(size=4, dim=4, dtype="float32"), "dtype", TypeError),
])
def test_constructor_errors_name_the_argument(kwargs, match, exc):
    with pytest.raises(exc, match=match):
        ContrastQueue(**kwargs)


@pytest.mark.parametrize("features,labels,match,exc", [
    ([[1.0]], None, "features must be a torch.Tensor", TypeError),
    (torch.zeros(2, 4), None, r"features must be \[bsz, n_views, dim=4\]", ValueError),
    (torch.zeros(2, 2, 3), None, r"features must be \[bsz, n_views, dim=4\]", ValueError),
    (torch.zeros(2, 2, 4, dtype=torch.long), None, "features must be a floating-point", TypeError),
    (torch.zeros(2, 2, 4), [0, 1], "labels must be a torch.Tensor", TypeError),
    (torch.zeros(2, 2, 4), torch.zeros(2), "labels must be an integer", TypeError),
    (torch.zeros(2, 2, 4), torch.zeros(2, dtype=torch.bool), "labels must be an integer", TypeError),
    (torch.zeros(2, 2, 4), torch.zeros(3, dtype=torch.long), r"labels must be \[bsz\] = \[2\]", ValueError),
    (torch.zeros(2, 2, 4), torch.zeros(2, 1, dtype=torch.long), r"labels must be \[bsz\]", ValueError),
])
def test_push_errors_name_the_argument(features, labels, match, exc):
    q = ContrastQueue(8, 4)
    with pytest.raises(exc, match=match):
        q.push(features, labels)
    assert len(q) == 0                                                     # nothing half-written


def test_push_refuses_another_device():
    q = ContrastQueue(8, 4, device="meta")
    with pytest.raises(ValueError, match="features are on device cpu"):
        q.push(torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="labels are on device cpu"):
        q.push(torch.zeros(1, 2, 4, device="meta"), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("labels", [True, False])
def test_loss_with_an_empty_queue_equals_the_loss_without(impl, labels):
    from supcon_fast import SupConLoss, supcon_loss
    f, y = batch(6, 2, 8, seed=3)
    y = y if labels else None
    f = f.double().requires_grad_(True)
    q = ContrastQueue(32, 8, dtype=torch.float64)
    with_q = supcon_loss(f, y, temperature=0.1, impl=impl, queue=q)
    (g_q,) = torch.autograd.grad(with_q, f)
    without = supcon_loss(f, y, temperature=0.1, impl=impl)
    (g,) = torch.autograd.grad(without, f)
    assert torch.allclose(with_q, without, rtol=1e-12, atol=0) and torch.allclose(g_q, g, rtol=1e-10, atol=1e-14)
    module = SupConLoss(temperature=0.1, base_temperature=0.1, impl=impl)
    assert torch.allclose(module(f, y, queue=q), without, rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_gradients_do_not_reach_the_queue(impl):
    from supcon_fast import supcon_loss
    src = torch.randn(5, 2, 8, dtype=torch.float64, requires_grad=True)
    q = ContrastQueue(16, 8, dtype=torch.float64)
    q.push(torch.nn.functional.normalize(src, dim=-1), torch.arange(5) % 3)   # rows pushed from a graph
    kept = q.contrast_rows()[0].clone()
    f, y = batch(4, 2, 8, seed=4)
    f = f.double().requires_grad_(True)
    loss = supcon_loss(f, y % 3, temperature=0.1, impl=impl, queue=q)
    loss.backward()
    rows = q.contrast_rows()[0]
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert src.grad is None                                                   # nothing flowed back through the push
    assert not rows.requires_grad and rows.grad is None and torch.equal(rows, kept)
    assert loss.item() != pytest.approx(supcon_loss(f, y % 3, temperature=0.1, impl=impl).item())  # the queue counted
