"""The queue's feed (engine/momentum.py): the EMA update math, m = 0 means the online model, the key
embeddings are normalized like the online ones, and what the step pushes (after its loss)."""
import pytest
import torch
from torch import nn

from supcon_fast import ContrastQueue
from supcon_fast.engine.momentum import MomentumEncoder, QueueFeeder, build_feeder
from supcon_fast.engine.step import loss_input
from supcon_fast.models import build_model


class Tiny(nn.Module):
    """A linear layer and a BatchNorm (a parameter update and a buffer to copy)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.lin(x.flatten(1)))


def test_ema_update_math():
    torch.manual_seed(0)
    online = Tiny()
    enc = MomentumEncoder(online, 0.9)
    key0 = {k: v.clone() for k, v in enc.model.state_dict().items()}
    assert all(torch.equal(key0[k], v) for k, v in online.state_dict().items())   # starts as a copy
    assert not any(p.requires_grad for p in enc.model.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()
    online(torch.randn(5, 3))                        # moves the running statistics
    enc.update()
    key = dict(enc.model.named_parameters())
    for name, p in online.named_parameters():
        assert torch.allclose(key[name], 0.9 * key0[name] + 0.1 * p, rtol=0, atol=1e-6), name
    for name, b in online.named_buffers():
        assert torch.equal(dict(enc.model.named_buffers())[name], b), name   # buffers copied, not averaged
    assert not torch.equal(key["lin.weight"], online.lin.weight)


def test_momentum_zero_means_the_online_weights():
    online = Tiny()
    enc = MomentumEncoder(online, 0.0)
    assert enc.model is None and enc.state_dict() is None
    enc.update()                                     # nothing to do
    q = ContrastQueue(8, 4)
    z = torch.nn.functional.normalize(torch.randn(2, 2, 4, requires_grad=True), dim=-1)
    QueueFeeder(q, enc)(None, torch.tensor([1, 2]), z)
    assert torch.equal(q.contrast_rows()[0], z.detach().reshape(4, 4))   # the step's own embeddings


def test_momentum_out_of_range_names_the_option():
    for m in (1.0, -0.1):
        with pytest.raises(ValueError, match="queue_momentum"):
            MomentumEncoder(Tiny(), m)


def test_key_embeddings_are_normalized_like_the_online_ones():
    torch.manual_seed(0)
    model = build_model("resnet18", stem="small", width=4, head="mlp", feat_dim=8)
    views = [torch.randn(3, 3, 8, 8) for _ in range(2)]
    enc = MomentumEncoder(model, 0.5)
    for dtype in (torch.float32, torch.bfloat16):
        keys = enc.embed(views, loss_dtype=dtype)
        want = loss_input(model, views, loss_kind="supcon", loss_dtype=dtype)   # same weights (a fresh copy)
        assert keys.shape == (3, 2, 8) and keys.dtype == dtype and not keys.requires_grad
        assert torch.equal(keys, want.detach())
        assert torch.allclose(keys.float().norm(dim=-1), torch.ones(3, 2), atol=1e-2)


def test_feeder_updates_then_pushes_the_key_embeddings_with_labels():
    torch.manual_seed(0)
    online = build_model("resnet18", stem="small", width=4, head="linear", feat_dim=8)
    enc = MomentumEncoder(online, 0.5)
    before = {k: p.detach().clone() for k, p in online.named_parameters()}
    with torch.no_grad():
        for p in online.parameters():
            p.mul_(1.5)
    q = ContrastQueue(20, 8)
    views = [torch.randn(3, 3, 8, 8) for _ in range(2)]
    labels = torch.tensor([4, 5, 6])
    QueueFeeder(q, enc)(views, labels, z=None)
    for k, p in online.named_parameters():
        assert torch.allclose(dict(enc.model.named_parameters())[k], 0.5 * before[k] + 0.5 * p, atol=1e-6)
    f, y, lab, age = q.contrast_rows()
    assert torch.equal(f, enc.embed(views).reshape(6, 8))              # embedded after the update
    assert torch.equal(y, torch.tensor([4, 4, 5, 5, 6, 6])) and lab.all()
    assert torch.equal(age, torch.tensor([2, 2, 1, 1, 0, 0]))
    QueueFeeder(q, enc, use_labels=False)(views, labels, z=None)       # SimCLR: unlabelled rows
    assert len(q) == 12 and not q.contrast_rows()[2][6:].any()


def test_state_round_trip_and_missing_state_starts_from_online():
    online = Tiny()
    enc = MomentumEncoder(online, 0.9)
    with torch.no_grad():
        online.lin.weight.add_(1.0)
    enc.update()
    other = MomentumEncoder(Tiny(), 0.9)
    other.load_state_dict(enc.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), enc.model.state_dict().values()))
    enc.load_state_dict(None)                        # a checkpoint without a momentum copy
    assert torch.equal(enc.model.lin.weight, online.lin.weight)


def test_build_feeder_from_the_config():
    cfg = {"queue": 0, "queue_momentum": 0.99, "loss": "supcon", "feat_dim": 4}
    assert build_feeder(cfg, Tiny(), "cpu") is None
    feeder = build_feeder({**cfg, "queue": 10}, Tiny(), "cpu", loss_dtype=torch.bfloat16)
    assert feeder.queue.size == 10 and feeder.queue.dim == 4 and feeder.queue.dtype == torch.bfloat16
    assert feeder.encoder.momentum == 0.99 and feeder.use_labels
    assert not build_feeder({**cfg, "queue": 10, "loss": "simclr"}, Tiny(), "cpu").use_labels
    with pytest.raises(ValueError, match="queue"):
        build_feeder({**cfg, "queue": 10, "loss": "ce"}, Tiny(), "cpu")
