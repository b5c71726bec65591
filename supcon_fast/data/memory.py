"""In-memory data sources with the DALI loaders' interface: small image folders and synthetic tensors.

Used for tests, for small datasets when the DALI pipeline is not available, and (``SyntheticLoader``)
by the step profiler, which needs input that costs nothing to produce.

Train loaders yield ``(views, labels)``: ``views`` a list of ``n_views`` float tensors [B, 3, size, size]
(channels-last, normalized), ``labels`` int64 [B]; ``len()`` is steps per epoch; ``set_epoch(e)``
reshuffles; ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly. Every batch's
randomness comes from a generator seeded by (seed, epoch, step, shard), so a resumed epoch replays
exactly the batches an uninterrupted one would have produced.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .folder import IMG_EXTENSIONS
from .recipe import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def load_folder(root: str, *, skip_corrupt: bool = False, evaluation: bool = False):
    """root/<class>/<image> -> (images uint8 [N, 3, H, W], labels int64 [N], class names, skipped).

    Images must share one size (this loader is for small uniform sets). A file PIL cannot decode
    raises a ValueError naming it, or with ``skip_corrupt`` is left out with a warning and listed in
    ``skipped`` ({path: reason}). ``evaluation``: the split is scored, so it must be complete.
    """
    from PIL import Image

    from . import corrupt
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data: image folder {root!r} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    imgs, labels, paths, skipped = [], [], [], {}
    for c, name in enumerate(classes):
        for fn in sorted(os.listdir(os.path.join(root, name))):
            if fn.lower().endswith(IMG_EXTENSIONS):
                path = os.path.join(root, name, fn)
                try:
                    with Image.open(path) as im:
                        imgs.append(np.asarray(im.convert("RGB")))
                except Exception as e:  # PIL raises many types for bad data
                    bad = {path: f"{type(e).__name__}: {e}"}
                    if evaluation or not skip_corrupt:
                        error = corrupt.eval_error if evaluation else corrupt.train_error
                        raise ValueError(error(bad, root)) from e
                    warnings.warn(f"skip_corrupt: leaving out {path!r} ({bad[path]})")
                    skipped.update(bad)
                    continue
                labels.append(c)
                paths.append(path)
    if not imgs:
        raise ValueError(f"data: no images under {root!r} (expected root/<class>/<image>)")
    sizes = {a.shape for a in imgs}
    if len(sizes) > 1:
        k = next(i for i, a in enumerate(imgs) if a.shape != imgs[0].shape)
        raise ValueError(f"data: the in-memory loader needs images of one size, but {root!r} has "
                         f"{len(sizes)} ({paths[0]!r} is {imgs[0].shape[:2]}, {paths[k]!r} is "
                         f"{imgs[k].shape[:2]}); use --backend auto (DALI or torch), which "
                         f"crops and resizes each image")
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), classes, skipped


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float [B, 3, H, W] -> normalized float, channels-last."""
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = (x - MEAN.to(x.device)) / STD.to(x.device)
    return x.contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, size: int, gen: torch.Generator, policy: str = "simclr",
            min_scale: float = 0.08) -> torch.Tensor:
    """Batched SimCLR-like augmentation in torch: random resized crop (scale min_scale-1, ratio 3/4-4/3),
    horizontal flip, brightness / contrast jitter and random grayscale. x uint8 [B, 3, H, W] -> float [B, 3, size, size]."""
    b = x.shape[0]
    r = torch.rand(b, 8, generator=gen)
    scale = min_scale + (1 - min_scale) * r[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[:, 1])
    w = torch.sqrt(scale * ratio).clamp(max=1.0)
    h = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * r[:, 2] - 1)
    cy = (1 - h) * (2 * r[:, 3] - 1)
    flip = torch.where(r[:, 4] < 0.5, -1.0, 1.0) if policy != "none" else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if policy != "none":
        bright = (0.6 + 0.8 * r[:, 5]).view(b, 1, 1, 1)
        contrast = (0.6 + 0.8 * r[:, 6]).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contrast + mean) * bright
        gray = out.mean(1, keepdim=True).expand_as(out)
        out = torch.where((r[:, 7] < 0.2).view(b, 1, 1, 1), gray, out).clamp(0, 1)
    return out


class _EpochPosition:
    """The epoch and the batch the next iteration starts at: what both in-memory train loaders resume by."""

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:       # a pending resume position is for its own epoch only
            self._start = 0
        self.epoch = epoch

    def skip_batches(self, k: int) -> None:
        """Begin the current epoch at batch ``k`` (mid-epoch resume)."""
        self._start = k


class TensorTrainLoader(_EpochPosition):
    """Augmented multi-view batches from in-memory images, sharded like DistributedSampler (drop_last).

    Global batch g of an epoch is ``perm[g*B*S : (g+1)*B*S]``; shard ``r`` gets its ``r``-th slice of
    ``B`` (``B`` = per-shard batch), so the shards of one step together are the single-process batch.
    """

    backend = "memory"   # what the run summary reports as its data backend

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, n_views: int = 2,
                 size: int = 32, policy: str = "simclr", device="cpu", shard_id: int = 0, num_shards: int = 1,
                 seed: int = 0, min_scale: float = 0.08):
        self.images, self.labels, self.min_scale = images, labels, min_scale
        self.batch_size, self.n_views, self.size, self.policy = batch_size, n_views, size, policy
        self.device, self.shard_id, self.num_shards, self.seed = torch.device(device), shard_id, num_shards, seed
        self.num_classes, self.num_samples = int(labels.max()) + 1, len(labels)
        self.epoch, self._start, self._step = 0, 0, 0
        if len(self) == 0:
            raise ValueError(f"batch_size: global batch {batch_size * num_shards} exceeds the "
                             f"{len(labels)} training images")

    def __len__(self) -> int:
        return len(self.labels) // (self.batch_size * self.num_shards)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self._step, "seed": self.seed, "num_shards": self.num_shards}

    def load_state_dict(self, sd: dict) -> None:
        if sd["seed"] != self.seed or sd["num_shards"] != self.num_shards:
            raise ValueError("state_dict: seed / num_shards differ from this loader's; cannot resume the same sequence")
        self.epoch, self._start = int(sd["epoch"]), int(sd["step"])

    def __iter__(self):
        perm = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch))
        gb = self.batch_size * self.num_shards
        start, self._start = self._start, 0
        for step in range(start, len(self)):
            self._step = step + 1
            idx = perm[step * gb + self.shard_id * self.batch_size:][: self.batch_size]
            gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, step, self.shard_id)) & (2**62 - 1))
            x = self.images[idx]
            views = [_normalize(augment(x, self.size, gen, self.policy, self.min_scale)).to(self.device, non_blocking=True)
                     for _ in range(self.n_views)]
            yield views, self.labels[idx].to(self.device, non_blocking=True)


class TensorEvalLoader:
    """Un-augmented batches (resize to ``size``) of one shard, every sample once (no drop_last)."""

    backend = "memory"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, size: int = 32,
                 device="cpu", shard_id: int = 0, num_shards: int = 1):
        self.images, self.labels, self.batch_size, self.size = images, labels, batch_size, size
        self.device = torch.device(device)
        self.index = torch.arange(shard_id, len(labels), num_shards)
        self.num_classes, self.num_samples = int(labels.max()) + 1, len(labels)   # all shards

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.index), self.batch_size):
            idx = self.index[i: i + self.batch_size]
            x = self.images[idx].float() / 255
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            yield _normalize(x).to(self.device), self.labels[idx].to(self.device)


class SyntheticLoader(_EpochPosition):
    """Random on-device batches (generated once, replayed): input that costs nothing, for profiling."""

    backend = "synthetic"

    def __init__(self, *, batch_size: int, n_views: int = 2, size: int = 224, num_classes: int = 1000,
                 steps: int = 100, device="cpu", seed: int = 0, channels_last: bool = True):
        g = torch.Generator().manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.views = [torch.randn(batch_size, 3, size, size, generator=g).to(device, memory_format=fmt)
                      for _ in range(n_views)]
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
        self.steps, self.num_classes = steps, num_classes
        self.epoch, self._start, self._step = 0, 0, 0

    def __len__(self) -> int:
        return self.steps

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self._step}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self._start = int(sd["epoch"]), int(sd["step"])

    def __iter__(self):
        start, self._start = self._start, 0
        for step in range(start, self.steps):
            self._step = step + 1
            yield self.views, self.labels
