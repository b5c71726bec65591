"""--data and --dataset: a folder with train/ and val/ class folders trains as given; the digits are
written only at their default root or when asked by name; a missing, empty or mis-laid folder is an
error naming the path and the expected layout; nothing is ever written inside a dataset folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supcon_fast.data import DEFAULT_DIGITS_ROOT
from supcon_fast.engine import config
from supcon_fast.engine.data import dataset_kind, ensure_dataset, eval_resize, with_data
from supcon_fast.engine.run import run
from data_fixtures import make_tiny_folder

ROOT = Path(__file__).resolve().parents[1]


def snapshot(root):
    """Every path under root with its size and mtime: any write inside shows up."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob("*")}


def test_data_path_alone_trains_on_that_folder_and_writes_nothing_there(tmp_path):
    data = make_tiny_folder(tmp_path / "my data")
    before = snapshot(data)
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--width", "4", "--size", "16", "--batch-size", "8",
            "--max-steps", "1", "--linear-epochs", "0", "--knn-every", "0", "--eval-batch-size", "16"]
    cfg = config.resolve(argv)
    assert cfg["dataset"] == "auto" and dataset_kind(cfg) == "folder"
    res = run(cfg)
    assert res["dataset"] == "folder" and res["data_root"] == str(data.resolve())
    assert (res["train_images"], res["val_images"]) == (24, 12) and res["steps"] == 1
    assert snapshot(data) == before


@pytest.mark.parametrize("loader", ["auto", "memory"])
def test_knn_bank_holds_every_class_when_capped(tmp_path, loader):
    from supcon_fast.engine.data import build_loaders
    data = make_tiny_folder(tmp_path / "d", n_per_class=8, classes=3)
    cfg = config.resolve(["--data", str(data), "--out", str(tmp_path / "o"), "--size", "16", "--batch-size", "8",
                          "--knn-max-train", "6", "--eval-batch-size", "4", "--backend", loader])
    loaders = build_loaders(cfg)
    labels = [int(v) for _, y in loaders.knn_bank for v in y.view(-1)]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]           # not the first 6 (class 0 only)
    assert sum(y.numel() for _, y in loaders.train_eval) == 24


def test_train_folder_is_scanned_once(tmp_path, monkeypatch):
    """The train loader, the probe's fit set and the kNN bank share one scan and header check of the
    train folder (the val folder has its own)."""
    from supcon_fast.data import folder
    from supcon_fast.engine.data import build_loaders
    data = make_tiny_folder(tmp_path / "d", n_per_class=8, classes=3)
    scanned = []
    real_scan = folder.scan
    monkeypatch.setattr(folder, "scan", lambda root: scanned.append(os.path.basename(os.path.normpath(root)))
                        or real_scan(root))
    cfg = config.resolve(["--data", str(data), "--out", str(tmp_path / "o"), "--size", "16", "--batch-size", "8",
                          "--knn-max-train", "6", "--eval-batch-size", "4", "--backend", "torch"])
    loaders = build_loaders(cfg)
    assert sorted(scanned) == ["train", "val"]
    assert sum(y.numel() for _, y in loaders.train_eval) == 24 and len(loaders.train) > 0


def test_dataset_kind():
    assert dataset_kind({"dataset": "auto", "data": DEFAULT_DIGITS_ROOT}) == "digits"
    assert dataset_kind({"dataset": "auto", "data": os.path.abspath(DEFAULT_DIGITS_ROOT)}) == "digits"
    assert dataset_kind({"dataset": "auto", "data": "data/digit"}) == "folder"
    assert dataset_kind({"dataset": "digits", "data": "/elsewhere"}) == "digits"
    assert dataset_kind({"dataset": "auto", "backend": "synthetic", "data": "x"}) == "synthetic"
    # a checkpoint's explicit digits request was for its own root, not another one
    assert with_data({"dataset": "digits", "data": "a"}, "b") == {"dataset": "auto", "data": "b"}
    assert with_data({"dataset": "folder", "data": "a"}, "b") == {"dataset": "folder", "data": "b"}
    assert with_data({"dataset": "digits", "data": "a"}, None) == {"dataset": "digits", "data": "a"}


def test_digits_only_at_the_default_root_or_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = ensure_dataset(config.resolve([]))                     # the default job: written if missing
    assert root == str(tmp_path / DEFAULT_DIGITS_ROOT)
    assert json.loads((Path(root) / "manifest.json").read_text())["counts"] == {"train": 1437, "val": 360}
    assert eval_resize(config.resolve(["--size", "16"])) == 16     # digits: no resize margin
    with pytest.raises(FileNotFoundError, match="typo"):           # another path is never made into digits
        ensure_dataset(config.resolve(["--data", "data/typo"]))
    assert not (tmp_path / "data" / "typo").exists()
    named = ensure_dataset(config.resolve(["--dataset", "digits", "--data", "elsewhere/d"]))   # asked by name
    assert (Path(named) / "val" / "9").is_dir()
    assert eval_resize(config.resolve(["--data", "elsewhere/d", "--size", "16"])) == 16   # known by its manifest
    assert eval_resize(config.resolve(["--data", "elsewhere/other", "--size", "16"])) is None


def test_digits_by_name_never_write_into_a_users_folder(tmp_path):
    data = make_tiny_folder(tmp_path / "mine")
    before = snapshot(data)
    with pytest.raises(ValueError, match=f"{data}.*--dataset folder"):
        ensure_dataset(config.resolve(["--dataset", "digits", "--data", str(data)]))
    assert snapshot(data) == before


def _layouts(tmp_path):
    """(folder, what the error must say) for each wrong layout; folders made here, checked unchanged."""
    empty = tmp_path / "empty"
    empty.mkdir()
    split = make_tiny_folder(tmp_path / "split") / "train"          # one split given as the dataset root
    no_val = make_tiny_folder(tmp_path / "noval")
    for f in (no_val / "val").rglob("*.jpg"):
        f.unlink()
    for d in sorted((no_val / "val").iterdir()):
        d.rmdir()
    (no_val / "val").rmdir()
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    (flat / "val" / "a").mkdir(parents=True)
    (flat / "train" / "x.jpg").write_bytes(b"")                     # images, but no class folders
    noimg = tmp_path / "noimg"
    for s in ("train", "val"):
        (noimg / s / "a").mkdir(parents=True)
        (noimg / s / "a" / "notes.txt").write_text("x")
    return [(tmp_path / "missing", "does not exist"), (empty, "the folder is empty"),
            (split, "sub-folders hold images"), (no_val, "no val/ folder"),
            (flat, "holds no class folders"), (noimg, "no images under")]


def test_wrong_layouts_are_errors_naming_the_path_and_layout(tmp_path):
    for folder, what in _layouts(tmp_path):
        before = snapshot(folder) if folder.exists() else None
        with pytest.raises((FileNotFoundError, ValueError)) as e:
            ensure_dataset(config.resolve(["--data", str(folder)]))
        msg = str(e.value)
        assert what in msg and str(folder) in msg and "train/<class>/<image>" in msg, msg
        assert (snapshot(folder) if folder.exists() else None) == before


def test_cli_data_typo_exits_2_and_writes_nothing(tmp_path):
    typo = tmp_path / "dtaa"
    r = subprocess.run([sys.executable, "tools/train.py", "--data", str(typo), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(typo) in r.stderr and "val/<class>/<image>" in r.stderr
    assert not typo.exists() and not (tmp_path / "o").exists()    # no dataset, no empty run folder


def test_corruption_cache_defaults_outside_the_dataset(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("eval_corruption_tool", ROOT / "tools" / "eval_corruption.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    data = tmp_path / "digits"
    a, b = tool.default_cache(str(data), 0), tool.default_cache(str(tmp_path / "other" / "digits"), 0)
    assert a.startswith(os.path.join("runs", "corruptions", "digits-")) and a.endswith("-seed0") and a != b
    assert not os.path.abspath(a).startswith(str(data))
