"""One training step, shared by the trainer and the step profiler (tools/profile_step.py).

views -> one forward over all views (BatchNorm sees every view, as in the reference implementation)
-> loss -> backward (DDP all-reduces gradients here) -> optimizer step, with the lr set per step.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .runtime import autocast


def forward_loss(model, criterion, views: list[torch.Tensor], labels: torch.Tensor, *, loss_kind: str,
                 amp=None) -> torch.Tensor:
    """views: n_views tensors [B, 3, S, S]; labels [B] -> scalar fp32 loss.

    The views are concatenated view-major ([V*B, ...]); the model output [V*B, D] is reshaped to the
    loss's [B, V, D] (``ce`` takes the [V*B, C] logits directly).
    """
    n_views, bsz = len(views), labels.shape[0]
    x = torch.cat(views, 0)
    with autocast(amp, x.device):
        out = model(x)
    if loss_kind == "ce":
        return criterion(out, labels)
    return criterion(out.float().view(n_views, bsz, -1).transpose(0, 1), labels)


class TrainStep:
    """Callable ``step(views, labels) -> (loss, ok)``; ``ok`` is False when the step was skipped.

    bf16 / fp32: a non-finite loss skips backward and the update (all ranks agree through one
    all-reduce). fp16: the GradScaler skips steps whose gradients overflow, as usual.
    """

    def __init__(self, model, criterion, optimizer, scheduler, *, loss_kind: str, amp=None, scaler=None):
        self.model, self.criterion, self.optimizer, self.scheduler = model, criterion, optimizer, scheduler
        self.loss_kind, self.amp, self.scaler = loss_kind, amp, scaler
        self.distributed = dist.is_initialized() and dist.get_world_size() > 1

    def __call__(self, views, labels) -> tuple[torch.Tensor, bool]:
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = forward_loss(self.model, self.criterion, views, labels, loss_kind=self.loss_kind, amp=self.amp)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return loss.detach(), bool(self.scaler.get_scale() >= scale)  # scale drops only on overflow
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):     # the one host sync per step; the loss is logged anyway
            return loss.detach(), False
        loss.backward()
        self.optimizer.step()
        return loss.detach(), True
