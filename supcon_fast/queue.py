"""A labelled queue of past embeddings (MoCo-style): more contrast rows than one batch holds.

``ContrastQueue`` is a FIFO ring of the last ``size`` embedding rows with their labels. Each ``push``
stores every view of a batch, detached and cast to the queue's dtype, sample-major (the ``n_views``
rows of one sample adjacent); when the ring is full the oldest rows are overwritten, so a sample may
be partly overwritten. ``supcon_loss(..., queue=q)`` contrasts the current views against the current
views plus the queue's filled rows; the queue rows get no gradient.

Rows pushed without labels are *unlabelled*: negative to every anchor (SimCLR: a past sample is never
the current one). ``contrast_rows`` hands out the storage itself, in storage order, with each row's
age (how many samples were pushed after its sample), so the loss can order it newest to oldest
without a copy.
"""
from __future__ import annotations

import torch


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class ContrastQueue:
    """FIFO ring of ``size`` rows of ``dim`` features, their int64 labels and whether they are labelled.

    size: rows held (every view of a pushed sample is one row). dim: feature dimension. dtype: the
    storage dtype (features are cast on push; use the loss's input dtype). device: where it lives.
    """

    def __init__(self, size: int, dim: int, *, dtype=torch.float32, device="cpu"):
        self.size, self.dim = _check_int("size", size, 1), _check_int("dim", dim, 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.dtype, self.device = dtype, torch.device(device)
        self._features = torch.zeros(size, dim, dtype=dtype, device=self.device)      # [size, dim]
        self._labels = torch.full((size,), -1, dtype=torch.long, device=self.device)  # [size]
        self._labelled = torch.zeros(size, dtype=torch.bool, device=self.device)      # [size]
        self._sample = torch.zeros(size, dtype=torch.long, device=self.device)        # [size] push index of the sample
        self._pos = 0          # the next row written
        self._filled = 0       # rows holding data (0..size)
        self._samples = 0      # samples pushed in all

    def __len__(self) -> int:
        return self._filled

    def __repr__(self) -> str:
        return (f"ContrastQueue(size={self.size}, dim={self.dim}, dtype={self.dtype}, device={self.device}, "
                f"filled={self._filled})")

    def _check_push(self, features, labels) -> None:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 3 or features.shape[2] != self.dim:
            raise ValueError(f"features must be [bsz, n_views, dim={self.dim}], got shape {tuple(features.shape)}")
        if not features.is_floating_point():
            raise TypeError(f"features must be a floating-point tensor, got dtype {features.dtype}")
        if features.device != self.device:
            raise ValueError(f"features are on device {features.device} but the queue on {self.device}")
        if labels is None:
            return
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must be [bsz] = [{features.shape[0]}] to match features "
                             f"{tuple(features.shape)}, got shape {tuple(labels.shape)}")
        if labels.device != self.device:
            raise ValueError(f"labels are on device {labels.device} but the queue on {self.device}")

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Store every view of a batch. features: [bsz, n_views, dim]; labels: [bsz] integer, or None
        (the rows are then unlabelled: negatives to everything).

        The rows are copied (detached, cast to the queue's dtype), so the caller may change or free the
        source, and no gradient reaches the queue. A push of more than ``size`` rows keeps its last ones.
        """
        self._check_push(features, labels)
        bsz, n_views = features.shape[0], features.shape[1]
        rows = features.detach().reshape(bsz * n_views, self.dim)                   # sample-major
        sample = torch.arange(self._samples, self._samples + bsz, device=self.device).repeat_interleave(n_views)
        if labels is None:
            lab = torch.full((rows.shape[0],), -1, dtype=torch.long, device=self.device)
        else:
            lab = labels.to(torch.long).repeat_interleave(n_views)
        n = rows.shape[0]
        keep = min(n, self.size)      # writing n rows in order leaves only the last `size` of them
        start = (self._pos + n - keep) % self.size
        for dst, src in ((self._features, rows), (self._labels, lab), (self._sample, sample)):
            self._write(dst, src[n - keep:], start)
        self._write(self._labelled, torch.full((keep,), labels is not None, device=self.device), start)
        self._pos = (self._pos + n) % self.size
        self._filled = min(self.size, self._filled + n)
        self._samples += bsz

    def _write(self, dst: torch.Tensor, src: torch.Tensor, start: int) -> None:
        """dst[start:] then dst[:...] (the ring wraps): two slice copies, no index tensor."""
        first = min(self.size - start, src.shape[0])
        dst[start:start + first].copy_(src[:first])
        dst[:src.shape[0] - first].copy_(src[first:])

    def contrast_rows(self):
        """The filled rows: (features [K, dim], labels [K] int64, labelled [K] bool, age [K] int64), K = len(self).

        ``features`` (and the others but age) are views of the storage, in storage order (not oldest to
        newest once the ring wrapped). ``age[r]``: samples pushed after row r's sample (0: the newest
        sample; the rows of one sample share it). Unlabelled rows carry label -1; use ``labelled``.
        """
        k = self._filled
        age = (self._samples - 1) - self._sample[:k]
        return self._features[:k], self._labels[:k], self._labelled[:k], age

    def state_dict(self) -> dict:
        """Tensors (copies) and ints: loads with ``torch.load(weights_only=True)``."""
        return {"size": self.size, "dim": self.dim, "dtype": str(self.dtype).removeprefix("torch."),
                "features": self._features.clone(), "labels": self._labels.clone(),
                "labelled": self._labelled.clone(), "sample": self._sample.clone(),
                "pos": self._pos, "filled": self._filled, "samples": self._samples}

    def load_state_dict(self, state: dict) -> None:
        """Restore exactly (features cast to this queue's dtype and device); size and dim must match."""
        for key in ("size", "dim"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state: the saved queue has {key}={state.get(key)!r} but this queue "
                                 f"{key}={getattr(self, key)!r}")
        with torch.no_grad():
            for name in ("features", "labels", "labelled", "sample"):
                getattr(self, "_" + name).copy_(state[name])
        self._pos, self._filled, self._samples = int(state["pos"]), int(state["filled"]), int(state["samples"])

    def to(self, device) -> "ContrastQueue":
        """Moves the storage (in place); returns self."""
        self.device = torch.device(device)
        for name in ("_features", "_labels", "_labelled", "_sample"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self
