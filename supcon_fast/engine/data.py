"""Build the train / eval loaders a run needs from its config.

The DALI pipelines of ``supcon_fast.data`` are used where DALI is installed; otherwise
(or for ``dataset: synthetic``) the in-memory sources of ``memdata`` with the same interface.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from . import memdata


@dataclass
class Loaders:
    train: object            # yields (views list of [B,3,S,S], labels [B]); len = steps / epoch
    train_eval: object       # un-augmented train images, this rank's shard: yields (images, labels)
    val: object              # un-augmented val images, this rank's shard
    num_classes: int
    backend: str             # "dali" | "memory" | "synthetic"
    load_skipped: dict = field(default_factory=dict)  # files left out while loading into memory

    def skipped(self) -> dict:
        """{path: reason} of the training files left out so far on this rank (--skip-corrupt)."""
        out = dict(self.load_skipped)
        for ld in (self.train, self.train_eval):
            out.update(getattr(ld, "skipped", {}))
        return out


def skipped_files(loaders: Loaders, distributed: bool = False) -> list[str]:
    """Every training file any rank left out (--skip-corrupt), sorted: the run summary's list."""
    mine = sorted(loaders.skipped())
    if not distributed:
        return mine
    every = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, mine)
    return sorted(set().union(*every))


def _dali():
    """The DALI loaders (supcon_fast.data), or None where DALI is not installed (e.g. the GPU machine)."""
    try:
        from supcon_fast import data
        return data
    except ImportError:
        return None


def ensure_dataset(cfg: dict, rank: int = 0) -> str:
    """Create the digits folder if missing (``dataset: digits``); check the root otherwise. Returns the root."""
    root = cfg["data"]
    if cfg["dataset"] == "digits":
        if rank == 0 or not os.path.isdir(os.path.join(root, "val")):
            from supcon_fast.data.datasets import make_digits  # idempotent and safe for concurrent ranks
            make_digits(root, size=32)
    elif cfg["dataset"] == "folder":
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                raise FileNotFoundError(f"data: {os.path.join(root, split)!r} does not exist "
                                        f"(expected {root}/train/<class>/ and {root}/val/<class>/)")
    return root


def eval_resize(cfg: dict) -> int | None:
    """The eval pipeline's resize: digits are stored at (about) the training size, so no
    resize-then-centre-crop margin is cut away; other folders use the loader's default margin."""
    return cfg["size"] if cfg["dataset"] == "digits" else None


def build_loaders(cfg: dict, *, rank: int = 0, world: int = 1, device="cpu") -> Loaders:
    per_rank = cfg["batch_size"] // world
    if cfg["dataset"] == "synthetic":
        # fixed random tensors for profiling; "val" shares them: the numbers mean nothing, the cost does
        tr = memdata.SyntheticLoader(batch_size=per_rank, n_views=cfg["views"], size=cfg["size"],
                                     num_classes=10, steps=100, device=device, seed=cfg["seed"] + rank)
        images = (torch.rand(64, 3, cfg["size"], cfg["size"]) * 255).to(torch.uint8)
        labels = torch.arange(64) % 10
        ev = memdata.TensorEvalLoader(images, labels, batch_size=cfg["eval_batch_size"], size=cfg["size"],
                                      device=device, shard_id=rank, num_shards=world)
        return Loaders(tr, ev, ev, 10, "synthetic")
    dali_pkg = _dali()
    dali = dali_pkg if cfg["loader"] != "memory" else None
    if cfg["dataset"] == "digits" and dali_pkg is None:
        # no DALI on this machine (supcon_fast.data does not import): the digits straight from sklearn
        (x_tr, y_tr), (x_va, y_va) = memdata.digits_in_memory(32)
        return _memory_loaders(cfg, x_tr, y_tr, x_va, y_va, per_rank, rank, world, device)
    root = ensure_dataset(cfg, rank)
    if cfg["loader"] == "dali" and dali is None:
        raise ValueError("loader: 'dali' requested but supcon_fast.data.build_train_loader is not importable")
    if dali is not None:
        common = dict(size=cfg["size"], device=str(torch.device(device)), shard_id=rank, num_shards=world,
                      num_threads=cfg["num_threads"])
        tr = dali.build_train_loader(os.path.join(root, "train"), batch_size=per_rank, n_views=cfg["views"],
                                     policy=cfg["policy"], seed=cfg["seed"], scale=(cfg["crop_min_scale"], 1.0),
                                     skip_corrupt=cfg["skip_corrupt"], **common)
        ev = dict(common, resize=eval_resize(cfg))
        # train features (kNN bank, linear probe fit set) may drop what training skips; val may not
        tre = dali.build_eval_loader(os.path.join(root, "train"), batch_size=cfg["eval_batch_size"],
                                     drop_corrupt=cfg["skip_corrupt"], **ev)
        val = dali.build_eval_loader(os.path.join(root, "val"), batch_size=cfg["eval_batch_size"], **ev)
        num_classes = getattr(tr, "num_classes", None) or len(
            [e for e in os.scandir(os.path.join(root, "train")) if e.is_dir()])
        return Loaders(tr, tre, val, num_classes, "dali")
    x_tr, y_tr, _, skipped = memdata.load_folder(os.path.join(root, "train"), skip_corrupt=cfg["skip_corrupt"])
    x_va, y_va, _, _ = memdata.load_folder(os.path.join(root, "val"), evaluation=True)
    loaders = _memory_loaders(cfg, x_tr, y_tr, x_va, y_va, per_rank, rank, world, device)
    loaders.load_skipped = skipped
    return loaders


def _memory_loaders(cfg, x_tr, y_tr, x_va, y_va, per_rank, rank, world, device) -> Loaders:
    tr = memdata.TensorTrainLoader(x_tr, y_tr, batch_size=per_rank, n_views=cfg["views"], size=cfg["size"],
                                   policy=cfg["policy"], device=device, shard_id=rank, num_shards=world,
                                   seed=cfg["seed"], min_scale=cfg["crop_min_scale"])
    ev = dict(batch_size=cfg["eval_batch_size"], size=cfg["size"], device=device, shard_id=rank, num_shards=world)
    return Loaders(tr, memdata.TensorEvalLoader(x_tr, y_tr, **ev), memdata.TensorEvalLoader(x_va, y_va, **ev),
                   tr.num_classes, "memory")
