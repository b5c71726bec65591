"""Folder scanning, sharding and ordering (pure Python; no DALI)."""
import numpy as np
import pytest
from data_fixtures import N_CLASSES, N_IMAGES, tiny_root  # noqa: F401

from supcon_fast.data import folder


def test_scan_sorts_classes_into_labels(tiny_root):
    s = folder.scan(tiny_root)
    assert s.classes == ["cls0", "cls1", "cls2"]
    assert len(s) == N_IMAGES and s.num_classes == N_CLASSES
    for p, y in zip(s.paths, s.labels):
        assert f"/cls{y}/" in p
    assert s.labels.dtype == np.int64


def test_scan_file_list(tmp_path, tiny_root):
    s = folder.scan(tiny_root)
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\n" + "".join(f"{p} {y}\n" for p, y in zip(s.paths[:5], s.labels[:5])))
    f = folder.scan(lst)
    assert f.paths == s.paths[:5] and f.labels.tolist() == s.labels[:5].tolist()
    lst.write_text("a.jpg notalabel\n")
    with pytest.raises(ValueError, match="line 1"):
        folder.scan(lst)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="root.*does not exist"):
        folder.scan(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-folders"):
        folder.scan(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        folder.scan(tmp_path)


@pytest.mark.parametrize("num_shards", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [4, 5])
def test_train_shards_cover_epoch_without_overlap_except_padding(num_shards, batch_size):
    n = N_IMAGES
    shards = [folder.train_shard_indices(n, batch_size=batch_size, shard_id=k,
                                         num_shards=num_shards, seed=3, epoch=1)
              for k in range(num_shards)]
    steps = folder.train_steps(n, batch_size=batch_size, num_shards=num_shards)
    assert all(len(s) == steps * batch_size for s in shards)  # same steps on every rank
    allidx = np.concatenate(shards)
    assert set(allidx.tolist()) == set(range(n))  # every image at least once
    counts = np.bincount(allidx, minlength=n)
    assert counts.max() <= 2 and (counts == 2).sum() == len(allidx) - n  # only padding repeats
    assert len(allidx) - n < batch_size * num_shards


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = folder.epoch_permutation(100, 0, 0)
    assert np.array_equal(a, folder.epoch_permutation(100, 0, 0))
    assert not np.array_equal(a, folder.epoch_permutation(100, 1, 0))
    assert not np.array_equal(a, folder.epoch_permutation(100, 0, 1))


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_eval_shards_exact_cover(num_shards):
    parts = [folder.eval_shard_indices(N_IMAGES, shard_id=k, num_shards=num_shards)
             for k in range(num_shards)]
    assert np.array_equal(np.concatenate(parts), np.arange(N_IMAGES))


def test_spread_indices_keep_every_class_in_its_share():
    labels = np.repeat(np.arange(10), 6000)           # a folder lists its images class by class
    idx = folder.spread_indices(len(labels), 10000)
    assert len(idx) == 10000 and len(np.unique(idx)) == 10000 and idx.max() < len(labels)
    assert set(np.bincount(labels[idx])) <= {1000}    # the first 10,000 would be classes 0 and 1 only
    assert np.array_equal(folder.spread_indices(7, 0), np.arange(7))
    assert np.array_equal(folder.spread_indices(7, 9), np.arange(7))
    assert len(folder.spread_indices(7, 3)) == 3


def test_shard_args_are_checked():
    with pytest.raises(ValueError, match="shard_id"):
        folder.check_shard_args(2, 2)
    with pytest.raises(ValueError, match="num_shards"):
        folder.check_shard_args(0, 0)


def test_drop_last_and_too_large_batch():
    assert folder.train_steps(23, batch_size=4, num_shards=2, drop_last=True) == 2
    with pytest.raises(ValueError, match="batch_size"):
        folder.train_steps(23, batch_size=16, num_shards=2, drop_last=True)
