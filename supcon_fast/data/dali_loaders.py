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

Files that fail during an epoch (DALI cannot decode them, or they cannot be read): DALI names no
file and leaves the pipeline unusable, so the loader checks the files of the batches in flight with
PIL (`corrupt.undecodable`) and names them in a ValueError; with `skip_corrupt` it adds them to its
exclusion list (`corrupt.Exclusions`, which also says what replaces them) and rebuilds the pipeline
from the DALI checkpoint taken before the failed batch, so that batch is redone with the same
augmentation draws and the epoch goes on. The list is in `state_dict()`.
"""
from __future__ import annotations

import collections
import contextlib
import warnings

import numpy as np
import torch

from . import corrupt, folder
from .recipe import check_policy

_RECENT = 8  # batches whose paths we remember, to name the culprit when DALI fails to decode


class BadFile(Exception):
    """Raised by FileSource (through DALI) for a file without an image header or unreadable."""


class _Rebuild(Exception):
    """The run failed on files now left out: rebuild the pipeline and redo the batch."""


class FileSource:
    """`fn.external_source` callback: batch `i` of the current epoch -> (encoded bytes, labels).

    A file that cannot be read or has no image header is recorded in `bad` and fails the pipeline
    run (BadFile); the loader then names it, or leaves it out (see _DaliLoaderBase._run).
    """

    def __init__(self, samples, indices, batch_size):
        self.paths = samples.paths
        self.labels = samples.labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.steps = -(-len(self.indices) // batch_size)
        self.recent = collections.deque(maxlen=_RECENT)  # (iteration, paths) of batches fed
        self.bad = {}

    def batch_indices(self, i):
        return self.indices[i * self.batch_size:(i + 1) * self.batch_size]

    def in_flight(self, i):
        """Paths of the batches fed to DALI from iteration `i` on (the suspects of a failure)."""
        return [p for it, paths in self.recent if it >= i for p in paths]

    def __call__(self, info):
        i = info.iteration
        if i >= self.steps:
            raise StopIteration  # end of epoch; the loader never asks for more than `steps`
        idx = self.batch_indices(i)
        paths = [self.paths[k] for k in idx]
        self.recent.append((i, paths))
        data = []
        for p in paths:
            try:
                buf = np.fromfile(p, dtype=np.uint8)
            except OSError as e:
                self.bad[p] = f"{type(e).__name__}: {e.strerror or e}"
                continue
            reason = folder.header_error(buf)
            if reason is not None:
                self.bad[p] = reason
            data.append(buf)
        if self.bad:
            raise BadFile(corrupt.name_files(self.bad))
        return data, [np.asarray(self.labels[k], dtype=np.int64) for k in idx]


def load_samples(root, *, verify="header", skip_corrupt=False, error=corrupt.train_error):
    """Scan `root` and vet the files before any pipeline runs. `verify`: 'header' (8 bytes per
    file: cheap enough for ImageNet), 'full' (PIL decodes everything: small sets only), 'none'.
    Bad files raise ValueError(error(bad, root)), or are left out (in `Samples.skipped`)."""
    samples = folder.scan(root)
    if verify not in ("header", "full", "none"):
        raise ValueError(f"verify: expected 'header', 'full' or 'none', got {verify!r}")
    if verify == "none":
        return samples
    bad = folder.find_bad_headers(samples.paths)
    if verify == "full":
        bad.update(corrupt.undecodable([p for p in samples.paths if p not in bad]))
    if not bad:
        return samples
    bad = {p: bad[p] for p in samples.paths if p in bad}  # file order
    if not skip_corrupt:
        raise ValueError(error(bad, samples.root))
    warnings.warn(f"leaving out {len(bad)} image(s) under {root!r} that cannot be read or "
                  f"decoded: {corrupt.name_files(bad)}")
    keep = [i for i, p in enumerate(samples.paths) if p not in bad]
    if not keep:
        raise ValueError(f"root: every image under {root!r} failed to read or decode")
    return folder.Samples([samples.paths[i] for i in keep], samples.labels[keep], samples.classes,
                          samples.root, bad)


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
    backend = "dali"   # what a run reports as its data backend (the torch loaders: "torch")
    _error = staticmethod(corrupt.train_error)
    _exclusion_note = {}

    def __init__(self, samples, *, batch_size, device, num_threads, dtype, skip_corrupt):
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
        self.skip_corrupt = bool(skip_corrupt)
        # filled only when skipping
        self.exclusions = corrupt.Exclusions(samples, samples.root, **self._exclusion_note)

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

    @property
    def skipped(self):
        """{path: reason} of every file left out: before training (bad header) and during it."""
        return {**self.samples.skipped, **self.exclusions.reasons}

    def _run(self, pipe, source, pos):
        """`pipe.run()` for batch `pos`. A failure is pinned on the files of the batches in flight
        (those the callback rejected, and those PIL cannot decode): a ValueError names them, or,
        when skipping, they join the exclusion list and _Rebuild asks the caller to redo `pos`."""
        try:
            return pipe.run()
        except StopIteration:
            raise
        except Exception as e:
            suspects = source.in_flight(pos)
            bad = dict(source.bad)
            bad.update(corrupt.undecodable([p for p in suspects if p not in bad]))
            if not bad:
                raise RuntimeError(corrupt.unattributed_error(suspects, str(e))) from e
            if not self.skip_corrupt:
                raise ValueError(self._error(bad, self.samples.root)) from e
            if not self.exclusions.add(bad):  # nothing new to leave out: redoing would fail again
                raise RuntimeError(f"the pipeline failed again after leaving out "
                                   f"{corrupt.name_files(bad)}") from e
            raise _Rebuild from e

    def _convert(self, outputs):
        labels = _to_torch(outputs[-1], torch.int64, torch.device("cpu")).reshape(-1)
        labels = labels.to(self.device, non_blocking=True)
        return [_to_torch(o, self.dtype, self.device) for o in outputs[:-1]], labels


class DaliTrainLoader(_DaliLoaderBase):
    """Multi-view SupCon train loader; see `build_train_loader` and the module docstring."""

    def __init__(self, samples, *, batch_size, n_views, size, policy, device, shard_id,
                 num_shards, seed, num_threads, scale, ratio, dtype, drop_last=False,
                 checkpointing=True, policy_kwargs=None, prefetch_queue_depth=2,
                 skip_corrupt=False):
        check_policy(policy)
        folder.check_shard_args(shard_id, num_shards)
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views: must be a positive int, got {n_views!r}")
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"size: must be an int >= 8, got {size!r}")
        super().__init__(samples, batch_size=batch_size, device=device,
                         num_threads=num_threads, dtype=dtype, skip_corrupt=skip_corrupt)
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

        source = FileSource(self.samples, self.exclusions.apply(self.epoch_indices()),
                            self.batch_size)
        with _quiet_dali():
            pipe = build_train_pipeline(
                source, batch_size=self.batch_size, n_views=self.n_views, size=self.size,
                policy=self.policy, device=self._dali_device, device_id=self._device_id,
                seed=self.pipeline_seed(self.epoch), num_threads=self.num_threads,
                scale=self.scale, ratio=self.ratio, dali_dtype=self._dali_dtype,
                checkpointing=self.checkpointing, prefetch_queue_depth=self.prefetch_queue_depth,
                policy_kwargs=self.policy_kwargs, checkpoint=checkpoint)
            pipe.build()
        self._pipe = pipe  # state_dict() checkpoints it
        return pipe, source

    def __iter__(self):
        start, checkpoint = self._resume or (0, None)
        self._resume = None
        self._step = start
        if start >= self.steps:  # resumed at the very end of an epoch: nothing left, no replay
            return
        # `base`: the batch a fresh pipeline starts at and the DALI checkpoint that puts it there;
        # without a checkpoint it starts at batch 0 and replays the batches already consumed
        # (restores the operator RNG states exactly).
        base = (start, checkpoint) if checkpoint is not None and self.checkpointing else (0, None)
        keep_base = self.skip_corrupt and self.checkpointing
        try:
            pipe, source = self._build(base[1])
            pos = base[0]  # the batch the pipeline produces next
            while pos < self.steps:
                if keep_base and pos > base[0]:
                    base = (pos, pipe.checkpoint())  # ~0.1 ms: where to redo this batch from
                try:
                    outputs = self._run(pipe, source, pos)
                except _Rebuild:  # files left out: redo batch base[0] onwards without them
                    pipe, source = self._build(base[1])
                    pos = base[0]
                    continue
                pos += 1
                if pos > self._step:
                    self._step = pos
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
              "batch_size": self.batch_size, "num_samples": self.num_samples, "dali": None,
              "excluded": self.exclusions.state()}
        if self._pipe is not None and self.checkpointing and 0 < self._step < self.steps:
            sd["dali"] = self._pipe.checkpoint()
        return sd

    def load_state_dict(self, sd):
        """Resume at (epoch, step). The order depends on seed, shard count, batch size and
        dataset size, so a mismatch raises instead of silently resuming a different sequence.
        A state saved by another rank (a trainer that saves rank 0's state only) is accepted:
        (epoch, step) are the same on every rank, but DALI's checkpoint belongs to the rank that
        saved it, so this rank replays its first `step` batches instead (exact, costs k steps).
        The files the saved run left out are left out again (with skip_corrupt; without it, they
        raise when reached, as in a fresh run)."""
        for key in ("seed", "num_shards", "batch_size", "num_samples"):
            if key in sd and sd[key] != getattr(self, key):
                raise ValueError(f"state_dict: {key}={sd[key]} does not match this loader's "
                                 f"{key}={getattr(self, key)}; cannot resume the same sequence")
        self.epoch = int(sd["epoch"])
        step = int(sd.get("step", 0))
        if self.skip_corrupt:
            self.exclusions.load(sd.get("excluded"))
        dali = sd.get("dali") if sd.get("shard_id", self.shard_id) == self.shard_id else None
        self._resume = (step, dali) if step else None
        self._step = step


class DaliEvalLoader(_DaliLoaderBase):
    """Single-view eval loader: every image of this shard exactly once, last batch partial.

    A file that fails raises a ValueError naming it (the evaluation set must be complete), unless
    `drop_corrupt` (features of a *training* split only: a kNN bank, a linear probe's fit set),
    which drops it with a warning; batches after it shift, so len() is then an upper bound.
    """

    _error = staticmethod(corrupt.eval_error)
    _exclusion_note = {"note": corrupt.DROP_NOTE}

    def __init__(self, samples, *, batch_size, size, device, shard_id, num_shards, num_threads,
                 dtype=torch.float32, resize=None, drop_corrupt=False):
        folder.check_shard_args(shard_id, num_shards)
        super().__init__(samples, batch_size=batch_size, device=device,
                         num_threads=num_threads, dtype=dtype, skip_corrupt=drop_corrupt)
        self.size = size
        # The usual 224/256 ratio: resize the shorter side to size / 0.875, then centre-crop.
        self.resize = resize if resize is not None else int(round(size / 0.875))
        self.shard_id, self.num_shards = shard_id, num_shards
        self.indices = folder.eval_shard_indices(len(samples), shard_id=shard_id,
                                                 num_shards=num_shards)

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        from .pipelines import build_eval_pipeline

        todo = self.exclusions.keep(self.indices)  # this shard's images not yet yielded
        while len(todo):
            source = FileSource(self.samples, todo, self.batch_size)
            pipe = build_eval_pipeline(
                source, batch_size=self.batch_size, size=self.size, resize=self.resize,
                device=self._dali_device, device_id=self._device_id,
                num_threads=self.num_threads, dali_dtype=self._dali_dtype)
            pipe.build()
            todo = todo[:0]
            for b in range(source.steps):
                try:
                    outputs = self._run(pipe, source, b)
                except _Rebuild:  # dropped files: go on from this batch without them
                    todo = self.exclusions.keep(source.indices[b * self.batch_size:])
                    break
                (images,), labels = self._convert(outputs)
                yield images, labels
