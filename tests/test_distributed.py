"""Global-batch contrast: 2 gloo processes with DDP give the single-process loss and gradients."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from supcon_fast import supcon_loss
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
