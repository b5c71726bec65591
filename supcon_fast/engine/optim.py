"""Optimizers (LARS, SGD with momentum) and the per-step warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR / SupCon: SGD with momentum whose per-tensor step is
    scaled by the trust ratio ``eta * ||w|| / ||g + wd * w||``.

    Param groups with ``lars_exclude=True`` (BatchNorm weights and biases, see ``param_groups``) get
    neither weight decay nor the trust ratio: they are plain momentum SGD, as in the papers.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False):
        if lr < 0:
            raise ValueError(f"lr: must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      nesterov=nesterov, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                wd = group["weight_decay"]
                if wd:
                    grads = torch._foreach_add(grads, params, alpha=wd)
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                # trust ratio is 1 where either norm is 0 (fresh zero-init BN gamma is excluded anyway)
                trust = [torch.where((w > 0) & (g > 0), group["eta"] * w / g, torch.ones_like(w))
                         for w, g in zip(w_norms, g_norms)]
                grads = torch._foreach_mul(grads, trust)
            bufs = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                bufs.append(state["momentum_buffer"])
            if group["nesterov"]:
                bufs = torch._foreach_add(grads, bufs, alpha=group["momentum"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of convs / linears (decayed, LARS-adapted) and 1-d tensors (BN, biases: not)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, lars_exclude=False),
            dict(params=no_decay, weight_decay=0.0, lars_exclude=True)]


def build_optimizer(model: nn.Module, name: str, lr: float, *, momentum: float = 0.9,
                    weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """``lars`` or ``sgd`` (momentum, no decay on BN / biases). ``lr`` is the absolute peak lr."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "sgd":
        # foreach: one kernel per step for all tensors; 'fused' is CUDA-only for SGD in some builds
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)
    raise ValueError(f"optimizer: unknown {name!r}; choose 'lars' or 'sgd'")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """lr at ``step`` (0-based): linear from peak/warmup up to peak over ``warmup_steps``, then cosine to ``final``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """Per-step schedule that sets every group's lr (scaled by the group's ``lr_scale``, default 1).

    Call ``step()`` before each optimizer step; the state is one int so resume is exact.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, peak: float,
                 final: float = 0.0):
        self.optimizer, self.total_steps, self.warmup_steps = optimizer, total_steps, warmup_steps
        self.peak, self.final, self.last_step = peak, final, 0
        self.lr = warmup_cosine(0, total_steps, warmup_steps, peak, final)

    def step(self) -> float:
        self.lr = warmup_cosine(self.last_step, self.total_steps, self.warmup_steps, self.peak, self.final)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g.get("lr_scale", 1.0)
        self.last_step += 1
        return self.lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
