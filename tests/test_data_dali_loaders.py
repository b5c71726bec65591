"""DALI train/eval loaders in CPU-only mode: layout, labels, randomness, determinism, resume,
sharding, policies, errors."""
import os

import numpy as np
import pytest
import torch
from data_fixtures import (BAD_KINDS, N_IMAGES, tiny_root, write_bad,  # noqa: F401
                           write_tiny, write_unusual)

pytest.importorskip("nvidia.dali")

from supcon_fast.data import POLICIES, build_eval_loader, build_train_loader, scan  # noqa: E402

SIZE = 32


def _train(root, **kw):
    kw = {"batch_size": 4, "size": SIZE, **kw}
    return build_train_loader(root, **kw)


def _collect(loader, limit=None):
    out = []
    for i, (views, labels) in enumerate(loader):
        out.append(([v.clone() for v in views], labels.clone()))
        if limit is not None and i + 1 == limit:
            break
    return out


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb))
        for (va, la), (vb, lb) in zip(a, b))


def _pixel_class(views):
    """Class of each image from its dominant channel (see data_fixtures)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = views.float() * std + mean
    return rgb.mean(dim=(2, 3)).argmax(dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shapes_dtype_layout(tiny_root, dtype):
    loader = _train(tiny_root, n_views=3, dtype=dtype, policy="none")
    assert len(loader) == -(-N_IMAGES // 4) and loader.num_samples == N_IMAGES
    assert loader.num_classes == 3
    batches = _collect(loader)
    assert len(batches) == len(loader)
    for views, labels in batches:
        assert len(views) == 3 and labels.dtype == torch.int64 and labels.shape == (4,)
        for v in views:
            assert v.shape == (4, 3, SIZE, SIZE) and v.dtype == dtype and v.device.type == "cpu"
            assert v.is_contiguous(memory_format=torch.channels_last)
            assert torch.isfinite(v.float()).all() and v.float().abs().max() < 3.0  # normalized


def test_labels_match_files(tiny_root):
    samples = scan(tiny_root)
    loader = _train(tiny_root, policy="none", seed=5)
    loader.set_epoch(2)
    expected = samples.labels[loader.epoch_indices()]
    got = torch.cat([lab for _, lab in _collect(loader)]).numpy()
    assert np.array_equal(got, expected)
    for views, labels in _collect(loader):  # pixels agree with the label of each sample
        for v in views:
            assert torch.equal(_pixel_class(v), labels)


def test_views_are_independent_draws(tiny_root):
    (views, _), = _collect(_train(tiny_root, n_views=2), limit=1)
    diff = (views[0].float() - views[1].float()).abs().flatten(1).mean(1)
    assert (diff > 1e-3).all()  # every image's two views differ


def test_same_seed_same_batches_other_seed_or_epoch_differs(tiny_root):
    a = _collect(_train(tiny_root, seed=1))
    other = _train(tiny_root, seed=1, num_threads=1)
    other.set_epoch(1)
    e1 = _collect(other)  # running another epoch first must not change epoch 0
    other.set_epoch(0)
    assert _same(a, _collect(other))
    assert not torch.equal(a[0][0][0], e1[0][0][0])
    b = _collect(_train(tiny_root, seed=2))
    assert not torch.equal(a[0][0][0], b[0][0][0])


@pytest.mark.parametrize("use_dali_checkpoint", [True, False])
def test_resume_mid_epoch_is_exact(tiny_root, use_dali_checkpoint):
    full = _collect(_train(tiny_root, seed=7, policy="simclr"))
    src = _train(tiny_root, seed=7, policy="simclr")
    src.set_epoch(0)
    it = iter(src)
    next(it), next(it)
    sd = src.state_dict()
    assert sd["epoch"] == 0 and sd["step"] == 2 and (sd["dali"] is not None)
    if not use_dali_checkpoint:
        sd["dali"] = None  # falls back to replaying the first 2 batches
    dst = _train(tiny_root, seed=7, policy="simclr")
    dst.load_state_dict(sd)
    dst.set_epoch(0)  # the trainer calls this; it must keep the pending resume
    assert _same(_collect(dst), full[2:])
    skip = _train(tiny_root, seed=7, policy="simclr")
    skip.skip_batches(3)
    assert _same(_collect(skip), full[3:])
    with pytest.raises(ValueError, match="seed"):
        _train(tiny_root, seed=8).load_state_dict(sd)


def test_state_at_epoch_end_resumes_with_nothing_left(tiny_root):
    ld = _train(tiny_root, seed=7, policy="none")
    n = len(_collect(ld))
    sd = ld.state_dict()
    assert sd["step"] == n == len(ld) and sd["dali"] is None
    again = _train(tiny_root, seed=7, policy="none")
    again.load_state_dict(sd)
    assert _collect(again) == []
    again.set_epoch(1)  # the next epoch runs in full
    assert len(_collect(again)) == n


def test_resume_from_another_ranks_state(tiny_root):
    # A trainer that saves only rank 0's loader state: rank 1 must still resume exactly.
    full1 = _collect(_train(tiny_root, seed=7, shard_id=1, num_shards=2))
    r0 = _train(tiny_root, seed=7, shard_id=0, num_shards=2)
    it = iter(r0)
    next(it)
    sd = r0.state_dict()
    assert sd["dali"] is not None and sd["step"] == 1
    r1 = _train(tiny_root, seed=7, shard_id=1, num_shards=2)
    r1.load_state_dict(sd)
    assert _same(_collect(r1), full1[1:])
    with pytest.raises(ValueError, match="num_shards"):
        _train(tiny_root, seed=7).load_state_dict(sd)


@pytest.mark.parametrize("num_shards", [2, 3])
def test_train_shards_partition_epoch(tiny_root, num_shards):
    samples = scan(tiny_root)
    loaders = [_train(tiny_root, policy="none", shard_id=k, num_shards=num_shards)
               for k in range(num_shards)]
    assert len({len(ld) for ld in loaders}) == 1  # same steps on every rank
    idx = [ld.epoch_indices() for ld in loaders]
    for ld, ix in zip(loaders, idx):
        labels = torch.cat([lab for _, lab in _collect(ld)]).numpy()
        assert np.array_equal(labels, samples.labels[ix])
    allidx = np.concatenate(idx)
    assert set(allidx.tolist()) == set(range(N_IMAGES))
    assert len(allidx) - len(set(allidx.tolist())) == len(allidx) - N_IMAGES  # only padding


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_eval_sees_every_image_once(tiny_root, num_shards):
    samples = scan(tiny_root)
    ref = build_eval_loader(tiny_root, batch_size=N_IMAGES, size=SIZE)
    (ref_x, ref_y), = list(ref)
    xs, ys = [], []
    for k in range(num_shards):
        ld = build_eval_loader(tiny_root, batch_size=4, size=SIZE, shard_id=k,
                               num_shards=num_shards)
        got = list(ld)
        assert len(got) == len(ld)
        for x, y in got:
            assert x.shape[1:] == (3, SIZE, SIZE) and x.shape[0] == y.shape[0] <= 4
            assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.int64
            xs.append(x)
            ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    assert np.array_equal(y.numpy(), samples.labels)  # every image once, in file order
    assert torch.allclose(x, ref_x) and torch.equal(_pixel_class(x), y)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs(tiny_root, policy):
    loader = _train(tiny_root, policy=policy, n_views=2)
    (views, labels), = _collect(loader, limit=1)
    assert all(v.shape == (4, 3, SIZE, SIZE) and torch.isfinite(v).all() for v in views)
    assert not torch.equal(views[0], views[1])


def test_bad_arguments_name_the_argument(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="policy.*'simclr'"):
        _train(tiny_root, policy="simclrr")
    with pytest.raises(FileNotFoundError, match="root.*missing"):
        _train(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="root"):
        build_eval_loader(str(tmp_path / "missing"), batch_size=2)
    with pytest.raises(ValueError, match="shard_id"):
        _train(tiny_root, shard_id=3, num_shards=3)
    with pytest.raises(ValueError, match="device"):
        _train(tiny_root, device="meta")
    with pytest.raises(ValueError, match="dtype"):
        _train(tiny_root, dtype=torch.int32)


def _with_bad(tmp_path, kind, n=23, name="zz_bad.jpg"):
    """A tiny folder plus one bad file (see data_fixtures.write_bad) in class 1."""
    root = write_tiny(tmp_path / "d", n=n)
    bad = write_bad(os.path.join(root, "cls1", name), kind,
                    like=os.path.join(root, "cls0", "img_000.jpg"))
    return root, bad


def test_bad_headers_found_before_training(tmp_path):
    root, bad = _with_bad(tmp_path, "not_image", n=9)
    with pytest.raises(ValueError, match="zz_bad.jpg.*make_dataset.py check.*skip_corrupt=True"):
        _train(root)
    with pytest.warns(UserWarning, match="leaving out 1 image.*zz_bad.jpg"):
        ok = _train(root, skip_corrupt=True)
    assert ok.num_samples == 9 and len(_collect(ok)) == len(ok) and list(ok.skipped) == [bad]
    with pytest.raises(ValueError, match="zz_bad.jpg"):
        _train(root, verify="full")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_mid_epoch_is_named(tmp_path, kind):
    # verify='none' lets every kind through to the epoch; a truncated file passes 'header' too
    root, bad = _with_bad(tmp_path, kind)
    verify = "header" if kind == "truncated" else "none"
    with pytest.raises(ValueError) as e:
        _collect(_train(root, verify=verify))
    msg = str(e.value)
    assert "zz_bad.jpg" in msg and f"make_dataset.py check {root}" in msg
    assert "skip_corrupt=True" in msg


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_skip_corrupt_leaves_a_bad_file_out_mid_epoch(tmp_path, kind):
    root, bad = _with_bad(tmp_path, kind)
    verify = "header" if kind == "truncated" else "none"
    ld = _train(root, skip_corrupt=True, verify=verify, policy="none", seed=3)
    with pytest.warns(UserWarning, match="skip_corrupt: leaving out.*zz_bad.jpg") as rec:
        got = _collect(ld)
    assert sum("zz_bad.jpg" in str(w.message) for w in rec) == 1  # named once
    assert len(got) == len(ld) and all(lab.shape == (4,) for _, lab in got)  # full batches
    assert list(ld.skipped) == [bad] and list(ld.state_dict()["excluded"]) == [bad]
    # its place went to the next image in file order; every other position is unchanged
    samples = scan(root)
    order = ld.exclusions.apply(ld.epoch_indices())
    assert samples.paths.index(bad) in ld.epoch_indices()
    assert np.array_equal(torch.cat([lab for _, lab in got]).numpy(), samples.labels[order])
    for views, labels in got:
        assert torch.equal(_pixel_class(views[0]), labels)
    # the same seed gives the same batches, and a loader that knows the file from epoch 0 gives
    # in epoch 1 the batches of a fresh one that finds it in epoch 1
    again = _train(root, skip_corrupt=True, verify=verify, policy="none", seed=3)
    assert _same(got, _collect(again))
    fresh = _train(root, skip_corrupt=True, verify=verify, policy="none", seed=3)
    ld.set_epoch(1)
    fresh.set_epoch(1)
    assert _same(_collect(ld), _collect(fresh))


@pytest.mark.parametrize("use_dali_checkpoint", [True, False])
def test_resume_after_a_skip_is_exact(tmp_path, use_dali_checkpoint):
    root, bad = _with_bad(tmp_path, "truncated")
    kw = dict(skip_corrupt=True, seed=3, policy="simclr")
    ref = _train(root, **kw)
    pos = list(ref.epoch_indices()).index(scan(root).paths.index(bad)) // 4  # the bad batch
    full = _collect(ref)
    ref.set_epoch(1)
    full1 = _collect(ref)
    src = _train(root, **kw)
    it = iter(src)
    for _ in range(pos + 1):  # past the batch that was rebuilt
        next(it)
    sd = src.state_dict()
    assert list(sd["excluded"]) == [bad] and sd["step"] == pos + 1
    if not use_dali_checkpoint:
        sd["dali"] = None  # replays the first batches with the file already left out
    dst = _train(root, **kw)
    dst.load_state_dict(sd)
    dst.set_epoch(0)
    assert _same(_collect(dst), full[pos + 1:]) and list(dst.skipped) == [bad]
    dst.set_epoch(1)
    assert _same(_collect(dst), full1)


def test_skip_without_dali_checkpointing_and_on_every_shard(tmp_path):
    root, bad = _with_bad(tmp_path, "truncated")
    ref = _collect(_train(root, skip_corrupt=True, seed=3))
    # without DALI checkpoints the pipeline is rebuilt and replayed: the same batches
    assert _same(_collect(_train(root, skip_corrupt=True, seed=3, checkpointing=False)), ref)
    shards = [_train(root, skip_corrupt=True, seed=3, shard_id=k, num_shards=2) for k in (0, 1)]
    assert [len(_collect(s)) for s in shards] == [len(shards[0])] * 2  # same steps on each rank
    assert bad in {p for s in shards for p in s.skipped}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_eval_loader_refuses_to_skip_and_says_why(tmp_path, kind):
    root, bad = _with_bad(tmp_path, kind, n=9)
    with pytest.raises(ValueError) as e:
        list(build_eval_loader(root, batch_size=4, size=SIZE, verify="none"))
    msg = str(e.value)
    assert "zz_bad.jpg" in msg and "must be complete" in msg and "skip_corrupt" not in msg
    with pytest.raises(ValueError, match="skip_corrupt: .*must be complete"):
        build_eval_loader(root, batch_size=4, size=SIZE, skip_corrupt=True)
    # a training split's features (the trainer's kNN bank under --skip-corrupt) may drop it
    ev = build_eval_loader(root, batch_size=4, size=SIZE, verify="none", drop_corrupt=True)
    with pytest.warns(UserWarning, match="drop_corrupt: dropping.*zz_bad.jpg"):
        ys = torch.cat([y for _, y in ev])
    assert len(ys) == 9 and list(ev.skipped) == [bad]


def test_unusual_valid_images_load(tmp_path):
    root = write_tiny(tmp_path / "d", n=6)
    unusual = write_unusual(root)
    ld = _train(root, batch_size=11, verify="full", policy="simclr")
    (views, labels), = _collect(ld)
    assert labels.shape == (11,) and all(torch.isfinite(v).all() for v in views)
    ev = build_eval_loader(root, batch_size=11, size=SIZE, verify="full")
    (x, y), = list(ev)
    assert x.shape == (11, 3, SIZE, SIZE) and torch.isfinite(x).all()
    assert ld.skipped == {} and len(unusual) == 5


def test_a_failure_no_file_explains_is_not_skipped(tmp_path, monkeypatch):
    from supcon_fast.data import corrupt

    root, _ = _with_bad(tmp_path, "truncated", n=9)
    monkeypatch.setattr(corrupt, "undecodable", lambda paths: {})  # as if PIL decoded it
    with pytest.raises(RuntimeError, match="all of which PIL decodes.*no file to name or skip"):
        _collect(_train(root, skip_corrupt=True))
