"""Global-batch contrast: 2 gloo processes with DDP give the single-process loss and gradients, also
with a queue (the same rows on every rank)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from supcon_fast import ContrastQueue, supcon_loss
from supcon_fast.distributed import gather_rows

WORLD = 2
CASES = [("fused", "all", "out", True), ("fused", "all", "in", True), ("fused", "one", "out", True),
         ("fused", "all", "out", False), ("reference", "all", "in", True), ("reference", "one", "out", False)]


def make_problem(bsz=10, n_views=2, dim_in=9, dim=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bsz * WORLD, n_views, dim_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (bsz * WORLD,), generator=g)
    model = torch.nn.Linear(dim_in, dim).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return x, y, model


def forward(model, x, y, impl, mode, variant, labels, gather):
    z = torch.nn.functional.normalize(model(x), dim=-1)
    return supcon_loss(z, y if labels else None, temperature=0.1, contrast_mode=mode, variant=variant,
                       impl=impl, gather=gather)


def _worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        x, y, model = make_problem()
        bsz = x.shape[0] // WORLD
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        out = {}
        for case in CASES:
            ddp.zero_grad()
            loss = forward(ddp, x[rank * bsz:(rank + 1) * bsz], y[rank * bsz:(rank + 1) * bsz], *case, gather=True)
            loss.backward()
            out[case] = (loss.item(), [p.grad.clone() for p in model.parameters()])
        # the gather itself: forward is the rank-major concatenation, backward the sum over ranks
        t = torch.full((3, 2), float(rank), requires_grad=True)
        g = gather_rows(t)
        (g * (torch.arange(6.0).view(6, 1) + 1)).sum().backward()
        out["gather"] = (g.detach().clone(), t.grad.clone())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    # A spawned (not forked) manager: a forked child would inherit the DALI pipelines earlier tests
    # left for the garbage collector, and a pipeline's destructor deadlocks in a fork.
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    x, y, model = make_problem()
    for case in CASES:
        model.zero_grad()
        loss = forward(model, x, y, *case, gather=False)
        loss.backward()
        for rank in range(WORLD):
            got_loss, got_grads = results[rank][case]
            assert got_loss == pytest.approx(loss.item(), rel=1e-10), (case, rank)
            for p, g in zip(model.parameters(), got_grads):
                assert torch.allclose(g, p.grad, rtol=1e-9, atol=1e-12), (case, rank)
    for rank in range(WORLD):
        gathered, grad = results[rank]["gather"]
        assert torch.equal(gathered[:, 0], torch.tensor([0.0, 0, 0, 1, 1, 1]))
        # d/dt_rank of sum_k w_k g_k summed over both ranks' identical losses: 2 * w[rank rows]
        want = 2 * (torch.arange(6.0).view(6, 1) + 1)[rank * 3:(rank + 1) * 3].expand(3, 2)
        assert torch.equal(grad, want)


def test_gather_is_identity_without_process_group():
    t = torch.randn(4, 3)
    assert gather_rows(t) is t


# (impl, contrast_mode, variant, labels, extra options): the queue joins the gathered global batch
QUEUE_CASES = [("fused", "all", "out", True, {}), ("fused", "all", "in", True, {}), ("fused", "one", "out", True, {}),
               ("fused", "all", "out", False, {}), ("reference", "all", "in", True, {}),
               ("fused", "all", "out", True, {"denominator": "one_positive", "positives_cap": 2}),
               ("reference", "all", "out", True, {"denominator": "only_negatives", "positives_cap": 4})]


def make_queue_problem(bsz=6, n_views=2, dim=5):
    """Global features [bsz * WORLD, n_views, dim] (unit rows, fp64), labels, and a queue that wrapped,
    holding labelled and unlabelled rows, built the same way on every rank."""
    g = torch.Generator().manual_seed(2)
    f = torch.nn.functional.normalize(torch.randn(bsz * WORLD, n_views, dim, generator=g, dtype=torch.float64), dim=-1)
    y = torch.randint(0, 3, (bsz * WORLD,), generator=g)
    q = ContrastQueue(23, dim, dtype=torch.float64)
    for i, n in enumerate([4, 5, 3]):                                    # 24 rows into 23: a sample half overwritten
        rows = torch.nn.functional.normalize(torch.randn(n, n_views, dim, generator=g, dtype=torch.float64), dim=-1)
        q.push(rows, None if i == 1 else torch.randint(0, 3, (n,), generator=g))
    return f, y, q


def queue_loss(f, y, q, impl, mode, variant, labels, options, gather):
    return supcon_loss(f, y if labels else None, temperature=0.1, contrast_mode=mode, variant=variant, impl=impl,
                       gather=gather, queue=q, **options)


def _queue_worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        f, y, q = make_queue_problem()
        bsz = f.shape[0] // WORLD
        out = {}
        for i, case in enumerate(QUEUE_CASES):
            local = f[rank * bsz:(rank + 1) * bsz].clone().requires_grad_(True)
            loss = queue_loss(local, y[rank * bsz:(rank + 1) * bsz], q, *case, gather=True)
            loss.backward()
            out[i] = (loss.item(), local.grad.clone())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_with_a_queue_equals_single_process(tmp_path):
    """Loss value on every rank = the single-process loss of the global batch and the same queue; rank r's
    feature gradient = WORLD x rank r's slice of the single-process gradient (the loss's local part is
    scaled by the world size so that DDP's gradient average gives the global batch's gradient)."""
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_queue_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    f, y, q = make_queue_problem()
    bsz = f.shape[0] // WORLD
    for i, case in enumerate(QUEUE_CASES):
        whole = f.clone().requires_grad_(True)
        loss = queue_loss(whole, y, q, *case, gather=False)
        loss.backward()
        assert whole.grad.abs().sum() > 0, case
        for rank in range(WORLD):
            got_loss, got_grad = results[rank][i]
            assert got_loss == pytest.approx(loss.item(), rel=1e-10), (case, rank)
            want = WORLD * whole.grad[rank * bsz:(rank + 1) * bsz]
            assert torch.allclose(got_grad, want, rtol=1e-9, atol=1e-12), (case, rank)
