"""The queue's feed: after each optimizer step, the current batch's embeddings are pushed into the
``ContrastQueue`` that the loss contrasts against (``--queue K``).

``MomentumEncoder``: a momentum copy of encoder + projection head (MoCo, He et al. 2020): after each
step ``key = m * key + (1 - m) * online`` over the parameters; buffers (BatchNorm running statistics)
are copied from the online model. With ``m = 0`` there is no copy: the online model's own (detached)
embeddings of the step are pushed, at no extra cost.

``QueueFeeder``: what the training step calls after its optimizer step. It pushes the rows only after
the step's loss was computed, so a batch never contrasts with itself in the queue. Under torchrun the
rows pushed are the global batch (gathered), identical on every rank, as ``gather=True`` contrasts.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import gather_rows
from ..queue import ContrastQueue
from .step import loss_input


class MomentumEncoder:
    """A momentum (EMA) copy of ``online`` (the unwrapped model: encoder + projection head).

    ``momentum`` in [0, 1); 0 keeps no copy (``model`` is None). The copy never requires grad.
    """

    def __init__(self, online: nn.Module, momentum: float):
        if not 0 <= momentum < 1:
            raise ValueError(f"queue_momentum: must be in [0, 1), got {momentum}")
        self.online, self.momentum = online, momentum
        self.model = copy.deepcopy(online).requires_grad_(False) if momentum > 0 else None

    @torch.no_grad()
    def update(self) -> None:
        """key = m * key + (1 - m) * online (parameters, one fused _foreach pass); buffers copied."""
        if self.model is None:
            return
        key = list(self.model.parameters())
        torch._foreach_mul_(key, self.momentum)
        torch._foreach_add_(key, list(self.online.parameters()), alpha=1 - self.momentum)
        for k, o in zip(self.model.buffers(), self.online.buffers()):
            k.copy_(o)

    @torch.no_grad()
    def embed(self, views: list[torch.Tensor], *, amp=None, loss_dtype=torch.float32) -> torch.Tensor:
        """views: n_views tensors [B, 3, S, S] -> the key embeddings [B, n_views, D], L2-normalized in
        fp32 and cast to ``loss_dtype``, exactly as the online ones reach the loss (engine/step.py).

        The copy runs in the online model's mode (training: batch statistics, as MoCo's key encoder);
        the running statistics this updates are overwritten by the next ``update``.
        """
        self.model.train(self.online.training)
        return loss_input(self.model, views, loss_kind="supcon", amp=amp, loss_dtype=loss_dtype)

    @torch.no_grad()
    def broadcast(self, src: int = 0) -> None:
        """Every rank takes rank ``src``'s copy. Under DDP each rank built its model from its own seed and
        DDP hands every rank rank 0's weights; the copy, made before that, must follow it."""
        if self.model is None or not (dist.is_available() and dist.is_initialized()):
            return
        for t in self.model.state_dict().values():
            dist.broadcast(t, src)

    def state_dict(self) -> dict | None:
        return self.model.state_dict() if self.model is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        """A saved copy; None (a checkpoint without one): start again from the online weights."""
        if self.model is None:
            return
        if state is None:
            self.model.load_state_dict(self.online.state_dict())
        else:
            self.model.load_state_dict(state)


class QueueFeeder:
    """Called by the training step after its optimizer step: ``feed(views, labels, z)``.

    z: the online embeddings of the step [B, n_views, D] (the loss input); views: n_views tensors
    [B, 3, S, S]; labels: [B]. ``use_labels=False`` (SimCLR) pushes unlabelled rows.
    """

    def __init__(self, queue: ContrastQueue, encoder: MomentumEncoder | None, *, use_labels: bool = True,
                 amp=None, loss_dtype=torch.float32):
        self.queue, self.encoder, self.use_labels = queue, encoder, use_labels
        self.amp, self.loss_dtype = amp, loss_dtype

    @torch.no_grad()
    def __call__(self, views, labels: torch.Tensor, z: torch.Tensor) -> None:
        if self.encoder is not None and self.encoder.model is not None:
            self.encoder.update()
            keys = self.encoder.embed(views, amp=self.amp, loss_dtype=self.loss_dtype)
        else:
            keys = z.detach()
        labels = labels if self.use_labels else None
        keys = gather_rows(keys.contiguous())                   # [world * B, n_views, D], rank-major
        if labels is not None:
            labels = gather_rows(labels, check=False)
        self.queue.push(keys, labels)


def build_feeder(cfg: dict, online: nn.Module, device, *, amp=None, loss_dtype=torch.float32) -> QueueFeeder | None:
    """The feeder of ``--queue K`` (None when 0): a queue of K rows of ``feat_dim`` in the loss dtype."""
    if not cfg.get("queue"):
        return None
    if cfg["loss"] not in ("supcon", "simclr"):
        raise ValueError(f"queue: applies to the contrastive losses (supcon, simclr), not --loss {cfg['loss']}")
    queue = ContrastQueue(cfg["queue"], cfg["feat_dim"], dtype=loss_dtype, device=device)
    encoder = MomentumEncoder(online, cfg["queue_momentum"])
    return QueueFeeder(queue, encoder, use_labels=cfg["loss"] == "supcon", amp=amp, loss_dtype=loss_dtype)
