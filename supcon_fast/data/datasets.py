"""Dataset writers (the embedded digits set, a synthetic ImageNet-like set) and a dataset checker.

Writers are idempotent: a `manifest.json`, written last, records what a completed call wrote; a
second call with the same arguments finds it and writes nothing. Files are first written to a
temporary sibling folder and renamed into place, so an interrupted run or a concurrent second
process (e.g. every torchrun rank calling `make_digits`) never leaves a half-written dataset that
looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .corrupt import decode_error
from .folder import IMG_EXTENSIONS

DEFAULT_DIGITS_ROOT = os.path.join("data", "digits")
_MANIFEST = "manifest.json"


def _read_manifest(root):
    try:
        with open(os.path.join(root, _MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def written_spec(root):
    """The spec a writer here recorded for `root` (e.g. `{"name": "digits", "size": 32, ...}`), or
    None for a folder these writers did not write."""
    return (_read_manifest(root) or {}).get("spec")


def _write_atomically(root, spec, write_fn):
    """Run write_fn(tmpdir) and move the result to `root`, unless `root` already holds `spec`."""
    root = os.path.abspath(os.fspath(root))
    man = _read_manifest(root)
    if man is not None and man.get("spec") == spec:
        return root
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"root: {root!r} exists and is not a dataset written with {spec} "
                              f"(manifest: {man and man.get('spec')}); remove it or pick another "
                              f"root")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(root) + "-", dir=parent)
    try:
        counts = write_fn(tmp)
        with open(os.path.join(tmp, _MANIFEST), "w") as f:
            json.dump({"spec": spec, "counts": counts}, f, indent=1, sort_keys=True)
        if os.path.isdir(root):
            os.rmdir(root)  # empty (checked above)
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first: keep theirs if it is the same dataset.
            if (_read_manifest(root) or {}).get("spec") != spec:
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_digits(root=DEFAULT_DIGITS_ROOT, *, size=32, val_fraction=0.2, seed=0, quality=95) -> str:
    """Write scikit-learn's handwritten digits (1797 8x8 images that ship inside the package, no
    download) as RGB JPEGs upscaled to `size`x`size`, into `root/train/<digit>/` and
    `root/val/<digit>/` with a fixed stratified split. Returns the absolute root."""
    spec = {"name": "digits", "size": size, "val_fraction": val_fraction, "seed": seed,
            "quality": quality}

    def write(tmp):
        from PIL import Image
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        idx = np.arange(len(d.target))
        tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=d.target)
        counts = {}
        for split, ids in (("train", tr), ("val", va)):
            for c in range(10):
                os.makedirs(os.path.join(tmp, split, str(c)), exist_ok=True)
            for i in sorted(ids):
                # Pixel values are 0..16; scale to 0..255, white digit on black as in the source.
                g = (d.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                im = Image.fromarray(g, "L").resize((size, size), Image.BICUBIC).convert("RGB")
                im.save(os.path.join(tmp, split, str(d.target[i]), f"{i:05d}.jpg"), quality=quality)
            counts[split] = len(ids)
        return counts

    return _write_atomically(root, spec, write)


def _natural_image(rng, h, w, tint):
    """A cheap natural-image look-alike: a 1/f-style sum of upsampled noise octaves (smooth regions,
    some texture, edges at several scales), a few soft ellipses and grain, tinted per class. JPEG
    decode cost depends on content; flat or white-noise images would make the benchmark lie."""
    from PIL import Image

    img = np.zeros((h, w, 3), np.float32)
    amp = 1.0
    for cells in (3, 6, 12, 24, 48, 96):
        small = rng.standard_normal((max(2, cells * h // w), cells, 3)).astype(np.float32)
        # Mode F (float) images, resized per channel: PIL has no 3-channel float mode.
        chans = [np.asarray(Image.fromarray(small[..., k]).resize((w, h), Image.BICUBIC))
                 for k in range(3)]
        img += amp * np.stack(chans, -1)
        amp *= 0.55
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
        d = 8 * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 - 1)
        mask = 1.0 / (1.0 + np.exp(np.minimum(d, 50.0)))  # clip: exp overflows far outside
        img += mask[..., None] * rng.uniform(-1.5, 1.5, 3).astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6)
    # Sensor-like grain: without it the JPEGs are ~20 KB, far cheaper to entropy-decode than
    # photographs (ImageNet averages ~110 KB); with it they are ~60 KB.
    img = 128 + 40 * img + tint + rng.normal(0, 10, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic(root, *, images=500, classes=10, val_images=None, seed=0, quality=90) -> str:
    """Write `images` training and `val_images` (default max(classes, images // 10)) validation
    JPEGs of varied sizes around 500x375 (ImageNet's typical size) into
    `root/{train,val}/<class>/`, for throughput work. Content is synthetic; the labels only
    follow a per-class colour tint."""
    if images < classes or classes < 1:
        raise ValueError(f"images: need at least one image per class, got images={images}, "
                         f"classes={classes}")
    val_images = max(classes, images // 10) if val_images is None else val_images
    spec = {"name": "synthetic", "images": images, "classes": classes, "val_images": val_images,
            "seed": seed, "quality": quality}

    def write(tmp):
        from PIL import Image

        rng = np.random.default_rng(seed)
        tints = rng.uniform(-40, 40, (classes, 3)).astype(np.float32)
        counts = {}
        for split, n in (("train", images), ("val", val_images)):
            for c in range(min(classes, n)):  # no empty class folders
                os.makedirs(os.path.join(tmp, split, f"class_{c:04d}"), exist_ok=True)
            for i in range(n):
                c = i % classes
                w = int(rng.integers(400, 601))
                h = int(np.clip(w * rng.uniform(0.6, 0.9), 240, 500))
                if rng.random() < 0.3:  # some portrait images, as in ImageNet
                    w, h = h, w
                arr = _natural_image(rng, h, w, tints[c])
                Image.fromarray(arr).save(
                    os.path.join(tmp, split, f"class_{c:04d}", f"{split}_{i:06d}.jpg"),
                    quality=quality)
            counts[split] = n
        return counts

    return _write_atomically(root, spec, write)


@dataclass
class CheckReport:
    """What `check_dataset` found. `ok` is False if anything would stop or distort training."""

    root: str
    images: int = 0
    corrupt: list = field(default_factory=list)        # (path, reason)
    empty_classes: list = field(default_factory=list)  # class folders without images
    stray_files: list = field(default_factory=list)    # files a loader would ignore

    @property
    def ok(self):
        return not (self.corrupt or self.empty_classes or self.stray_files)

    def format(self):
        lines = [f"{self.root}: {self.images} images, "
                 f"{len(self.corrupt)} corrupt, {len(self.empty_classes)} empty classes, "
                 f"{len(self.stray_files)} stray files"]
        lines += [f"  corrupt: {p} ({r})" for p, r in self.corrupt]
        lines += [f"  empty class: {p}" for p in self.empty_classes]
        lines += [f"  stray file: {p}" for p in self.stray_files]
        return "\n".join(lines)


def _split_dirs(root):
    """`root` itself if it is a split folder (root/<class>/<image>), else its split sub-folders
    (a dataset root such as data/digits holding train/ and val/)."""
    subs = sorted(e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    def holds_images(d):
        return any(f.lower().endswith(IMG_EXTENSIONS) for _, _, fs in os.walk(d) for f in fs)
    def is_split(d):
        return any(holds_images(s.path) for s in os.scandir(d) if s.is_dir())
    if subs and all(is_split(s) for s in subs) and not any(
            f.lower().endswith(IMG_EXTENSIONS) for s in subs for f in os.listdir(s)):
        return subs
    return [root]


def check_dataset(root) -> list:
    """Fully decode every image under `root` (a split folder or a dataset root with train/ val/)
    and report corrupt or unreadable images, empty classes and stray files. Returns one
    CheckReport per split folder."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root: dataset folder {root!r} does not exist")
    reports = []
    for split in _split_dirs(root):
        rep = CheckReport(split)
        for e in sorted(os.scandir(split), key=lambda e: e.name):
            if e.name.startswith(".") or e.name == _MANIFEST:
                continue
            if not e.is_dir():
                rep.stray_files.append(e.path)
                continue
            n_cls = 0
            for dirpath, dirnames, files in sorted(os.walk(e.path)):
                dirnames.sort()
                for name in sorted(files):
                    p = os.path.join(dirpath, name)
                    if not name.lower().endswith(IMG_EXTENSIONS):
                        rep.stray_files.append(p)
                        continue
                    n_cls += 1
                    reason = decode_error(p)  # the loaders' test: they agree with this report
                    if reason is not None:
                        rep.corrupt.append((p, reason))
            rep.images += n_cls
            if n_cls == 0:
                rep.empty_classes.append(e.path)
        reports.append(rep)
    return reports
