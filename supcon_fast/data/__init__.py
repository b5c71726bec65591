"""Data: DALI multi-view train loader, eval loader, datasets, torchvision baseline.

    from supcon_fast.data import build_train_loader, build_eval_loader, make_digits

DALI is imported lazily (when a pipeline is built), so `make_digits`, `scan` and `check_dataset`
work without it, and `backend="auto"` (the default) falls back to the torchvision loader where
DALI is not installed.
"""
from __future__ import annotations

import warnings

import torch

from .datasets import (DEFAULT_DIGITS_ROOT, CheckReport, check_dataset, make_digits,
                       make_synthetic)
from .fashion_mnist import make_fashion_mnist
from .folder import Samples, scan
from .recipe import IMAGENET_MEAN, IMAGENET_STD, POLICIES, check_policy

__all__ = ["build_train_loader", "build_eval_loader", "dali_available", "make_digits",
           "make_synthetic", "make_fashion_mnist", "check_dataset", "CheckReport", "scan",
           "Samples", "POLICIES", "DEFAULT_DIGITS_ROOT", "IMAGENET_MEAN", "IMAGENET_STD"]


def build_train_loader(root, *, batch_size, n_views=2, size=224, policy="simclr", device="cpu",
                       shard_id=0, num_shards=1, seed=0, num_threads=2, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3), dtype=torch.float32, skip_corrupt=False,
                       verify="header", drop_last=False, checkpointing=True,
                       randaugment_n=2, randaugment_m=9, prefetch_queue_depth=2,
                       backend="auto", samples=None):
    """Multi-view SupCon train loader on DALI (CPU-only mode for device='cpu').

    `root`: a split folder `root/<class>/<image>` (labels = sorted class names, as ImageFolder) or
    a file list (`path label` lines). Iterating yields `(views, labels)`: `views` a list of
    `n_views` tensors `[B, 3, size, size]` (channels-last, `dtype`, on `device`, ImageNet-
    normalized), `labels` int64 `[B]`. `len()` is the steps per epoch, equal on every shard (the
    epoch is padded by wrap-around unless `drop_last`). Per view: random resized crop (`scale`,
    `ratio`), horizontal flip, then `policy` (one of POLICIES). Call `set_epoch(e)` before each
    epoch; `state_dict()`/`load_state_dict()` resume mid-epoch exactly (see loaders.py).
    `backend`: 'dali' (dali_loaders.py), 'torch' (torch_loaders.py: torchvision transforms in a
    torch DataLoader, the baseline), or 'auto' (DALI if it imports, else torch with a warning: e.g. a
    machine without DALI); 'torchvision' is an older name of 'torch'. The loader's `backend`
    attribute names the one built.

    Bad files: `verify` checks them before training: 'header' (8 bytes a file), 'full' (decodes
    everything: small sets only) or 'none'. A file that fails then or during an epoch (truncated,
    empty, not an image) raises a ValueError naming it, unless `skip_corrupt`: then it is named in
    a warning, left out from then on (the next image in file order takes its place: same steps,
    same batches for the same seed) and listed in the loader's `skipped` and `state_dict()`.
    `samples`: root's files as `load_samples(root, verify=..., skip_corrupt=...)` returned them, to
    share one scan between loaders of the same folder (the trainer's); None scans here.
    """
    from .dali_loaders import DaliTrainLoader, load_samples

    check_policy(policy)  # before the (possibly long) scan of root
    backend = _pick_backend(backend)
    if samples is None:
        samples = load_samples(root, verify=verify, skip_corrupt=skip_corrupt)
    if backend == "torch":
        from .torch_loaders import TorchTrainLoader

        return TorchTrainLoader(
            root, batch_size=batch_size, n_views=n_views, size=size, policy=policy,
            shard_id=shard_id, num_shards=num_shards, seed=seed, num_threads=num_threads,
            scale=scale, ratio=ratio, device=device, dtype=dtype, samples=samples,
            skip_corrupt=skip_corrupt)
    return DaliTrainLoader(
        samples, batch_size=batch_size, n_views=n_views, size=size, policy=policy, device=device,
        shard_id=shard_id, num_shards=num_shards, seed=seed, num_threads=num_threads,
        scale=scale, ratio=ratio, dtype=dtype, drop_last=drop_last, checkpointing=checkpointing,
        policy_kwargs=({"randaugment_n": randaugment_n, "randaugment_m": randaugment_m}
                       if policy == "randaugment" else None),
        prefetch_queue_depth=prefetch_queue_depth, skip_corrupt=skip_corrupt)


def build_eval_loader(root, *, batch_size, size=224, device="cpu", shard_id=0, num_shards=1,
                      num_threads=2, dtype=torch.float32, resize=None, skip_corrupt=False,
                      verify="header", backend="auto", drop_corrupt=False, max_images=0, samples=None):
    """Eval loader: resize the shorter side to `resize` (default size / 0.875), centre-crop
    `size`, normalize. Yields `(images [B, 3, size, size] channels-last, labels int64 [B])`.
    Shards are contiguous slices: across shards every image is seen exactly once per pass (no
    padding); the last batch of a shard may be smaller, and shards may differ by one step.

    The evaluation set must be complete: a file that cannot be read or decoded raises a
    ValueError naming it, and `skip_corrupt=True` is refused. `drop_corrupt=True` drops such
    files with a warning: only for features of a *training* split (a kNN bank, a linear probe's
    fit set, e.g. the trainer's under --skip-corrupt), never for the split a score is reported on.
    `max_images` > 0 reads at most that many images, evenly spread over the sorted list so that
    every class keeps its share (a kNN bank); 0 reads them all. `samples`: root's vetted files, as
    for build_train_loader (with skip_corrupt = drop_corrupt); None scans here.
    """
    from . import corrupt, folder
    from .dali_loaders import DaliEvalLoader, load_samples

    if skip_corrupt:
        raise ValueError("skip_corrupt: the eval loader does not skip files: the evaluation set "
                         "must be complete (a score over a subset is not comparable). Fix or "
                         "remove the bad files (`python tools/make_dataset.py check ROOT` lists "
                         "them); for a training split's features, drop_corrupt=True drops them")
    backend = _pick_backend(backend)
    if samples is None:
        samples = load_samples(root, verify=verify, skip_corrupt=drop_corrupt, error=corrupt.eval_error)
    samples = folder.spread_subset(samples, max_images)
    if backend == "torch":
        from .torch_loaders import TorchEvalLoader

        return TorchEvalLoader(root, batch_size=batch_size, size=size, device=device,
                                     shard_id=shard_id, num_shards=num_shards,
                                     num_threads=num_threads, dtype=dtype, resize=resize,
                                     samples=samples, drop_corrupt=drop_corrupt)
    return DaliEvalLoader(samples, batch_size=batch_size, size=size, device=device,
                          shard_id=shard_id, num_shards=num_shards, num_threads=num_threads,
                          dtype=dtype, resize=resize, drop_corrupt=drop_corrupt)


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _pick_backend(backend):
    """'dali' or 'torch', for a builder's `backend` ('auto' | 'dali' | 'torch'; 'torchvision' = 'torch')."""
    if backend == "torchvision":
        backend = "torch"
    if backend not in ("auto", "dali", "torch"):
        raise ValueError(f"backend: expected 'auto', 'dali' or 'torch', got {backend!r}")
    if backend == "torch":
        return backend
    if dali_available():
        return "dali"
    if backend == "dali":
        raise ImportError("backend: 'dali' requested but nvidia.dali does not import; "
                          "pip install nvidia-dali-cuda130, or use backend='auto'")
    warnings.warn("nvidia.dali is not installed: using the torch loader (torchvision transforms; slower; "
                  "same recipes, order and shards)")
    return "torch"
