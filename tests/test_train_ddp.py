"""Two gloo processes with DDP + global-batch contrast reproduce the single-process global batch:
the same loss on every rank and, after DDP's gradient averaging, the same gradients and update.
Also with a queue fed by a momentum copy, and tools/train.py under torchrun (2 CPU processes) end to end."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from supcon_fast import ContrastQueue
from supcon_fast.engine.losses import make_criterion
from supcon_fast.engine.momentum import MomentumEncoder, QueueFeeder
from supcon_fast.engine.optim import WarmupCosine, build_optimizer
from supcon_fast.engine.step import TrainStep, forward_loss
from supcon_fast.models import SupConModel

ROOT = Path(__file__).resolve().parents[1]
WORLD, B, V = 2, 6, 2          # per-rank batch B; the global batch is WORLD * B images


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyEncoder(nn.Module):
    """BatchNorm-free (CPU has no SyncBatchNorm, and local BN statistics would differ from the global ones)."""
    out_dim = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(32, 16))

    def forward(self, x):
        return self.net(x)


def _setup(loss):
    torch.manual_seed(0)
    model = SupConModel(TinyEncoder(), head="mlp", feat_dim=8)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(WORLD * B, 3, 8, 8, generator=g) for _ in range(V)]
    labels = torch.randint(0, 3, (WORLD * B,), generator=g)
    if loss == "simclr":
        labels = torch.arange(WORLD * B)
    return model, views, labels


def _run(model, views, labels, loss, gather):
    crit = make_criterion(loss, temperature=0.1, gather=gather)
    out = forward_loss(model, crit, views, labels, loss_kind=loss)
    out.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    opt = build_optimizer(model, "lars", 0.5, weight_decay=1e-4)
    step = TrainStep(model, crit, opt, WarmupCosine(opt, 10, 0, 0.5), loss_kind=loss)
    step(views, labels)
    return out.detach(), grads


def _worker(rank, port, loss, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, views, labels = _setup(loss)
        sl = slice(rank * B, (rank + 1) * B)
        ddp = DDP(model)
        l, grads = _run(ddp, [v[sl] for v in views], labels[sl], loss, gather=True)
        torch.save({"loss": l, "grads": {n.removeprefix("module."): g for n, g in grads.items()},
                    "params": {n: p.detach() for n, p in model.named_parameters()}}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("loss", ["supcon", "simclr"])
def test_two_process_ddp_matches_single_process_global_batch(tmp_path, loss):
    import supcon_fast
    if not hasattr(supcon_fast, "supcon_loss"):
        pytest.skip("supcon_fast.supcon_loss (gather) not available yet")
    model, views, labels = _setup(loss)
    ref_loss, ref_grads = _run(model, views, labels, loss, gather=False)
    ref_params = {n: p.detach() for n, p in model.named_parameters()}
    mp.spawn(_worker, args=(_free_port(), loss, str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        torch.testing.assert_close(res["loss"], ref_loss, rtol=1e-5, atol=1e-6)
        for n, g in ref_grads.items():
            torch.testing.assert_close(res["grads"][n], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")
        for n, p in ref_params.items():
            torch.testing.assert_close(res["params"][n], p, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def _queue_steps(model, ddp, views, labels, sl):
    """Two training steps with a queue of 40 rows fed by a momentum copy (m = 0.5): the losses and the
    queue after them. ``sl``: this process's slice of the global batch; ``ddp``: the model it steps."""
    feeder = QueueFeeder(ContrastQueue(40, 8), MomentumEncoder(model, 0.5))
    crit = make_criterion("supcon", temperature=0.1, gather=ddp is not model, queue=feeder.queue)
    opt = build_optimizer(model, "sgd", 0.5, weight_decay=1e-4)
    step = TrainStep(ddp, crit, opt, WarmupCosine(opt, 10, 0, 0.5), loss_kind="supcon", feeder=feeder)
    losses = [step([v[sl] for v in views], labels[sl])[0] for _ in range(2)]   # the 2nd contrasts the 1st's rows
    return torch.stack(losses), feeder.queue.state_dict()


def _queue_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, views, labels = _setup("supcon")
        losses, queue = _queue_steps(model, DDP(model), views, labels, slice(rank * B, (rank + 1) * B))
        torch.save({"losses": losses, "queue": queue}, f"{out_dir}/queue{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_queue_feed_matches_single_process(tmp_path):
    """Under DDP each rank pushes the gathered global batch (the momentum copy's embeddings): every rank's
    queue, and the loss that contrasts against it, equal those of one process with the global batch."""
    model, views, labels = _setup("supcon")
    ref_losses, ref_queue = _queue_steps(model, model, views, labels, slice(None))
    assert ref_queue["filled"] == 40 and ref_queue["samples"] == 2 * WORLD * B    # 48 rows pushed: wrapped
    mp.spawn(_queue_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        res = torch.load(tmp_path / f"queue{r}.pt", weights_only=True)
        torch.testing.assert_close(res["losses"], ref_losses, rtol=1e-5, atol=1e-6)
        q = res["queue"]
        assert all(q[k] == ref_queue[k] for k in ("pos", "filled", "samples"))
        assert torch.equal(q["labels"], ref_queue["labels"]) and torch.equal(q["sample"], ref_queue["sample"])
        torch.testing.assert_close(q["features"], ref_queue["features"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("queue", [[], ["--queue", "20", "--queue-momentum", "0.9"]], ids=["plain", "queue"])
def test_train_under_torchrun_two_cpu_processes_and_resume(tmp_path, queue):
    """tools/train.py under torchrun (gloo): runs end to end; a run stopped mid-epoch (--max-steps) and
    resumed with --resume auto ends with the same weights as an uninterrupted one (per-rank loader state).
    With a queue: also the same queue and momentum copy (every rank starts from rank 0's copy)."""
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(2):
            os.makedirs(tmp_path / "d" / split / str(c), exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / str(c) / f"{i}.jpg")

    def torchrun(out, *extra):
        # 16 images, global batch 4: 4 steps per epoch, 2 epochs
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
               str(_free_port()), "tools/train.py", "--dataset", "folder", "--data", str(tmp_path / "d"),
               "--out", str(out), "--width", "4", "--size", "16", "--batch-size", "4", "--epochs", "2",
               "--linear-epochs", "1", "--eval-batch-size", "8", "--knn-every", "1", "--num-threads", "1",
               "--no-tensorboard", *queue, *extra]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    full = torchrun(tmp_path / "full")
    assert full["steps"] == 8 and full["n_train"] == 16 and full["n_val"] == 6
    part = torchrun(tmp_path / "part", "--max-steps", "3")
    assert part["steps"] == 3
    ck = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert ck["step_in_epoch"] == 3 and len(ck["loader"]) == 2 and not any(k.startswith("module.") for k in ck["model"])
    resumed = torchrun(tmp_path / "part", "--resume", "auto")
    assert resumed["steps"] == 8
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    if queue:
        assert (full["queue"], full["queue_momentum"]) == (20, 0.9) and a["queue"]["samples"] == 32
        assert all(torch.equal(a["momentum_model"][k], b["momentum_model"][k]) for k in a["momentum_model"])
        assert all(torch.equal(a["queue"][k], b["queue"][k]) for k in ("features", "labels", "labelled", "sample"))
