"""Image-folder / file-list scanning, per-epoch shuffling and sharding.

Everything here is plain Python + numpy so it can be tested without DALI and shared by the DALI
loaders and the torchvision baseline: both read the same (path, label) list in the same order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# File signatures of the formats above. Checking them costs nothing once the bytes are read, and
# catches the commonest corruption (empty / truncated-to-zero / HTML error pages saved as .jpg).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"P5", b"P6", b"II*\x00", b"MM\x00*",
          b"RIFF")


@dataclass(frozen=True)
class Samples:
    """A dataset split: parallel lists of file paths and integer labels, plus the class names,
    where they came from (`root`) and the files left out before training ({path: reason})."""

    paths: list
    labels: np.ndarray  # int64 [N]
    classes: list
    root: str | None = None
    skipped: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.paths)

    @property
    def num_classes(self):
        return len(self.classes)


def has_image_magic(data) -> bool:
    """True if the leading bytes look like an image format we decode."""
    head = bytes(data[:8])
    return any(head.startswith(m) for m in _MAGIC)


def header_error(data):
    """None if `data` (the file's bytes, or at least its first 8) starts like an image, else why
    not: the reason `skip_corrupt` warnings and error messages give."""
    if len(data) == 0:
        return "empty file"
    if not has_image_magic(data):
        return f"not an image: starts with {bytes(data[:8])!r}"
    return None


def scan(root) -> Samples:
    """Read `root/<class>/<image>` (classes sorted into labels 0..C-1, as torchvision's ImageFolder)
    or a file list (`relative/path label` per line, paths relative to the list's folder).

    Raises FileNotFoundError naming `root` when it does not exist and ValueError when it holds no
    images, so a wrong `--data` fails at once instead of after the pipeline is built.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"root: dataset folder or file list {root!r} does not exist")
    if os.path.isfile(root):
        return _scan_file_list(root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"root: {root!r} has no class sub-folders (expected root/<class>/<image>)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cdir = os.path.join(root, cls)
        # os.walk so nested folders inside a class count, as in ImageFolder; sorted for determinism.
        for dirpath, dirnames, filenames in sorted(os.walk(cdir, followlinks=True)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(dirpath, name))
                    labels.append(label)
    if not paths:
        raise ValueError(f"root: {root!r} has class folders {classes[:5]}... but no image files "
                         f"(extensions {IMG_EXTENSIONS})")
    return Samples(paths, np.asarray(labels, dtype=np.int64), classes, root)


def _scan_file_list(list_path) -> Samples:
    base = os.path.dirname(os.path.abspath(list_path))
    paths, labels = [], []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                rel, label = line.rsplit(maxsplit=1)
                labels.append(int(label))
            except ValueError:
                raise ValueError(f"root: file list {list_path!r} line {lineno}: expected "
                                 f"'<path> <integer label>', got {line!r}") from None
            paths.append(rel if os.path.isabs(rel) else os.path.join(base, rel))
    if not paths:
        raise ValueError(f"root: file list {list_path!r} is empty")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0:
        raise ValueError(f"root: file list {list_path!r} has negative labels")
    return Samples(paths, labels, [str(c) for c in range(int(labels.max()) + 1)], list_path)


def find_bad_headers(paths) -> dict:
    """{path: reason} of the paths whose first bytes are not an image signature (or that cannot
    be read at all).

    Reads 8 bytes per file: cheap enough to run before every training run, unlike a full decode
    (`datasets.check_dataset` does the full decode, for `make_dataset.py check`).
    """
    bad = {}
    for p in paths:
        try:
            with open(p, "rb") as f:
                reason = header_error(f.read(8))
        except OSError as e:
            reason = f"{type(e).__name__}: {e.strerror or e}"
        if reason is not None:
            bad[p] = reason
    return bad


def spread_indices(n, k) -> np.ndarray:
    """At most ``k`` of ``range(n)``, evenly spaced (all of them when ``k`` is 0 or >= n). A folder
    lists its images class by class, so an even spread keeps every class in proportion where the
    first ``k`` would hold only the first classes."""
    if not k or k >= n:
        return np.arange(n)
    return np.arange(k) * n // k


def spread_subset(samples: Samples, k) -> Samples:
    """``samples`` cut to at most ``k`` images by ``spread_indices`` (0: all of them)."""
    idx = spread_indices(len(samples), k)
    if len(idx) == len(samples):
        return samples
    return Samples([samples.paths[i] for i in idx], samples.labels[idx], samples.classes,
                   samples.root, samples.skipped)


def epoch_permutation(n, seed, epoch) -> np.ndarray:
    """The global order of epoch `epoch`: a function of (seed, epoch) only, identical on all ranks,
    so shards are disjoint without any communication."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def train_shard_indices(n, *, batch_size, shard_id, num_shards, seed, epoch, drop_last=False):
    """Indices (into the sample list) that shard `shard_id` reads in epoch `epoch`, in order.

    Every shard gets exactly `steps * batch_size` indices. Without `drop_last`, the permutation is
    padded by wrapping around to `steps * batch_size * num_shards` so all ranks run the same number
    of steps (a rank that stops early would hang the others in the gradient all-reduce). The padding
    duplicates at most `batch_size * num_shards - 1` images per epoch; which ones changes each
    epoch.
    """
    steps = train_steps(n, batch_size=batch_size, num_shards=num_shards, drop_last=drop_last)
    total = steps * batch_size * num_shards
    perm = epoch_permutation(n, seed, epoch)
    if total > n:
        perm = np.resize(perm, total)  # np.resize repeats the array: wrap-around padding
    perm = perm[:total]
    # Interleaved assignment: shard k takes positions k, k+S, ... so the padding (the tail) is
    # spread over all shards rather than landing entirely on the last one.
    return perm[shard_id::num_shards]


def train_steps(n, *, batch_size, num_shards, drop_last=False):
    per_step = batch_size * num_shards
    steps = n // per_step if drop_last else -(-n // per_step)
    if steps == 0:
        raise ValueError(f"batch_size: {batch_size} x {num_shards} shards exceeds the {n} images "
                         f"of the dataset with drop_last=True")
    return steps


def eval_shard_indices(n, *, shard_id, num_shards):
    """Contiguous, non-overlapping slices whose union is every image exactly once (no padding);
    shard sizes differ by at most one image."""
    lo = shard_id * n // num_shards
    hi = (shard_id + 1) * n // num_shards
    return np.arange(lo, hi)


def check_shard_args(shard_id, num_shards):
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards: must be a positive int, got {num_shards!r}")
    if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id: must be in [0, {num_shards}), got {shard_id!r}")
