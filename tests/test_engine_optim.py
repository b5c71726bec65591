"""LARS (and its BatchNorm / bias exclusions) and the warm-up + cosine schedule."""
import math

import pytest
import torch

from supcon_fast.engine.optim import LARS, WarmupCosine, build_optimizer, param_groups, warmup_cosine


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 2))


def test_param_groups_exclude_bn_and_bias():
    m = _tiny()
    decay, no_decay = param_groups(m, 1e-4)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[3].bias)}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert no_decay["lars_exclude"] and not decay["lars_exclude"]


def test_lars_update_matches_formula():
    lr, wd, eta, mom = 0.5, 0.01, 0.001, 0.9
    w = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(5))
    opt = LARS([dict(params=[w], weight_decay=wd, lars_exclude=False),
                dict(params=[b], weight_decay=0.0, lars_exclude=True)], lr=lr, momentum=mom, eta=eta)
    w0, b0 = w.detach().clone(), b.detach().clone()
    gw, gb = torch.randn(5, 3), torch.randn(5)
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    g = gw + wd * w0
    trust = eta * w0.norm() / g.norm()
    torch.testing.assert_close(w.detach(), w0 - lr * trust * g)
    torch.testing.assert_close(b.detach(), b0 - lr * gb)          # excluded: plain SGD, no decay
    # second step: momentum buffer = mom * buf + new scaled grad
    w1, b1 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    torch.testing.assert_close(b.detach(), b1 - lr * (mom * gb + gb))
    g1 = gw + wd * w1
    torch.testing.assert_close(w.detach(), w1 - lr * (mom * trust * g + eta * w1.norm() / g1.norm() * g1))


def test_lars_zero_weight_uses_trust_one():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    opt = LARS([dict(params=[w], weight_decay=0.0, lars_exclude=False)], lr=1.0, momentum=0.0)
    w.grad = torch.ones(3, 3)
    opt.step()
    torch.testing.assert_close(w.detach(), -torch.ones(3, 3))


def test_build_optimizer():
    m = _tiny()
    assert isinstance(build_optimizer(m, "lars", 0.1), LARS)
    sgd = build_optimizer(m, "sgd", 0.1, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD) and [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(m, "adam", 0.1)


def test_schedule_values():
    # warm-up: linear from peak/W to peak over W steps, then cosine down to final
    assert warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0, final=0.01) == pytest.approx(0.01)
    assert warmup_cosine(30, 100, 0, 2.0) == pytest.approx(1.0 + math.cos(math.pi * 0.3))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    opt.param_groups[0]["lr_scale"] = 0.5
    s = WarmupCosine(opt, 100, 10, 1.0)
    lrs = [s.step() for _ in range(3)]
    assert lrs == pytest.approx([0.1, 0.2, 0.3]) and opt.param_groups[0]["lr"] == pytest.approx(0.15)
    s2 = WarmupCosine(opt, 100, 10, 1.0)
    s2.load_state_dict(s.state_dict())
    assert s2.step() == pytest.approx(s.step())
