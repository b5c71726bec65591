"""A trained checkpoint's top-1 error on the clean validation split and on its corrupted copies.

The classifier is what the training run reports: a cross-entropy model's own head, or, for SupCon /
SimCLR, the frozen encoder with the linear head that linear evaluation fitted (``linear_head.pt``
beside the checkpoint; fitted once and saved there if missing). Images go through the same eval
pipeline as in training (resize, centre crop at the run's size, normalize).
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import corruptions as rb
from ..engine import checkpoint, config
from ..engine.data import eval_resize, with_data
from ..engine.linear_eval import linear_eval, load_linear_head
from ..engine.pretrain import build_pretrain_model
from ..engine.runtime import Runtime


class Classifier(torch.nn.Module):
    """images [B, 3, S, S] -> logits [B, C] of a checkpoint, in eval mode."""

    def __init__(self, ckpt_path: str, device: str = "cpu", data: str | None = None, log=print):
        super().__init__()
        state = checkpoint.load(ckpt_path)
        cfg = config.validate(with_data(state["config"], data))
        self.cfg, self.device = cfg, torch.device(device)
        rt = Runtime(self.device)
        model = build_pretrain_model({**cfg, "sync_bn": False, "channels_last": False}, state["num_classes"], rt)
        model.load_state_dict(state["model"])
        model.eval()
        if cfg["loss"] == "ce":
            self.net = model
            self.kind = "cross-entropy model's own classifier"
        else:
            head = Path(ckpt_path).parent / "linear_head.pt"
            if not head.exists():
                log(f"no {head}: fitting the linear head as linear evaluation does, once")
                from .data import build_loaders
                loaders = build_loaders(cfg, device=self.device)
                linear_eval(model.encoder, loaders.train_eval, loaders.val, num_classes=loaders.num_classes,
                            epochs=cfg["linear_epochs"] or 10, lr=cfg["linear_lr"],
                            batch_size=cfg["linear_batch_size"], holdout=cfg["linear_holdout"], seed=cfg["seed"],
                            head_path=head)
            self.net = torch.nn.Sequential(model.encoder, load_linear_head(head).to(self.device))
            self.kind = "frozen encoder + linear head"
        self.net.eval()

    @torch.no_grad()
    def forward(self, x):
        return self.net(x.to(self.device)).float()


@torch.no_grad()
def top1_error(clf: Classifier, root: str, *, batch_size: int = 256, num_threads: int = 2) -> float:
    """Top-1 error in [0, 1] on the image folder ``root`` through the eval pipeline."""
    from supcon_fast.data import build_eval_loader
    loader = build_eval_loader(root, batch_size=batch_size, size=clf.cfg["size"], device=str(clf.device),
                               num_threads=num_threads, resize=eval_resize(clf.cfg))  # as the run evaluated
    wrong = total = 0
    for x, y in loader:
        pred = clf(x).argmax(1).cpu()
        wrong += int((pred != y.view(-1).cpu()).sum())
        total += int(y.numel())
    if total == 0:
        raise ValueError(f"data: no images evaluated under {root!r}")
    return wrong / total


def evaluate(clf: Classifier, val_root: str, cache: str, *, corruptions=rb.CORRUPTIONS, log=print) -> tuple[float, dict]:
    """(clean error, {corruption: {severity: error}}) of a classifier on a cached corrupted split."""
    clean = top1_error(clf, val_root)
    errors = {}
    for c in corruptions:
        errors[c] = {s: top1_error(clf, str(Path(cache) / c / str(s))) for s in rb.SEVERITIES}
        log(f"  {c:>18}: " + " ".join(f"{100 * e:5.1f}" for e in errors[c].values()) + "  (% error, severity 1-5)")
    return clean, errors
