"""One training step, shared by the trainer and the step profiler (tools/profile_step.py).

views -> one forward over all views (BatchNorm sees every view, as in the reference implementation)
-> loss -> backward (DDP all-reduces gradients here) -> optimizer step, with the lr set per step
-> with ``--queue``, the step's embeddings pushed into the loss's queue (engine/momentum.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import world_size
from .precision import autocast, loss_features, no_autocast, resolve_loss_dtype


def loss_input(model, views: list[torch.Tensor], *, loss_kind: str, amp=None,
               loss_dtype: torch.dtype | None = None) -> torch.Tensor:
    """views: n_views tensors [B, 3, S, S] -> what the criterion takes.

    The views are concatenated view-major ([V*B, ...]) and the model runs under autocast ``amp``. Its
    output [V*B, D] is L2-normalized in fp32, cast to ``loss_dtype`` (engine/precision.py; None: the
    'auto' policy) and reshaped to the loss's [B, V, D]; ``ce`` takes the [V*B, C] logits in fp32.
    """
    n_views, bsz = len(views), views[0].shape[0]
    if loss_dtype is None:
        loss_dtype = resolve_loss_dtype("auto", amp, loss_kind)
    x = torch.cat(views, 0)
    with autocast(amp, x.device):
        out = model(x)
    with no_autocast(x.device):
        if loss_kind == "ce":
            return out.to(loss_dtype)
        return loss_features(out, loss_dtype).view(n_views, bsz, -1).transpose(0, 1)


def apply_criterion(criterion, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of ``loss_input``'s output as a scalar fp32, with autocast off, so the loss receives
    exactly ``loss_dtype`` (autocast would recast it)."""
    with no_autocast(out.device):
        return criterion(out, labels).float()


def forward_loss(model, criterion, views: list[torch.Tensor], labels: torch.Tensor, *, loss_kind: str,
                 amp=None, loss_dtype: torch.dtype | None = None) -> torch.Tensor:
    """views: n_views tensors [B, 3, S, S]; labels [B] -> scalar fp32 loss (``loss_input``, then the
    criterion with autocast off)."""
    out = loss_input(model, views, loss_kind=loss_kind, amp=amp, loss_dtype=loss_dtype)
    return apply_criterion(criterion, out, labels)


class TrainStep:
    """Callable ``step(views, labels) -> (loss, ok)``; ``ok`` is False when the step was skipped.

    ``amp``: the autocast dtype of the network (None: off); ``loss_dtype``: the dtype of the loss input
    (None: the 'auto' policy, see engine/precision.py). Without a GradScaler a non-finite loss skips
    backward and the update (all ranks agree through one all-reduce); with one (fp16 anywhere) the
    GradScaler skips steps whose gradients overflow, as usual. ``feeder(views, labels, z)`` (the queue's
    feed, engine/momentum.py) runs after each step that was not skipped, with the step's loss input z.
    """

    def __init__(self, model, criterion, optimizer, scheduler, *, loss_kind: str, amp=None, loss_dtype=None,
                 scaler=None, feeder=None):
        self.model, self.criterion, self.optimizer, self.scheduler = model, criterion, optimizer, scheduler
        self.loss_kind, self.amp, self.scaler, self.feeder = loss_kind, amp, scaler, feeder
        self.loss_dtype = loss_dtype if loss_dtype is not None else resolve_loss_dtype("auto", amp, loss_kind)
        self.distributed = world_size() > 1

    def __call__(self, views, labels) -> tuple[torch.Tensor, bool]:
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = loss_input(self.model, views, loss_kind=self.loss_kind, amp=self.amp, loss_dtype=self.loss_dtype)
        loss = apply_criterion(self.criterion, out, labels)
        ok = self.update(loss)
        if ok and self.feeder is not None:
            self.feeder(views, labels, out)   # after the loss: a batch never contrasts with itself in the queue
        return loss.detach(), ok

    def update(self, loss: torch.Tensor) -> bool:
        """Backward and the optimizer step; False when the step is skipped."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return bool(self.scaler.get_scale() >= scale)  # the scale drops only on overflow
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):     # the one host sync per step; the loss is logged anyway
            return False
        loss.backward()
        self.optimizer.step()
        return True
