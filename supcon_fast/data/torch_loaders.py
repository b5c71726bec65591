"""The same recipes with torchvision `transforms.v2` and a `DataLoader`: the baseline that
`tools/bench_data.py` measures DALI against. For side-by-side throughput only; training uses DALI.

It reads the same sample list in the same per-epoch order (folder.train_shard_indices), decodes
each image once and draws `n_views` independent views from it, like the DALI pipeline. Decoding
and transforms run in `num_threads` DataLoader worker processes (the usual way to parallelize
torchvision), on uint8 tensors (`decoder='tensor'`, decode with torchvision.io / libjpeg-turbo)
or PIL images (`decoder='pil'`, as the popular SupCon reference code does).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import corrupt, folder
from .recipe import (BLUR_P, BLUR_SIGMA, GRAY_P, IMAGENET_MEAN, IMAGENET_STD, JITTER,
                     RANDAUGMENT_M, RANDAUGMENT_N, WARP_MAX_ROT_DEG, WARP_MAX_SHEAR, WARP_P,
                     WARP_SCALE, blur_window, check_policy)


def view_transform(policy, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """One view: random resized crop, flip, `policy`, then float + ImageNet normalization."""
    from torchvision.transforms import v2

    check_policy(policy)
    t = [v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True),
         v2.RandomHorizontalFlip()]
    j = JITTER
    color = [v2.RandomApply([v2.ColorJitter(j["brightness"], j["contrast"], j["saturation"],
                                            j["hue"])], p=j["p"]),
             v2.RandomGrayscale(p=GRAY_P),
             v2.RandomApply([v2.GaussianBlur(blur_window(size), sigma=BLUR_SIGMA)], p=BLUR_P)]
    if policy == "simclr":
        t += color
    elif policy == "simaugment":
        shear = math.degrees(math.atan(WARP_MAX_SHEAR))
        t += color + [v2.RandomApply([v2.RandomAffine(
            degrees=WARP_MAX_ROT_DEG, shear=(-shear, shear, -shear, shear), scale=WARP_SCALE,
            fill=128)], p=WARP_P)]
    elif policy == "randaugment":
        t += [v2.RandAugment(num_ops=RANDAUGMENT_N, magnitude=RANDAUGMENT_M, fill=128)]
    elif policy == "autoaugment":
        t += [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=128)]
    t += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
          v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    return v2.Compose(t)


class MultiViewDataset(Dataset):
    """Item i: (n_views views, label, {path: reason} of the files that failed on the way).

    A file that fails to read or decode raises a ValueError naming it (`error(bad, root)`); with
    on_bad='replace' the next image in file order that decodes takes its place (the rule of
    corrupt.Exclusions, applied here because the workers do not see the loader's list); with
    'drop' the views are None.
    """

    def __init__(self, samples, transform, n_views, decoder="tensor", on_bad="raise",
                 error=corrupt.train_error):
        if decoder not in ("tensor", "pil"):
            raise ValueError(f"decoder: expected 'tensor' or 'pil', got {decoder!r}")
        self.samples, self.transform = samples, transform
        self.n_views, self.decoder, self.on_bad, self.error = n_views, decoder, on_bad, error

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        bad = {}
        for _ in range(len(self.samples)):
            path = self.samples.paths[i]
            try:
                img = self._decode(path)
                break
            except Exception as e:  # the decoders raise RuntimeError, OSError, PIL's own types
                bad[path] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                if self.on_bad == "raise":
                    raise ValueError(self.error(bad, self.samples.root)) from e
                if self.on_bad == "drop":
                    return None, int(self.samples.labels[i]), bad
                i = (i + 1) % len(self.samples)
        else:
            raise ValueError(f"root: every image under {self.samples.root!r} failed to decode")
        # decoded once; each view is an independent draw of the random transform
        return ([self.transform(img) for _ in range(self.n_views)], int(self.samples.labels[i]),
                bad)

    def _decode(self, path):
        if self.decoder == "pil":
            from PIL import Image

            with Image.open(path) as im:
                img = im.convert("RGB")
        else:
            from torchvision.io import ImageReadMode, decode_image, read_file

            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its decoders for TorchCodec; libjpeg-turbo still
                # does the work and it is the faster of the two baselines here.
                warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities")
                img = decode_image(read_file(path), mode=ImageReadMode.RGB)
        return img


class EpochShardSampler(Sampler):
    """Same order, sharding and padding as the DALI loader (folder.train_shard_indices),
    optionally starting `start` batches into the epoch (resume)."""

    def __init__(self, n, *, batch_size, shard_id, num_shards, seed, exclusions=None):
        self.n, self.batch_size, self.shard_id, self.num_shards, self.seed = (
            n, batch_size, shard_id, num_shards, seed)
        self.epoch, self.start, self.exclusions = 0, 0, exclusions

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        idx = folder.train_shard_indices(
            self.n, batch_size=self.batch_size, shard_id=self.shard_id,
            num_shards=self.num_shards, seed=self.seed, epoch=self.epoch)
        if self.exclusions is not None:
            idx = self.exclusions.apply(idx)
        return iter(idx[self.start * self.batch_size:].tolist())

    def __len__(self):
        return (folder.train_steps(self.n, batch_size=self.batch_size,
                                   num_shards=self.num_shards) - self.start) * self.batch_size


def _collate(batch):
    views = [torch.stack([b[0][v] for b in batch]).contiguous(memory_format=torch.channels_last)
             for v in range(len(batch[0][0]))]
    return (views, torch.as_tensor(np.array([b[1] for b in batch], dtype=np.int64)),
            {p: r for b in batch for p, r in b[2].items()})


def _one_thread(_):
    # The workers' torch ops must not spawn their own thread pools: `num_threads` processes are
    # the whole CPU budget, as DALI's `num_threads` is.
    torch.set_num_threads(1)


def _data_loader(ds, *, batch_size, sampler, num_threads, collate_fn, prefetch_factor=2,
                 generator=None):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_threads,
                      collate_fn=collate_fn, persistent_workers=num_threads > 0,
                      prefetch_factor=prefetch_factor if num_threads > 0 else None,
                      worker_init_fn=_one_thread, generator=generator)


class TorchTrainLoader:
    """DataLoader with the DALI loader's surface (len, set_epoch, state_dict, num_classes, ...).

    Also the fallback where DALI is not installed (`backend="auto"`). The order of batches and
    resume position are the same as the DALI loader's; the augmentation draws are torch's, seeded
    per epoch through the DataLoader generator, but not bit-identical after a resume (skipping
    batches shifts which worker draws what). `skip_corrupt` as in the DALI loader: same
    replacement rule, so the same images in every batch; the list is in `state_dict()`.
    """

    backend = "torch"

    def __init__(self, root, *, batch_size, n_views=2, size=224, policy="simclr", shard_id=0,
                 num_shards=1, seed=0, num_threads=2, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 device="cpu", dtype=torch.float32, decoder="tensor", prefetch_factor=2,
                 samples=None, skip_corrupt=False):
        folder.check_shard_args(shard_id, num_shards)
        self.samples = samples if samples is not None else folder.scan(root)
        self.skip_corrupt = bool(skip_corrupt)
        self.exclusions = corrupt.Exclusions(self.samples, self.samples.root)
        self.batch_size, self.seed, self.shard_id, self.num_shards = (
            batch_size, int(seed), shard_id, num_shards)
        self.device, self.dtype = torch.device(device), dtype
        self.sampler = EpochShardSampler(len(self.samples), batch_size=batch_size,
                                         shard_id=shard_id, num_shards=num_shards, seed=seed,
                                         exclusions=self.exclusions)
        self.generator = torch.Generator()
        ds = MultiViewDataset(self.samples, view_transform(policy, size, scale, ratio), n_views,
                              decoder, on_bad="replace" if skip_corrupt else "raise")
        self.loader = _data_loader(ds, batch_size=batch_size, sampler=self.sampler,
                                   num_threads=num_threads, collate_fn=_collate,
                                   prefetch_factor=prefetch_factor, generator=self.generator)
        self.steps = folder.train_steps(len(self.samples), batch_size=batch_size,
                                        num_shards=num_shards)
        self.num_classes = self.samples.num_classes
        self.num_samples = len(self.samples)
        self._step = 0

    @property
    def epoch(self):
        return self.sampler.epoch

    @property
    def skipped(self):
        """{path: reason} of every file left out: before training (bad header) and during it."""
        return {**self.samples.skipped, **self.exclusions.reasons}

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch):
        if int(epoch) != self.sampler.epoch:
            self.sampler.start = 0
        self.sampler.set_epoch(epoch)

    def skip_batches(self, k):
        if not 0 <= k <= self.steps:
            raise ValueError(f"k: must be in [0, {self.steps}], got {k}")
        self.sampler.start = int(k)

    def state_dict(self):
        return {"epoch": self.epoch, "step": self._step, "seed": self.seed,
                "shard_id": self.shard_id, "num_shards": self.num_shards,
                "batch_size": self.batch_size, "num_samples": self.num_samples, "dali": None,
                "excluded": self.exclusions.state()}

    def load_state_dict(self, sd):
        for key in ("seed", "num_shards", "batch_size", "num_samples"):  # any rank's state
            if key in sd and sd[key] != getattr(self, key):
                raise ValueError(f"state_dict: {key}={sd[key]} does not match this loader's "
                                 f"{key}={getattr(self, key)}; cannot resume the same sequence")
        if self.skip_corrupt:
            self.exclusions.load(sd.get("excluded"))
        self.sampler.set_epoch(sd["epoch"])
        self.sampler.start = self._step = int(sd.get("step", 0))

    def __iter__(self):
        start = self._step = self.sampler.start
        if start >= self.steps:
            self.sampler.start = 0
            return
        self.generator.manual_seed(int(np.random.SeedSequence(
            [self.seed, self.epoch, self.shard_id]).generate_state(1)[0]))
        try:
            for views, labels, bad in self.loader:
                if bad:  # found (and replaced) in a worker: left out from the next epoch on
                    self.exclusions.add(bad)
                self._step += 1
                yield ([v.to(self.device, self.dtype, non_blocking=True) for v in views],
                       labels.to(self.device, non_blocking=True))
        finally:
            # Reset only now: the DataLoader reads the sampler lazily, at its first batch.
            self.sampler.start = 0


class EvalDataset(Dataset):
    def __init__(self, samples, indices, size, resize, decoder="tensor", drop_corrupt=False):
        from torchvision.transforms import v2

        self.base = MultiViewDataset(samples, v2.Compose([
            v2.Resize(resize, antialias=True), v2.CenterCrop(size), v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]), 1, decoder,
            on_bad="drop" if drop_corrupt else "raise", error=corrupt.eval_error)
        self.indices = indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        views, y, bad = self.base[int(self.indices[i])]
        return (views[0] if views else None), y, bad


def _collate_eval(batch):
    """-> (images, labels, {path: reason}) of the items kept; (None, None, bad) if none is."""
    bad = {p: r for b in batch for p, r in b[2].items()}
    batch = [b for b in batch if b[0] is not None]
    if not batch:
        return None, None, bad
    return (torch.stack([b[0] for b in batch]).contiguous(memory_format=torch.channels_last),
            torch.as_tensor(np.array([b[1] for b in batch], dtype=np.int64)), bad)


class TorchEvalLoader:
    """Eval counterpart (the DALI-less fallback): same shards and transforms as DaliEvalLoader,
    and the same handling of bad files (raise; `drop_corrupt` for a training split's features)."""

    backend = "torch"

    def __init__(self, root, *, batch_size, size=224, device="cpu", shard_id=0, num_shards=1,
                 num_threads=2, dtype=torch.float32, resize=None, samples=None,
                 drop_corrupt=False):
        folder.check_shard_args(shard_id, num_shards)
        self.samples = samples if samples is not None else folder.scan(root)
        self.exclusions = corrupt.Exclusions(self.samples, self.samples.root,
                                             note=corrupt.DROP_NOTE)
        self.device, self.dtype = torch.device(device), dtype
        idx = folder.eval_shard_indices(len(self.samples), shard_id=shard_id,
                                        num_shards=num_shards)
        resize = resize if resize is not None else int(round(size / 0.875))
        self.loader = _data_loader(EvalDataset(self.samples, idx, size, resize,
                                               drop_corrupt=drop_corrupt),
                                   batch_size=batch_size, sampler=None, num_threads=num_threads,
                                   collate_fn=_collate_eval)
        self.num_classes, self.num_samples = self.samples.num_classes, len(self.samples)

    @property
    def skipped(self):
        return {**self.samples.skipped, **self.exclusions.reasons}

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y, bad in self.loader:
            if bad:
                self.exclusions.add(bad)
            if x is not None:
                yield x.to(self.device, self.dtype, non_blocking=True), y.to(self.device)
