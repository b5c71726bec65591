"""Configuration: built-in defaults < YAML preset (``--config``) < command line; the resolved config is saved.

Like timm's train.py: every option is one flat key, ``--batch-size`` on the command line is
``batch_size`` in YAML. A preset is a path or the name of a file in ``supcon_fast/configs/`` (package
data: ``--config demo`` works from any directory of an installed package).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from ..data.datasets import DEFAULT_DIGITS_ROOT
from ..models import ARCHS, HEADS, STEMS
from .precision import AMP_CHOICES, LOSS_DTYPE_CHOICES, resolve_loss_dtype

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"   # the presets, package data
BACKENDS = ("auto", "dali", "torch", "memory", "synthetic")
# Options renamed since: a saved config or checkpoint with the old name still loads.
RENAMED = {"loader": "backend"}

# key: (default, type, help, choices). type None = str that may be empty / null.
OPTIONS: dict[str, tuple] = {
    "config": ("demo", str, "YAML preset: a path or a name in supcon_fast/configs/", None),
    # data
    "data": (DEFAULT_DIGITS_ROOT, str, "dataset root holding train/<class>/ and val/<class>/ image folders "
             "(read only: nothing is written inside it)", None),
    "dataset": ("auto", str, "auto: the digits at their default root (data/digits, written if missing), "
                "an existing image folder at any other --data; digits: scikit-learn's digits, written into a "
                "missing or empty --data; folder: an existing image folder; synthetic: the same as --backend "
                "synthetic (kept for older commands)", ("auto", "digits", "folder", "synthetic")),
    "size": (32, int, "crop size in pixels", None),
    "views": (2, int, "augmented views per image", None),
    "policy": ("simclr", str, "augmentation policy (see supcon_fast.data)", None),
    "backend": ("auto", str, "what feeds the batches (also --loader). auto: dali where nvidia.dali imports, else "
                "torch (same recipes; the run summary names the one used); dali: the DALI pipelines or an error; "
                "torch: torchvision transforms in a torch DataLoader; memory: images held in memory (small sets "
                "of one image size); synthetic: random on-device tensors, no files (profiling)", BACKENDS),
    "crop_min_scale": (0.08, float, "smallest area fraction of the random resized crop", None),
    "num_threads": (2, int, "data-pipeline threads per process", None),
    "skip_corrupt": (False, bool, "leave out training images that cannot be read or decoded (each named in a "
                     "warning and listed in the summary) instead of stopping; val must still be complete", None),
    # model
    "arch": ("resnet18", str, "encoder", tuple(ARCHS)),
    "stem": ("small", str, "imagenet: 7x7/2 conv + max-pool; small: 3x3/1 conv (32 px data)", STEMS),
    "width": (64, int, "base width of the ResNet (64 = standard)", None),
    "head": ("mlp", str, "projection head", HEADS),
    "feat_dim": (128, int, "projection output dimension", None),
    "channels_last": (True, bool, "channels-last memory format", None),
    "compile": (False, bool, "torch.compile the model", None),
    "sync_bn": (False, bool, "SyncBatchNorm under DDP (GPU)", None),
    # loss
    "loss": ("supcon", str, "supcon | simclr (labels ignored) | ce (cross-entropy baseline)",
             ("supcon", "simclr", "ce")),
    "temperature": (0.1, float, "SupCon temperature", None),
    "base_temperature": (None, float, "loss scale T/T_base (default: = temperature)", None),
    "variant": ("out", str, "SupCon variant", ("out", "in")),
    "loss_impl": ("auto", str, "SupCon implementation", ("auto", "fused", "reference")),
    "denominator": ("all", str, "which positives share an anchor's denominator with its negatives: all, each one "
                    "alone, none (the official SupCon implementation's modes)", ("all", "one_positive", "only_negatives")),
    "positives_cap": (-1, int, "at most this many positive views per anchor besides its own views (a multiple of "
                      "--views; the first same-class samples in batch order); -1: no cap", None),
    "queue": (0, int, "a queue of the last K embedding rows (every view) that the loss also contrasts against, "
              "MoCo-style (supcon / simclr; 0: off)", None),
    "queue_momentum": (0.999, float, "with --queue: a momentum copy of encoder and head (key = m * key + (1 - m) * "
                       "online after each step) embeds the rows pushed; 0: the online model's own embeddings", None),
    # optimization
    "epochs": (4, int, "pretraining epochs", None),
    "batch_size": (256, int, "global batch size in images (all ranks together)", None),
    "optimizer": ("sgd", str, "optimizer", ("sgd", "lars")),
    "lr": (0.05, float, "peak learning rate per 256 images (scaled by batch_size / 256)", None),
    "min_lr": (0.0, float, "final lr of the cosine, per 256 images", None),
    "momentum": (0.9, float, "momentum", None),
    "weight_decay": (1e-4, float, "weight decay (not on BatchNorm and biases)", None),
    "warmup_epochs": (0.5, float, "linear warm-up length in epochs (fractions allowed)", None),
    "amp": ("auto", str, "autocast of the network; auto: bf16 on GPU, fp32 on CPU", AMP_CHOICES),
    "loss_dtype": ("auto", str, "dtype of the SupCon/SimCLR loss input (features normalized in fp32, then cast); "
                   "auto: the autocast dtype under --amp bf16/fp16, else fp32. The resolved config records torch's "
                   "name (bfloat16, ...), also accepted here. ce: always fp32", LOSS_DTYPE_CHOICES),
    "max_nonfinite": (3, int, "stop after this many consecutive non-finite losses (without fp16; with it the "
                      "GradScaler skips overflowing steps)", None),
    # run control
    "out": (None, str, "output folder (default runs/<config>-<time>)", None),
    "resume": (None, str, "'auto' (last.pt in --out if present) or a checkpoint path", None),
    "max_steps": (0, int, "stop pretraining after this many steps in total (0: no limit)", None),
    "ckpt_every": (0, int, "also checkpoint every N steps (0: only each epoch)", None),
    "seed": (0, int, "random seed", None),
    "threads": (0, int, "torch intra-op CPU threads (0: torch's default; 1 helps on oversubscribed cores)", None),
    "device": ("auto", str, "auto | cpu | cuda", ("auto", "cpu", "cuda")),
    "log_every": (10, int, "steps between progress / metrics lines", None),
    "tensorboard": (True, bool, "write TensorBoard events to <out>/tb", None),
    # evaluation
    "linear_epochs": (10, int, "linear-evaluation epochs (0: skip linear evaluation)", None),
    "linear_lr": (0.1, float, "linear-classifier peak lr per 256 images", None),
    "linear_batch_size": (256, int, "linear-classifier batch size", None),
    "linear_holdout": (0.1, float, "fraction of train held out for linear-classifier model selection", None),
    "eval_batch_size": (256, int, "batch size of feature extraction", None),
    "knn_every": (1, int, "kNN accuracy on val every N epochs (0: never)", None),
    "knn_k": (20, int, "neighbours of the kNN monitor", None),
    "knn_max_train": (50000, int, "at most this many train images in the kNN bank, evenly spread over the classes (0: all)", None),
}


def defaults() -> dict:
    return {k: v[0] for k, v in OPTIONS.items()}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """Every option as a flag whose default is ``None`` so we can tell what the user actually set."""
    p = argparse.ArgumentParser(description="SupCon pretraining then linear evaluation",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for key, (default, typ, help_, choices) in OPTIONS.items():
        flags = [_flag(key)] + [_flag(old) for old, new in RENAMED.items() if new == key]
        if typ is bool:
            p.add_argument(*flags, dest=key, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help_} (default {default})")
        else:
            p.add_argument(*flags, dest=key, type=typ, default=None, choices=choices,
                           help=f"{help_} (default {default})")
    return p


def load_yaml(name_or_path: str) -> dict:
    """A preset by path or by name in supcon_fast/configs/; errors name --config."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config: {name_or_path!r} is neither a file nor a preset in {CONFIG_DIR} "
                                f"(presets: {names})")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {path} must hold a mapping of option: value")
    return upgrade({k.replace("-", "_"): v for k, v in data.items()})


def validate(cfg: dict) -> dict:
    """Type-check and range-check every key; raise ValueError naming the option."""
    cfg = upgrade(cfg)
    unknown = sorted(set(cfg) - set(OPTIONS))
    if unknown:
        raise ValueError(f"config: unknown option(s) {unknown}")
    out = {}
    for key, (default, typ, _, choices) in OPTIONS.items():
        v = cfg.get(key, default)
        if v is not None:
            try:
                if typ is bool and not isinstance(v, bool):
                    raise TypeError
                if typ is int and (isinstance(v, bool) or float(v) != int(v)):
                    raise TypeError
                v = typ(v)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: expected {typ.__name__}, got {v!r}") from None
        elif default is not None:
            raise ValueError(f"{key}: must be set")
        if choices and v not in choices:
            raise ValueError(f"{key}: {v!r} is not one of {list(choices)}")
        out[key] = v
    for key in ("size", "views", "batch_size", "epochs", "width", "feat_dim", "num_threads", "log_every",
                "linear_batch_size", "eval_batch_size", "knn_k", "max_nonfinite"):
        if out[key] < 1:
            raise ValueError(f"{key}: must be >= 1, got {out[key]}")
    for key in ("max_steps", "ckpt_every", "linear_epochs", "knn_every", "knn_max_train", "threads", "queue"):
        if out[key] < 0:
            raise ValueError(f"{key}: must be >= 0, got {out[key]}")
    for key in ("lr", "temperature", "linear_lr"):
        if not out[key] > 0:
            raise ValueError(f"{key}: must be > 0, got {out[key]}")
    if out["base_temperature"] is not None and not out["base_temperature"] > 0:
        raise ValueError(f"base_temperature: must be > 0, got {out['base_temperature']}")
    resolve_loss_dtype(out["loss_dtype"], None, out["loss"])   # ce takes only auto / fp32: names loss_dtype
    if out["views"] < 2 and out["loss"] != "ce":
        raise ValueError(f"views: contrastive losses need >= 2 views, got {out['views']}")
    if out["positives_cap"] < -1 or out["positives_cap"] >= 0 and out["positives_cap"] % out["views"]:
        raise ValueError(f"positives_cap: must be -1 (no cap) or a multiple of views = {out['views']}, "
                         f"got {out['positives_cap']}")
    if out["queue"] and out["loss"] not in ("supcon", "simclr"):
        raise ValueError(f"queue: applies to the contrastive losses (supcon, simclr), not --loss {out['loss']}")
    if not 0 <= out["queue_momentum"] < 1:
        raise ValueError(f"queue_momentum: must be in [0, 1), got {out['queue_momentum']}")
    if not 0 < out["crop_min_scale"] <= 1:
        raise ValueError(f"crop_min_scale: must be in (0, 1], got {out['crop_min_scale']}")
    if not 0 <= out["linear_holdout"] < 1:
        raise ValueError(f"linear_holdout: must be in [0, 1), got {out['linear_holdout']}")
    if out["warmup_epochs"] < 0 or out["weight_decay"] < 0 or out["min_lr"] < 0:
        raise ValueError("warmup_epochs, weight_decay, min_lr: must be >= 0")
    return out


def upgrade(cfg: dict) -> dict:
    """``cfg`` in today's vocabulary: renamed options under their new names, ``dataset: synthetic`` as
    ``backend: synthetic``, the torchvision backend under its name ``torch``."""
    cfg = dict(cfg)
    for old, new in RENAMED.items():
        if old in cfg:
            value = cfg.pop(old)
            cfg.setdefault(new, value)
    if cfg.get("backend") == "torchvision":
        cfg["backend"] = "torch"
    if cfg.get("dataset") == "synthetic":
        cfg["dataset"], cfg["backend"] = "auto", "synthetic"
    return cfg


def resolve(argv: list[str] | None = None) -> dict:
    """defaults < YAML preset < command line, validated. ``argv=None`` reads sys.argv."""
    args = vars(build_parser().parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    cfg = defaults()
    cfg.update(load_yaml(given.get("config", cfg["config"])))
    cfg.update(given)
    return validate(cfg)


def save(cfg: dict, out_dir: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (loadable again with ``--config <out>/config.yaml``)."""
    path = Path(out_dir) / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(dict(cfg), f, sort_keys=False)
    os.replace(tmp, path)
    return path
