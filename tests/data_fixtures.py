"""Tiny JPEG datasets for the data tests (imported by tests/test_data_*.py; not a conftest).

Each class has a dominant colour channel (class c -> channel c brighter), so a view's class can be
read off its pixels when the policy keeps colours ('none'), plus texture so that two crops of one
image differ. 23 images: no batch size used in the tests divides it.
"""
import os

import numpy as np
import pytest

N_IMAGES = 23
N_CLASSES = 3


def write_tiny(root, n=N_IMAGES, classes=N_CLASSES, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"cls{c}"), exist_ok=True)
    for i in range(n):
        c = i % classes
        h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
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
