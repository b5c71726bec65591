"""The Fashion-MNIST maker on small IDX files written here (CI needs no Debian package)."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from supcon_fast.data import fashion_mnist as fm
from supcon_fast.data import make_fashion_mnist, scan

from data_fixtures import write_fashion_source, write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    return src, write_fashion_source(src)


def test_read_idx_round_trip_and_errors(tmp_path):
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "i.gz", x)
    assert np.array_equal(fm.read_idx(tmp_path / "i.gz", 3), x)
    with pytest.raises(ValueError, match="magic"):      # labels read as images
        write_idx(tmp_path / "l.gz", np.zeros(3, np.uint8))
        fm.read_idx(tmp_path / "l.gz", 3)
    with gzip.open(tmp_path / "t.gz", "wb") as f:       # header says 2 images, data holds 1
        f.write((0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28))
                + bytes(28 * 28))
    with pytest.raises(ValueError, match="truncated"):
        fm.read_idx(tmp_path / "t.gz", 3)


def test_layout_labels_pixels_and_idempotence(tmp_path, source):
    src, data = source
    src_before = _tree(src)
    root = make_fashion_mnist(tmp_path / "fm", source=src)
    tr, va = scan(os.path.join(root, "train")), scan(os.path.join(root, "val"))
    names = [fm.class_folder(i) for i in range(10)]
    assert tr.classes == va.classes == names                    # sorted folder order = label order
    assert names[0] == "0_T-shirt_top" and names[9] == "9_Ankle_boot"
    assert (len(tr), len(va)) == (30, 20)
    for split, s in (("train", tr), ("val", va)):
        x, y = data[split]
        for path, label in zip(s.paths, s.labels):
            i = int(os.path.basename(path).split("_")[1].split(".")[0])   # index in the IDX file
            assert label == y[i] and path.endswith(".jpg")
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (28, 28)
                a = np.asarray(im, np.int16)
            assert np.abs(a - x[i][..., None]).mean() < 3           # high-quality JPEG of the source
    man = json.load(open(os.path.join(root, "manifest.json")))
    assert man["counts"] == {"train": 30, "val": 20}
    assert man["spec"]["name"] == "fashion-mnist" and set(man["spec"]["sha256"]) == {
        n for pair in fm.FILES.values() for n in pair}
    written = _tree(root)
    assert make_fashion_mnist(tmp_path / "fm", source=src) == root    # second call: nothing written
    assert _tree(root) == written
    assert _tree(src) == src_before                                    # the source is only read


def test_missing_package_names_it_and_the_install_command(tmp_path, monkeypatch):
    missing = str(tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setattr(fm, "SOURCE", missing)          # as if this were the package's folder
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        make_fashion_mnist(tmp_path / "fm", source=missing)
    with pytest.raises(FileNotFoundError, match="source: .*other"):   # another folder: names it
        make_fashion_mnist(tmp_path / "fm", source=tmp_path / "other")
    assert not (tmp_path / "fm").exists()


def test_refuses_root_inside_source_and_foreign_folders(tmp_path, source):
    src, _ = source
    before = _tree(src)
    with pytest.raises(ValueError, match="root: .*inside the source"):
        make_fashion_mnist(src / "out", source=src)
    assert _tree(src) == before and not (src / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="root"):
        make_fashion_mnist(tmp_path / "mine", source=src)


def test_bad_labels_are_refused(tmp_path, source):
    src, data = source
    write_idx(src / fm.FILES["val"][1], data["val"][1][:5])            # 20 images, 5 labels
    with pytest.raises(ValueError, match="20 images but .* 5 labels"):
        make_fashion_mnist(tmp_path / "fm", source=src)


def test_cli(tmp_path, source):
    src, _ = source
    tool = os.path.join(REPO, "tools", "make_dataset.py")
    ok = subprocess.run([sys.executable, tool, "fashion-mnist", str(tmp_path / "fm"), "--source", str(src)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "fm")
    bad = subprocess.run([sys.executable, tool, "fashion-mnist", str(tmp_path / "x"), "--source",
                          str(tmp_path / "nothing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "dataset-fashion-mnist" in bad.stderr and "nothing" in bad.stderr


def test_eval_keeps_the_whole_image(tmp_path, source):
    """Stored at the training size: the eval loaders resize to it, no centre-crop margin."""
    from supcon_fast.engine import config
    from supcon_fast.engine.data import eval_resize

    root = make_fashion_mnist(tmp_path / "fm", source=source[0])
    assert eval_resize(config.resolve(["--data", root, "--size", "28"])) == 28


@pytest.mark.parametrize("corruption", ["gaussian_noise", "zoom_blur", "elastic_transform"])
def test_28px_images_can_be_corrupted(corruption):
    """imagecorruptions refuses images under 32 px: robustness pads, corrupts, and keeps the centre."""
    from supcon_fast.robustness import corruptions as rb

    img = np.repeat(np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8), 3, axis=2)
    a = rb.corrupt_image(img, corruption, 3, seed=5)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, rb.corrupt_image(img, corruption, 3, seed=5)) and not np.array_equal(a, img)
