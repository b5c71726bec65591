"""Dataset writers and the checker (no DALI)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from supcon_fast.data import check_dataset, make_digits, make_synthetic, scan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_make_digits_split_and_idempotent(tmp_path):
    root = make_digits(tmp_path / "digits")
    tr, va = scan(os.path.join(root, "train")), scan(os.path.join(root, "val"))
    assert tr.classes == [str(c) for c in range(10)] == va.classes
    assert len(tr) + len(va) == 1797 and len(va) == 360  # sklearn's digits, 80/20
    # stratified: every class keeps ~20% in val
    ratio = np.bincount(va.labels, minlength=10) / (np.bincount(tr.labels, minlength=10)
                                                    + np.bincount(va.labels, minlength=10))
    assert np.all(np.abs(ratio - 0.2) < 0.02)
    assert not set(map(os.path.basename, tr.paths)) & set(map(os.path.basename, va.paths))
    with Image.open(tr.paths[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    before = {p: os.stat(p).st_mtime_ns for p in _files(root)}
    assert make_digits(tmp_path / "digits") == root  # second call: nothing written
    assert {p: os.stat(p).st_mtime_ns for p in _files(root)} == before
    assert json.load(open(os.path.join(root, "manifest.json")))["counts"] == {"train": 1437,
                                                                               "val": 360}


def test_writer_refuses_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="root"):
        make_digits(tmp_path / "x")


def test_make_synthetic_sizes(tmp_path):
    root = make_synthetic(tmp_path / "syn", images=6, classes=3, val_images=3)
    s = scan(os.path.join(root, "train"))
    assert len(s) == 6 and s.num_classes == 3 and len(scan(os.path.join(root, "val"))) == 3
    for p in s.paths:
        with Image.open(p) as im:
            w, h = im.size
            assert 240 <= min(w, h) and max(w, h) <= 600 and im.mode == "RGB"
            assert np.asarray(im).std() > 10  # not flat


def test_check_reports_corrupt_empty_and_stray(tmp_path):
    from data_fixtures import write_tiny

    root = write_tiny(tmp_path / "d", n=6)
    (reports,) = check_dataset(root)
    assert reports.ok and reports.images == 6
    bad = os.path.join(root, "cls0", "bad.jpg")
    with open(bad, "wb") as f:
        f.write(b"<html>404</html>")
    good = scan(root).paths[1]
    trunc = os.path.join(root, "cls1", "trunc.jpg")
    with open(good, "rb") as f, open(trunc, "wb") as g:
        g.write(f.read()[:300])  # valid header, truncated data
    os.makedirs(os.path.join(root, "empty"))
    with open(os.path.join(root, "README"), "w") as f:
        f.write("stray")
    (rep,) = check_dataset(root)
    assert not rep.ok
    assert sorted(p for p, _ in rep.corrupt) == sorted([bad, trunc])
    assert rep.empty_classes == [os.path.join(root, "empty")]
    assert rep.stray_files == [os.path.join(root, "README")]
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_dataset.py"), "check",
                          root], capture_output=True, text=True)
    assert out.returncode == 1 and "bad.jpg" in out.stdout and "trunc.jpg" in out.stdout


def test_check_dataset_root_with_splits(tmp_path):
    from data_fixtures import write_tiny

    write_tiny(tmp_path / "ds" / "train", n=4)
    write_tiny(tmp_path / "ds" / "val", n=3)
    reps = check_dataset(tmp_path / "ds")
    assert [os.path.basename(r.root) for r in reps] == ["train", "val"]
    assert [r.images for r in reps] == [4, 3] and all(r.ok for r in reps)
    with pytest.raises(FileNotFoundError, match="root"):
        check_dataset(tmp_path / "missing")
