"""DALI train/eval loaders in CPU-only mode: layout, labels, randomness, determinism, resume,
sharding, policies, errors."""
import os

import numpy as np
import pytest
import torch
from data_fixtures import N_IMAGES, tiny_root, write_tiny  # noqa: F401

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


def test_corrupt_images_are_named(tmp_path):
    root = write_tiny(tmp_path / "d", n=9)
    bad = os.path.join(root, "cls0", "zz_bad.jpg")
    with open(bad, "wb") as f:
        f.write(b"<html>not an image</html>")
    with pytest.raises(ValueError, match="zz_bad.jpg"):
        _train(root)
    with pytest.raises(ValueError, match="zz_bad.jpg"):
        build_eval_loader(root, batch_size=4, size=SIZE)
    with pytest.warns(UserWarning, match="skipping 1 corrupt"):
        ok = _train(root, skip_corrupt=True)
    assert ok.num_samples == 9 and len(_collect(ok)) == len(ok)
    # A header-intact but truncated file passes the cheap check and is named when DALI fails.
    os.remove(bad)
    trunc = os.path.join(root, "cls1", "zz_trunc.jpg")
    with open(scan(root).paths[0], "rb") as f, open(trunc, "wb") as g:
        g.write(f.read()[:200])
    with pytest.raises(ValueError, match="zz_trunc.jpg"):
        _collect(_train(root, verify="none", batch_size=10))
    with pytest.raises(ValueError, match="zz_trunc.jpg"):
        _train(root, verify="full")
