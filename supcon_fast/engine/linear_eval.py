"""Linear evaluation: a linear classifier on the frozen encoder's features (before the projection head).

Features are extracted once, without augmentation, from the encoder in eval mode; the classifier is
trained with cross-entropy on train minus a held-out split, the epoch with the best held-out top-1 is
kept (model selection never sees ``val``), and top-1 / top-5 on ``val`` are reported.
Every rank runs the same small classifier training on the same gathered features, so all ranks agree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .features import extract
from .optim import warmup_cosine


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Top-k accuracies (%) for logits [N, C], labels [N]; k is capped at C."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices                                   # [N, maxk]
    hit = pred == labels[:, None]
    return [100.0 * hit[:, :min(k, maxk)].any(1).float().mean().item() for k in ks]


def train_linear(train_f: torch.Tensor, train_y: torch.Tensor, *, num_classes: int, epochs: int = 10,
                 lr: float = 0.1, batch_size: int = 256, holdout: float = 0.1, seed: int = 0,
                 logger=None) -> tuple[torch.nn.Module, dict]:
    """Fit a linear classifier on features [N, D] with labels [N]; return (classifier, info).

    Features are standardized with the fit split's statistics (folded into the layer afterwards),
    so one lr works across encoders whose feature scales differ by orders of magnitude.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(train_f.shape[0], generator=g).to(train_f.device)
    n_hold = int(round(holdout * train_f.shape[0]))
    hold_idx, fit_idx = perm[:n_hold], perm[n_hold:]
    xf, yf = train_f[fit_idx], train_y[fit_idx]
    mean, std = xf.mean(0), xf.std(0).clamp(min=1e-6)
    norm = lambda x: (x - mean) / std  # noqa: E731
    clf = torch.nn.Linear(train_f.shape[1], num_classes).to(train_f.device)
    torch.nn.init.zeros_(clf.weight)
    torch.nn.init.zeros_(clf.bias)
    steps_per_epoch = max(1, math.ceil(xf.shape[0] / batch_size))
    total = epochs * steps_per_epoch
    peak = lr * batch_size / 256
    opt = torch.optim.SGD(clf.parameters(), lr=peak, momentum=0.9, weight_decay=1e-6)
    best = (-1.0, 0, {k: v.clone() for k, v in clf.state_dict().items()}, float("inf"))
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(xf.shape[0], generator=g).to(xf.device)
        for i in range(0, xf.shape[0], batch_size):
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, 0, peak)   # cosine to 0, no warm-up
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(clf(norm(xf[idx])), yf[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if n_hold:
            with torch.no_grad():
                logits = clf(norm(train_f[hold_idx]))
                acc = topk_accuracy(logits, train_y[hold_idx], ks=(1,))[0]
                hold_loss = F.cross_entropy(logits, train_y[hold_idx]).item()
            if logger is not None:
                logger.metrics("linear", epoch + 1, epoch=epoch + 1, holdout_top1=acc, holdout_loss=hold_loss,
                               loss=loss.item())
            # a small held-out split saturates its top-1 early: break ties by the held-out loss,
            # otherwise the first (under-trained) epoch at the ceiling would win
            if (acc, -hold_loss) > (best[0], -best[3]):
                best = (acc, epoch + 1, {k: v.clone() for k, v in clf.state_dict().items()}, hold_loss)
    if n_hold:
        clf.load_state_dict(best[2])
    # fold the standardization into the layer: clf(x) == W (x - mean) / std + b
    with torch.no_grad():
        w = clf.weight / std
        clf.bias -= w @ mean
        clf.weight.copy_(w)
    return clf, {"holdout_top1": best[0] if n_hold else None, "best_epoch": best[1] if n_hold else epochs}


def linear_eval(encoder: torch.nn.Module, train_loader, val_loader, *, num_classes: int, epochs: int = 10,
                lr: float = 0.1, batch_size: int = 256, holdout: float = 0.1, seed: int = 0, amp=None,
                logger=None, head_path=None) -> dict:
    """Extract features, fit the classifier, report ``linear_top1`` / ``linear_top5`` (%) on val.

    ``head_path``: also save the fitted classifier there (see ``load_linear_head``)."""
    tr_f, tr_y = extract(encoder, train_loader, amp=amp)
    va_f, va_y = extract(encoder, val_loader, amp=amp)
    with torch.enable_grad():
        clf, info = train_linear(tr_f, tr_y, num_classes=num_classes, epochs=epochs, lr=lr,
                                 batch_size=batch_size, holdout=holdout, seed=seed, logger=logger)
    with torch.no_grad():
        top1, top5 = topk_accuracy(clf(va_f), va_y)
    res = {"linear_top1": round(top1, 3), "linear_top5": round(top5, 3), **info,
           "n_train": int(tr_y.numel()), "n_val": int(va_y.numel())}
    if logger is not None:
        logger.metrics("linear", epochs, **res)
    if head_path is not None:  # the classifier itself, for evaluations that reuse it (corruption robustness)
        save_linear_head(clf, head_path)
    return res


def save_linear_head(clf: torch.nn.Linear, path) -> None:
    """The fitted classifier as plain tensors ({weight [C, D], bias [C]}), written atomically."""
    from .checkpoint import save_atomic
    save_atomic({"weight": clf.weight.detach().cpu(), "bias": clf.bias.detach().cpu()}, path)


def load_linear_head(path) -> torch.nn.Linear:
    state = torch.load(path, map_location="cpu", weights_only=True)
    clf = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    clf.load_state_dict(state)
    return clf
