"""The dataset and the train / eval loaders of a run, from its config.

Which dataset (``--dataset``):

- ``auto`` (the default): scikit-learn's digits at the default root (``data/digits``, written there
  if missing), an existing image folder anywhere else: ``--data PATH`` with ``PATH/train/<class>/``
  and ``PATH/val/<class>/`` trains on it, and a mistyped path is an error, never a new dataset.
- ``digits``: the digits, written at ``--data`` if missing (only into a missing or empty folder).
- ``folder``: an existing image folder.

Nothing is ever written inside an existing dataset folder.

Which backend (``--backend``, one vocabulary with the builders of ``supcon_fast.data`` and the run
summary): ``auto`` the DALI pipelines (``supcon_fast/data/dali_loaders.py``) where ``nvidia.dali``
imports, else the torch loaders (``torch_loaders.py``: same recipes, order and shards); ``dali`` DALI or
an error; ``torch`` the torch loaders; ``memory`` images held in memory (``memory.py``, small sets of
one image size); ``synthetic`` random on-device tensors, no files (profiling). ``Loaders.backend`` is
what actually runs, as the loaders themselves report it, never the request.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .. import data as data_pkg
from ..distributed import world_size
from ..data import memory as memdata
from ..data.datasets import DEFAULT_DIGITS_ROOT, written_spec
from ..data.fashion_mnist import SPEC_NAME as FASHION_MNIST
from ..data.folder import IMG_EXTENSIONS, spread_indices

LAYOUT = "{root}/train/<class>/<image> and {root}/val/<class>/<image>"


@dataclass
class Loaders:
    train: object            # yields (views list of [B,3,S,S], labels [B]); len = steps / epoch
    train_eval: object       # un-augmented train images, this rank's shard: yields (images, labels)
    val: object              # un-augmented val images, this rank's shard
    num_classes: int
    dataset: str             # "digits" | "folder" | "synthetic" (no files): what was read
    root: str | None         # the dataset folder read (absolute); None when no folder is read
    load_skipped: dict = field(default_factory=dict)  # files left out while loading into memory
    knn_bank: object = None  # up to --knn-max-train un-augmented train images, every class in its share

    @property
    def backend(self) -> str:
        """What feeds the training batches: "dali" | "torch" | "memory" | "synthetic"."""
        return self.train.backend

    def skipped(self) -> dict:
        """{path: reason} of the training files left out so far on this rank (--skip-corrupt)."""
        out = dict(self.load_skipped)
        for ld in (self.train, self.train_eval):
            out.update(getattr(ld, "skipped", {}))
        return out

    def describe(self) -> dict:
        """The data facts of the run summary and metrics.jsonl: what was read, from where, by what."""
        return {"dataset": self.dataset, "data_root": self.root, "data_backend": self.backend,
                "train_images": getattr(self.train, "num_samples", None),
                "val_images": getattr(self.val, "num_samples", None)}


def skipped_files(loaders: Loaders, distributed: bool = False) -> list[str]:
    """Every training file any rank left out (--skip-corrupt), sorted: the run summary's list."""
    mine = sorted(loaders.skipped())
    if not distributed:
        return mine
    every = [None] * world_size()
    torch.distributed.all_gather_object(every, mine)
    return sorted(set().union(*every))


def dataset_kind(cfg: dict) -> str:
    """What ``--dataset`` means for this ``--data``: 'auto' is the digits only at their default root;
    the synthetic backend reads no dataset ('synthetic')."""
    if cfg.get("backend") == "synthetic":
        return "synthetic"
    if cfg["dataset"] != "auto":
        return cfg["dataset"]
    same = os.path.abspath(cfg["data"]) == os.path.abspath(DEFAULT_DIGITS_ROOT)
    return "digits" if same else "folder"


def with_data(cfg: dict, data: str | None) -> dict:
    """``cfg`` reading another dataset root (tools re-evaluating a checkpoint elsewhere). A saved
    ``dataset: digits`` asked for the digits at the saved root, so at another root it becomes 'auto'."""
    if not data:
        return cfg
    return {**cfg, "data": data, "dataset": "auto" if cfg["dataset"] == "digits" else cfg["dataset"]}


def check_folder(root: str) -> None:
    """Raise an error naming ``root`` and the expected layout unless it holds train/ and val/ class
    folders with images. Cheap: it stops at the first image of each split."""
    expected = "expected " + LAYOUT.format(root=root)
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise FileNotFoundError(f"data: {root!r} {what}; {expected} (--dataset digits writes "
                                f"scikit-learn's digits into a missing folder; `python tools/make_dataset.py "
                                f"fashion-mnist {root}` writes Fashion-MNIST there)")
    for split in ("train", "val"):
        d = os.path.join(root, split)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"data: {root!r} has no {split}/ folder{_layout_hint(root)}; {expected}")
        classes = [e.path for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")]
        if not classes:
            raise ValueError(f"data: {d!r} holds no class folders; {expected}")
        if not any(_has_image(c) for c in classes):
            raise ValueError(f"data: no images under {d!r} (extensions {', '.join(IMG_EXTENSIONS)}); {expected}")


def _has_image(folder: str) -> bool:
    return any(f.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(folder, followlinks=True)
               for f in files)


def _layout_hint(root: str) -> str:
    """Why a root without train/ may have been given: it is empty, or it is one split itself."""
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    if not entries:
        return " (the folder is empty)"
    if any(e.is_dir() and _has_image(e.path) for e in entries):
        return f" (its sub-folders hold images: if they are classes, move them to {root}/train/ and add a val/)"
    return ""


def ensure_dataset(cfg: dict, rank: int = 0) -> str | None:
    """Check the dataset root (writing the digits first where they are meant to be). Returns the
    absolute root, or None for ``synthetic``. Errors name the path and the expected layout."""
    kind = dataset_kind(cfg)
    if kind == "synthetic":
        return None
    root = cfg["data"]
    if kind == "digits" and (rank == 0 or not os.path.isdir(os.path.join(root, "val"))):
        from ..data.datasets import make_digits  # idempotent and safe for concurrent ranks
        try:
            make_digits(root, size=32)
        except FileExistsError as e:     # a folder of something else: never written into
            raise ValueError(f"data: {e}; to train on that folder pass --dataset folder") from None
    check_folder(root)
    return os.path.abspath(root)


def eval_resize(cfg: dict) -> int | None:
    """The eval pipeline's resize: the digits and Fashion-MNIST are stored at (about) the training
    size, objects filling the frame, so no resize-then-centre-crop margin is cut away; other folders
    use the loader's default margin."""
    written = (written_spec(cfg["data"]) or {}).get("name")
    whole = dataset_kind(cfg) == "digits" or written in ("digits", FASHION_MNIST)
    return cfg["size"] if whole else None


def build_loaders(cfg: dict, *, rank: int = 0, world: int = 1, device="cpu") -> Loaders:
    per_rank = cfg["batch_size"] // world
    kind = dataset_kind(cfg)
    if kind == "synthetic":
        return _synthetic_loaders(cfg, per_rank, rank, world, device)
    root = ensure_dataset(cfg, rank)
    if cfg["backend"] != "memory":
        return _folder_loaders(cfg, root, per_rank, rank, world, device, kind)
    x_tr, y_tr, _, skipped = memdata.load_folder(os.path.join(root, "train"), skip_corrupt=cfg["skip_corrupt"])
    x_va, y_va, _, _ = memdata.load_folder(os.path.join(root, "val"), evaluation=True)
    loaders = _memory_loaders(cfg, x_tr, y_tr, x_va, y_va, per_rank, rank, world, device, kind, root)
    loaders.load_skipped = skipped
    return loaders


def _folder_loaders(cfg, root, per_rank, rank, world, device, kind) -> Loaders:
    """supcon_fast.data's loaders: DALI or torch (--backend auto: DALI where it imports)."""
    common = dict(size=cfg["size"], device=str(torch.device(device)), shard_id=rank, num_shards=world,
                  num_threads=cfg["num_threads"], backend=cfg["backend"])
    train_root = os.path.join(root, "train")
    # one scan (and header check) of the train folder serves the train loader and the train features
    from ..data.dali_loaders import load_samples  # no DALI import: the scan and the header check

    data_pkg.check_policy(cfg["policy"])  # before the (possibly long) scan
    train_files = load_samples(train_root, skip_corrupt=cfg["skip_corrupt"])
    try:
        tr = data_pkg.build_train_loader(train_root, batch_size=per_rank, n_views=cfg["views"],
                                     policy=cfg["policy"], seed=cfg["seed"], scale=(cfg["crop_min_scale"], 1.0),
                                     skip_corrupt=cfg["skip_corrupt"], samples=train_files, **common)
    except ImportError as e:         # --backend dali where DALI is not installed
        raise ValueError(f"backend: {e}") from None
    ev = dict(common, resize=eval_resize(cfg))
    # train features (kNN bank, linear probe fit set) may drop what training skips; val may not
    tre = data_pkg.build_eval_loader(train_root, batch_size=cfg["eval_batch_size"], drop_corrupt=cfg["skip_corrupt"],
                                     samples=train_files, **ev)
    val = data_pkg.build_eval_loader(os.path.join(root, "val"), batch_size=cfg["eval_batch_size"], **ev)
    bank = data_pkg.build_eval_loader(train_root, batch_size=cfg["eval_batch_size"], drop_corrupt=cfg["skip_corrupt"],
                                      max_images=cfg["knn_max_train"], samples=train_files, **ev)
    return Loaders(tr, tre, val, tr.num_classes, kind, root, knn_bank=bank)


def _synthetic_loaders(cfg, per_rank, rank, world, device) -> Loaders:
    # fixed random tensors for profiling; "val" shares them: the numbers mean nothing, the cost does
    tr = memdata.SyntheticLoader(batch_size=per_rank, n_views=cfg["views"], size=cfg["size"],
                                 num_classes=10, steps=100, device=device, seed=cfg["seed"] + rank)
    images = (torch.rand(64, 3, cfg["size"], cfg["size"]) * 255).to(torch.uint8)
    labels = torch.arange(64) % 10
    ev = memdata.TensorEvalLoader(images, labels, batch_size=cfg["eval_batch_size"], size=cfg["size"],
                                  device=device, shard_id=rank, num_shards=world)
    return Loaders(tr, ev, ev, 10, "synthetic", None, knn_bank=ev)


def _memory_loaders(cfg, x_tr, y_tr, x_va, y_va, per_rank, rank, world, device, kind, root) -> Loaders:
    tr = memdata.TensorTrainLoader(x_tr, y_tr, batch_size=per_rank, n_views=cfg["views"], size=cfg["size"],
                                   policy=cfg["policy"], device=device, shard_id=rank, num_shards=world,
                                   seed=cfg["seed"], min_scale=cfg["crop_min_scale"])
    ev = dict(batch_size=cfg["eval_batch_size"], size=cfg["size"], device=device, shard_id=rank, num_shards=world)
    bank = torch.from_numpy(spread_indices(len(y_tr), cfg["knn_max_train"]))
    return Loaders(tr, memdata.TensorEvalLoader(x_tr, y_tr, **ev), memdata.TensorEvalLoader(x_va, y_va, **ev),
                   tr.num_classes, kind, root, knn_bank=memdata.TensorEvalLoader(x_tr[bank], y_tr[bank], **ev))
