"""The one interface of the loaders, whatever the backend (``dali_loaders``, ``torch_loaders``,
``memory``): what the trainer, the profiler and the benchmarks rely on, and nothing else.

``backend`` names what runs: ``"dali"`` | ``"torch"`` | ``"memory"`` | ``"synthetic"`` (the run
summary's ``data_backend``).
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch


@runtime_checkable
class TrainLoader(Protocol):
    """Augmented multi-view batches of one shard: iterating yields ``(views, labels)``, ``views`` a
    list of ``n_views`` float tensors [B, 3, S, S] (channels-last, normalized), ``labels`` int64 [B].

    ``len()`` is the steps per epoch, equal on every shard. ``set_epoch(e)`` selects the epoch the
    next iteration runs (a pending resume position of another epoch is dropped);
    ``skip_batches(k)`` starts it at batch k as if k had been consumed; ``state_dict()`` /
    ``load_state_dict()`` resume mid-epoch exactly (with the files left out under ``skip_corrupt``).
    """

    backend: str
    num_classes: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def skip_batches(self, k: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, sd: dict) -> None: ...


@runtime_checkable
class EvalLoader(Protocol):
    """Un-augmented batches of one shard, every image once: yields ``(images [B, 3, S, S], labels [B])``;
    ``len()`` is the number of batches (an upper bound where bad files were dropped)."""

    backend: str
    num_classes: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
