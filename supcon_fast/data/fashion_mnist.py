"""Fashion-MNIST (Zalando, 28x28 greyscale, 10 classes) from Debian's `dataset-fashion-mnist` as an
image folder: `root/train/<class>/` (the official 60,000) and `root/val/<class>/` (the official
10,000 test images), RGB JPEG at quality 95.

The source is the package's four IDX files (`apt-get install dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist/), so it works offline. Writing goes through datasets.py's
atomic, manifest-checked writer: a second call finds the manifest and writes nothing. The source
folder is only read.

Why JPEG and not PNG: both of the project's loaders read these 28 px JPEGs faster than the
same images as PNG (2 CPU threads, 4,000 images: DALI 1.6x train / 1.4x eval, torchvision 1.2x /
1.2x; benchmarks/results/fashion_mnist_format_cpu.json, from tools/bench_fashion_format.py), and
JPEG is what DALI's GPU decoder (nvJPEG) accelerates. The cost: quality 95 changes a pixel by 0.9
grey levels on average (at most ~11 of 255), recorded in the same file.
"""
from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np

from .datasets import _write_atomically

SOURCE = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
INSTALL = f"apt-get install {PACKAGE}"
SPEC_NAME = "fashion-mnist"   # the manifest's "name": what engine/data.py recognizes
# split -> (images, labels): the file names of the package and of the dataset's own release
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# The dataset's labels 0..9, as its README names them.
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
FORMAT, QUALITY = "jpg", 95   # the measured choice (see the module docstring)

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}   # ndim -> magic of uint8 IDX files (images, labels)


def class_folder(label: int) -> str:
    """Folder name of a label: '<label>_<name>' with '/' and ' ' as '_' (e.g. '0_T-shirt_top').
    The index prefix makes the folders sort in label order, so the loaders' labels (sorted folder
    names) are the dataset's own 0..9 and per-class figures match published ones."""
    return f"{label}_" + CLASSES[label].replace("/", "_").replace(" ", "_")


def read_idx(path, ndim: int) -> np.ndarray:
    """A gzipped uint8 IDX file (big-endian magic 0x0803 images / 0x0801 labels, then one
    big-endian uint32 per dimension, then the data) as an array of `ndim` dimensions."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    head = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"source: {path!r} is not a uint8 IDX file of {ndim} dimension(s) "
                         f"(magic {magic and hex(magic)}, expected {hex(_IDX_MAGIC[ndim])})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - head != int(np.prod(dims)):
        raise ValueError(f"source: {path!r} holds {len(raw) - head} data bytes, but its header "
                         f"says {dims} ({int(np.prod(dims))}): truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def source_files(source) -> dict:
    """{split: (images path, labels path)}; an error naming the package or path if any is missing."""
    source = os.fspath(source)
    paths = {s: tuple(os.path.join(source, n) for n in names) for s, names in FILES.items()}
    missing = [p for pair in paths.values() for p in pair if not os.path.isfile(p)]
    if missing:
        hint = (f"install the Debian package {PACKAGE!r} ({INSTALL}, as root)"
                if os.path.abspath(source) == SOURCE else
                f"pass the folder holding {', '.join(n for p in FILES.values() for n in p)} "
                f"(the {PACKAGE} package puts them in {SOURCE})")
        raise FileNotFoundError(f"source: Fashion-MNIST files missing: {', '.join(missing)}; {hint}")
    return paths


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_split(images_path, labels_path):
    """(images uint8 [N, 28, 28], labels uint8 [N]) of one IDX pair, checked against each other."""
    x, y = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(x) != len(y):
        raise ValueError(f"source: {images_path!r} has {len(x)} images but {labels_path!r} has "
                         f"{len(y)} labels")
    if len(y) and int(y.max()) >= len(CLASSES):
        raise ValueError(f"source: {labels_path!r} has label {int(y.max())}; Fashion-MNIST has "
                         f"labels 0..{len(CLASSES) - 1}")
    return x, y


def _inside(path, folder) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def write_split(out, images, labels, *, prefix, fmt=FORMAT, quality=QUALITY) -> None:
    """Write images [N, H, W] (greyscale) as RGB files `out/<class_folder>/<prefix>_<index>.<fmt>`,
    the index being the image's position in its IDX file (traceable to the source)."""
    from PIL import Image

    for c in range(len(CLASSES)):
        os.makedirs(os.path.join(out, class_folder(c)), exist_ok=True)
    # PNG (the benchmark's alternative) at level 1: lossless like any level; here smaller than the
    # default 6 (925 vs 1050 bytes a file) and 1.4x faster to write (measured on 2,000 images)
    opts = {"quality": quality} if fmt == "jpg" else {"compress_level": 1}
    for i, (img, lab) in enumerate(zip(images, labels)):
        path = os.path.join(out, class_folder(int(lab)), f"{prefix}_{i:05d}.{fmt}")
        Image.fromarray(img, "L").convert("RGB").save(path, **opts)


def make_fashion_mnist(root, *, source=SOURCE) -> str:
    """Write Fashion-MNIST from the IDX files in `source` into `root/train/<class>/` (60,000) and
    `root/val/<class>/` (the 10,000 test images) as RGB JPEGs. Idempotent (the manifest records the
    source files' SHA-256, so the same data from another folder is the same dataset). Returns the
    absolute root. Raises FileNotFoundError naming the package and its install command if the
    files are missing, ValueError if `root` lies inside `source` (never written into)."""
    paths = source_files(source)
    if _inside(root, source):
        raise ValueError(f"root: {os.fspath(root)!r} is inside the source folder {os.fspath(source)!r}, "
                         f"which is only read; pick a root elsewhere (e.g. data/fashion_mnist)")
    spec = {"name": SPEC_NAME, "format": FORMAT, "quality": QUALITY,
            "sha256": {os.path.basename(p): _sha256(p) for pair in paths.values() for p in pair}}

    def write(tmp):
        counts = {}
        for split, (xp, yp) in paths.items():
            x, y = load_split(xp, yp)
            write_split(os.path.join(tmp, split), x, y, prefix=split)
            counts[split] = len(y)
        return counts

    return _write_atomically(root, spec, write)
