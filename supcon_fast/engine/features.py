"""Frozen-encoder feature extraction (sharded, gathered across ranks) and the kNN monitor."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_ragged_rows
from .precision import autocast


@torch.no_grad()
def extract(encoder: torch.nn.Module, loader, *, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of every image the loader yields on any rank.

    Returns (features fp32 [N, D], labels int64 [N]) on the loader's device, identical on all ranks.
    """
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y in loader:
        with autocast(amp, x.device):
            f = encoder(x)
        feats.append(f.float())
        labels.append(y.view(-1).long())
    encoder.train(was_training)
    return gather_ragged_rows(torch.cat(feats)), gather_ragged_rows(torch.cat(labels))


@torch.no_grad()
def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 *, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Weighted kNN top-1 (%) on cosine similarity (Wu et al. 2018): vote weight exp(sim / T).

    train_f [N, D], train_y [N], test_f [M, D], test_y [M].
    """
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train_f = F.normalize(train_f, dim=1)
    test_f = F.normalize(test_f, dim=1)
    k = min(k, train_f.shape[0])
    correct = 0
    for i in range(0, test_f.shape[0], chunk):
        sim, idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1)          # [m, k]
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return 100.0 * correct / max(1, test_y.shape[0])
