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
