"""Train and eval loaders: turn a scanned folder into DALI pipelines and torch batches.

Determinism and resume (what the trainer can rely on):

* The order of epoch `e` is `folder.epoch_permutation(N, seed, e)`, sharded and padded by
  `folder.train_shard_indices`; the DALI pipeline of epoch `e` is built fresh with a seed derived
  from (seed, e, shard_id). So the same (seed, epoch, shard) always gives the same batches, whatever
  ran before, and another seed gives other ones.
* `state_dict()` mid-epoch returns {epoch, step, ...} plus DALI's own checkpoint of the pipeline
  (operator RNG states and the source position, taken at the batch the consumer will get next).
  `load_state_dict()` rebuilds the pipeline from it, so the rest of the epoch is bit-identical to
  an uninterrupted run, at no replay cost. Without the DALI checkpoint (or with
  `skip_batches(k)`), the first k batches are replayed and discarded: also exact, but costs k steps.
* DALI's checkpoint is per rank (each shard has its own pipeline). A state saved by another rank
  is accepted: (epoch, step) are shared, and this rank replays its first `step` batches.
"""
from __future__ import annotations

import collections
import contextlib
import warnings

import numpy as np
import torch

from . import folder
from .recipe import check_policy

_RECENT = 8  # batches whose paths we remember, to name the culprit when DALI fails to decode


class FileSource:
    """`fn.external_source` callback: batch `i` of the current epoch -> (encoded bytes, labels)."""

    def __init__(self, samples, indices, batch_size):
        self.paths = samples.paths
        self.labels = samples.labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.steps = -(-len(self.indices) // batch_size)
        self.recent = collections.deque(maxlen=_RECENT)

    def batch_indices(self, i):
        return self.indices[i * self.batch_size:(i + 1) * self.batch_size]

    def __call__(self, info):
        i = info.iteration
        if i >= self.steps:
            raise StopIteration  # end of epoch; the loader never asks for more than `steps`
        idx = self.batch_indices(i)
        paths = [self.paths[k] for k in idx]
        self.recent.append(paths)
        data = []
        for p in paths:
            try:
                buf = np.fromfile(p, dtype=np.uint8)
            except OSError as e:
                raise OSError(f"cannot read image {p!r}: {e}") from None
            if not folder.has_image_magic(buf):
                raise ValueError(_corrupt_message([p]))
            data.append(buf)
        return data, [np.asarray(self.labels[k], dtype=np.int64) for k in idx]


def _corrupt_message(paths):
    return (f"corrupt or unreadable image(s): {', '.join(map(repr, paths[:10]))}"
            f"{' ...' if len(paths) > 10 else ''}. Find them all with "
            f"`python tools/make_dataset.py check ROOT`; remove them, or pass skip_corrupt=True "
            f"(with verify='full' to catch files whose header is intact)")


def find_undecodable(paths):
    """Paths that PIL cannot fully decode (used to name files after a DALI decode error)."""
    from PIL import Image

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception:  # PIL raises many types for bad data
            bad.append(p)
    return bad


def load_samples(root, *, verify="header", skip_corrupt=False):
    """Scan `root` and vet the files before any pipeline runs. `verify`: 'header' (8 bytes per
    file: cheap enough for ImageNet), 'full' (PIL decodes everything: small sets only), 'none'."""
    samples = folder.scan(root)
    if verify not in ("header", "full", "none"):
        raise ValueError(f"verify: expected 'header', 'full' or 'none', got {verify!r}")
    if verify == "none":
        return samples
    bad = folder.find_bad_headers(samples.paths)
    if verify == "full":
        bad_set = set(bad)
        bad += find_undecodable([p for p in samples.paths if p not in bad_set])
    if not bad:
        return samples
    if not skip_corrupt:
        raise ValueError(_corrupt_message(sorted(bad)))
    warnings.warn(f"skipping {len(bad)} corrupt image(s) under {root!r}: {sorted(bad)[:5]}")
    bad = set(bad)
    keep = [i for i, p in enumerate(samples.paths) if p not in bad]
    return folder.Samples([samples.paths[i] for i in keep], samples.labels[keep], samples.classes)


def parse_device(device):
    """-> (torch.device, DALI device 'cpu'|'gpu', DALI device_id or None)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, "cpu", None
    if dev.type != "cuda":
        raise ValueError(f"device: expected 'cpu' or 'cuda[:N]', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but no CUDA device is visible")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return torch.device("cuda", index), "gpu", index


def dali_dtype(dtype):
    """DALI output dtype for a requested torch dtype; bf16 is produced as fp32 and cast by torch
    (DALI 2.4 has no bfloat16)."""
    from nvidia.dali import types

    table = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16,
             torch.bfloat16: types.FLOAT}
    if dtype not in table:
        raise ValueError(f"dtype: expected torch.float32, float16 or bfloat16, got {dtype!r}")
    return table[dtype]


@contextlib.contextmanager
def _quiet_dali():
    """Drop the deprecation notices DALI's own auto_aug module triggers (it still calls the
    `fn.experimental` aliases of equalize/filter) once per op per pipeline build. DALI forces
    `simplefilter("default")` around them, so a warnings filter cannot hide them; intercepting
    `showwarning` for the duration of the build can. Other warnings pass through."""
    show = warnings.showwarning

    def filtered(message, category, *args, **kwargs):
        if "moved out from the experimental phase" not in str(message):
            show(message, category, *args, **kwargs)

    warnings.showwarning = filtered
    try:
        yield
    finally:
        warnings.showwarning = show


def _to_torch(tl, dtype, device):
    """DALI TensorList [B, H, W, C] -> torch [B, C, H, W] channels-last (a permuted view, no
    copy)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = tl.as_tensor()
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(tensor, out, cuda_stream=stream)
    if out.dim() == 4:
        out = out.permute(0, 3, 1, 2)
        if out.dtype != dtype:
            out = out.to(dtype)  # keeps the channels-last strides (preserve_format)
    return out


class _DaliLoaderBase:
    def __init__(self, samples, *, batch_size, device, num_threads, dtype):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads: must be a positive int, got {num_threads!r}")
        self.samples = samples
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.dtype = dtype
        self._dali_dtype = dali_dtype(dtype)
        self.device, self._dali_device, self._device_id = parse_device(device)

    @property
    def num_classes(self):
        return self.samples.num_classes

    @property
    def classes(self):
        return self.samples.classes

    @property
    def num_samples(self):
        """Images in the whole dataset (all shards, no padding)."""
        return len(self.samples)

    def _run(self, pipe, source):
        try:
            return pipe.run()
        except StopIteration:
            raise
        except Exception as e:
            # DALI's decode error does not know our file names; find the culprit(s) among the
            # batches in flight and name them.
            bad = find_undecodable(sorted({p for b in source.recent for p in b}))
            if bad:
                raise ValueError(_corrupt_message(bad)) from e
            raise

    def _convert(self, outputs):
        labels = _to_torch(outputs[-1], torch.int64, torch.device("cpu")).reshape(-1)
        labels = labels.to(self.device, non_blocking=True)
        return [_to_torch(o, self.dtype, self.device) for o in outputs[:-1]], labels


class DaliTrainLoader(_DaliLoaderBase):
    """Multi-view SupCon train loader; see `build_train_loader` and the module docstring."""

    def __init__(self, samples, *, batch_size, n_views, size, policy, device, shard_id,
                 num_shards, seed, num_threads, scale, ratio, dtype, drop_last=False,
                 checkpointing=True, policy_kwargs=None, prefetch_queue_depth=2):
        check_policy(policy)
        folder.check_shard_args(shard_id, num_shards)
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views: must be a positive int, got {n_views!r}")
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"size: must be an int >= 8, got {size!r}")
        super().__init__(samples, batch_size=batch_size, device=device,
                         num_threads=num_threads, dtype=dtype)
        self.n_views, self.size, self.policy = n_views, size, policy
        self.shard_id, self.num_shards, self.seed = shard_id, num_shards, int(seed)
        self.scale, self.ratio, self.drop_last = tuple(scale), tuple(ratio), drop_last
        self.checkpointing = checkpointing
        self.policy_kwargs = policy_kwargs or {}
        self.prefetch_queue_depth = prefetch_queue_depth
        self.steps = folder.train_steps(len(samples), batch_size=batch_size,
                                        num_shards=num_shards, drop_last=drop_last)
        self.epoch = 0
        self._step = 0            # batches yielded so far in self.epoch
        self._pipe = None
        self._resume = None       # (step, dali checkpoint or None) for the next __iter__

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch):
        """Select the epoch the next iteration runs (reshuffled from `seed`). A pending resume
        from `load_state_dict` is kept only if it is for this same epoch."""
        epoch = int(epoch)
        if self._resume is not None and epoch != self.epoch:
            self._resume = None
        self.epoch = epoch

    def epoch_indices(self, epoch=None):
        """Sample indices this shard reads in `epoch`, in order (len = steps * batch_size)."""
        return folder.train_shard_indices(
            len(self.samples), batch_size=self.batch_size, shard_id=self.shard_id,
            num_shards=self.num_shards, seed=self.seed,
            epoch=self.epoch if epoch is None else epoch, drop_last=self.drop_last)

    def pipeline_seed(self, epoch):
        ss = np.random.SeedSequence([self.seed, int(epoch), self.shard_id])
        return int(ss.generate_state(1)[0] & 0x7FFFFFFF)

    def _build(self, checkpoint=None):
        from .pipelines import build_train_pipeline

        source = FileSource(self.samples, self.epoch_indices(), self.batch_size)
        with _quiet_dali():
            pipe = build_train_pipeline(
                source, batch_size=self.batch_size, n_views=self.n_views, size=self.size,
                policy=self.policy, device=self._dali_device, device_id=self._device_id,
                seed=self.pipeline_seed(self.epoch), num_threads=self.num_threads,
                scale=self.scale, ratio=self.ratio, dali_dtype=self._dali_dtype,
                checkpointing=self.checkpointing, prefetch_queue_depth=self.prefetch_queue_depth,
                policy_kwargs=self.policy_kwargs, checkpoint=checkpoint)
            pipe.build()
        return pipe, source

    def __iter__(self):
        start, checkpoint = self._resume or (0, None)
        self._resume = None
        if start >= self.steps:  # resumed at the very end of an epoch: nothing left, no replay
            self._step = self.steps
            return
        pipe, source = self._build(checkpoint if self.checkpointing else None)
        self._pipe, self._step = pipe, start
        try:
            if checkpoint is None or not self.checkpointing:
                for _ in range(start):  # replay to restore operator RNG states exactly
                    self._run(pipe, source)
            for step in range(start, self.steps):
                outputs = self._run(pipe, source)
                self._step = step + 1
                yield self._convert(outputs)
        finally:
            self._pipe = None  # frees the pipeline's threads and buffers between epochs

    def skip_batches(self, k):
        """Make the next iteration start at batch `k` of the current epoch, exactly as if the
        first k had been consumed (by replaying them: costs k pipeline steps)."""
        if not 0 <= k <= self.steps:
            raise ValueError(f"k: must be in [0, {self.steps}], got {k}")
        self._resume = (int(k), None)

    def state_dict(self):
        sd = {"epoch": self.epoch, "step": self._step, "seed": self.seed,
              "shard_id": self.shard_id, "num_shards": self.num_shards,
              "batch_size": self.batch_size, "num_samples": self.num_samples, "dali": None}
        if self._pipe is not None and self.checkpointing and 0 < self._step < self.steps:
            sd["dali"] = self._pipe.checkpoint()
        return sd

    def load_state_dict(self, sd):
        """Resume at (epoch, step). The order depends on seed, shard count, batch size and
        dataset size, so a mismatch raises instead of silently resuming a different sequence.
        A state saved by another rank (a trainer that saves rank 0's state only) is accepted:
        (epoch, step) are the same on every rank, but DALI's checkpoint belongs to the rank that
        saved it, so this rank replays its first `step` batches instead (exact, costs k steps)."""
        for key in ("seed", "num_shards", "batch_size", "num_samples"):
            if key in sd and sd[key] != getattr(self, key):
                raise ValueError(f"state_dict: {key}={sd[key]} does not match this loader's "
                                 f"{key}={getattr(self, key)}; cannot resume the same sequence")
        self.epoch = int(sd["epoch"])
        step = int(sd.get("step", 0))
        dali = sd.get("dali") if sd.get("shard_id", self.shard_id) == self.shard_id else None
        self._resume = (step, dali) if step else None
        self._step = step


class DaliEvalLoader(_DaliLoaderBase):
    """Single-view eval loader: every image of this shard exactly once, last batch partial."""

    def __init__(self, samples, *, batch_size, size, device, shard_id, num_shards, num_threads,
                 dtype=torch.float32, resize=None):
        folder.check_shard_args(shard_id, num_shards)
        super().__init__(samples, batch_size=batch_size, device=device,
                         num_threads=num_threads, dtype=dtype)
        self.size = size
        # The usual 224/256 ratio: resize the shorter side to size / 0.875, then centre-crop.
        self.resize = resize if resize is not None else int(round(size / 0.875))
        self.shard_id, self.num_shards = shard_id, num_shards
        self.indices = folder.eval_shard_indices(len(samples), shard_id=shard_id,
                                                 num_shards=num_shards)

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        if len(self.indices) == 0:
            return
        from .pipelines import build_eval_pipeline

        source = FileSource(self.samples, self.indices, self.batch_size)
        pipe = build_eval_pipeline(
            source, batch_size=self.batch_size, size=self.size, resize=self.resize,
            device=self._dali_device, device_id=self._device_id, num_threads=self.num_threads,
            dali_dtype=self._dali_dtype)
        pipe.build()
        for _ in range(len(self)):
            (images,), labels = self._convert(self._run(pipe, source))
            yield images, labels
