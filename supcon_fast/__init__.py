"""supcon_fast: a high-throughput Supervised Contrastive Learning trainer.

``SupConLoss`` / ``supcon_loss``: the SupCon loss, fused (no N x N matrix) on CPU and CUDA, with the
materialized reference in ``supcon_fast.reference``. ``ContrastQueue``: a labelled queue of past
embeddings that the loss contrasts against (``supcon_loss(..., queue=q)``).
"""
from .loss import SupConLoss, supcon_loss
from .queue import ContrastQueue
from .reference import supcon_loss_reference

__all__ = ["ContrastQueue", "SupConLoss", "supcon_loss", "supcon_loss_reference"]
__version__ = "0.1.0"
