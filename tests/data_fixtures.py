"""Tiny datasets for the tests (imported by the test modules; not a conftest): JPEG class folders for
the data and training tests, and a stand-in for the Fashion-MNIST IDX files.

Each class has a dominant colour channel (class c -> channel c brighter), so a view's class can be
read off its pixels when the policy keeps colours ('none'), plus texture so that two crops of one
image differ. 23 images: no batch size used in the tests divides it.
"""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from supcon_fast.data import fashion_mnist as fm

N_IMAGES = 23
N_CLASSES = 3


def write_tiny(root, n=N_IMAGES, classes=N_CLASSES, seed=0, size=None):
    """One split: ``n`` JPEGs, image i in class folder ``cls{i % classes}``; sides of 36-59 px, or
    ``size`` x ``size`` (the in-memory loader needs one size). Returns ``str(root)``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"cls{c}"), exist_ok=True)
    for i in range(n):
        c = i % classes
        h, w = (size, size) if size else (int(rng.integers(36, 60)), int(rng.integers(36, 60)))
        img = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
        img[..., c] += 150  # dominant channel identifies the class
        img[: h // 2, : w // 3] //= 2  # some structure so different crops differ
        Image.fromarray(img).save(os.path.join(root, f"cls{c}", f"img_{i:03d}.jpg"), quality=95)
    return str(root)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny") / "train")


BAD_KINDS = ("truncated", "zero_byte", "not_image")


def write_bad(path, kind, like=None):
    """A bad file under an image name: 'truncated' (the first half of the JPEG `like`: header
    intact, so only a decode finds it), 'zero_byte', or 'not_image' (an HTML page)."""
    if kind == "truncated":
        with open(like, "rb") as f:
            data = f.read()
        data = data[:len(data) // 2]
    else:
        data = {"zero_byte": b"", "not_image": b"<html>404 not found</html>"}[kind]
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def write_unusual(root, cls="cls0"):
    """Valid images a loader must still read: CMYK and greyscale JPEGs, a PNG named .jpg, and odd
    sizes (3x1, 9x200). Returns their paths."""
    from PIL import Image

    rng = np.random.default_rng(1)
    d = os.path.join(root, cls)
    os.makedirs(d, exist_ok=True)
    out = []
    for name, mode, shape, fmt in (("u_cmyk.jpg", "CMYK", (40, 44, 3), "JPEG"),
                                   ("u_grey.jpg", "L", (37, 41, 3), "JPEG"),
                                   ("u_png.jpg", "RGB", (39, 35, 3), "PNG"),
                                   ("u_tiny.jpg", "RGB", (1, 3, 3), "JPEG"),
                                   ("u_wide.jpg", "RGB", (9, 200, 3), "JPEG")):
        p = os.path.join(d, name)
        img = Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8)).convert(mode)
        img.save(p, format=fmt)
        out.append(p)
    return out


def make_tiny_folder(root, n_per_class=8, classes=3, size=16):
    """A dataset root (the trainer's layout): train/ with ``n_per_class`` images a class, val/ with 4."""
    root = Path(root)
    write_tiny(root / "train", n=n_per_class * classes, classes=classes, seed=0, size=size)
    write_tiny(root / "val", n=4 * classes, classes=classes, seed=1, size=size)
    return root


def tiny_argv(data, out, **kw):
    argv = ["--dataset", "folder", "--data", str(data), "--out", str(out), "--arch", "resnet18", "--width", "4",
            "--size", "16", "--batch-size", "8", "--epochs", "1", "--linear-epochs", "2", "--eval-batch-size", "16",
            "--log-every", "1"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def write_idx(path, arr):
    """arr uint8 of 3 (images) or 1 (labels) dimensions as a gzipped IDX file."""
    magic = {3: 0x00000803, 1: 0x00000801}[arr.ndim]
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + np.ascontiguousarray(arr, np.uint8).tobytes())


def write_fashion_source(folder, n_train=30, n_test=20, seed=0):
    """A tiny stand-in for /usr/share/datasets/fashion-mnist: the four files under their real
    names, every class in both splits, images a smooth class-dependent pattern plus noise."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    yy, xx = np.mgrid[0:28, 0:28]
    data = {}
    for split, n in (("train", n_train), ("val", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        x = np.stack([np.clip(120 + 100 * np.sin((xx + 3 * c) / (2 + c)) + rng.normal(0, 8, (28, 28)),
                              0, 255) for c in y]).astype(np.uint8)
        images, labels = fm.FILES[split]
        write_idx(os.path.join(folder, images), x)
        write_idx(os.path.join(folder, labels), y)
        data[split] = (x, y)
    return data
