"""supcon_fast: a high-throughput Supervised Contrastive Learning trainer.

``SupConLoss`` / ``supcon_loss``: the SupCon loss, fused (no N x N matrix) on CPU and CUDA, with the
materialized reference in ``supcon_fast.reference``.
"""
from .loss import SupConLoss, supcon_loss
from .reference import supcon_loss_reference

__all__ = ["SupConLoss", "supcon_loss", "supcon_loss_reference"]
__version__ = "0.1.0"
