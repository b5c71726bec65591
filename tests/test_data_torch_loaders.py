"""The torch loaders (torchvision transforms) behind backend='torch' (and 'auto' where DALI is missing);
'torchvision', the older name, still selects them."""
import os

import numpy as np
import pytest
import torch
from data_fixtures import (BAD_KINDS, N_IMAGES, tiny_root, write_bad,  # noqa: F401
                           write_tiny, write_unusual)

from supcon_fast.data import build_eval_loader, build_train_loader, folder, scan


def _tv_train(root, **kw):
    kw = {"batch_size": 4, "size": 32, "num_threads": 0, "backend": "torch", **kw}
    return build_train_loader(root, **kw)


def test_train_fallback_layout_order_and_resume(tiny_root):
    ld = _tv_train(tiny_root, seed=4, dtype=torch.bfloat16, n_views=3)
    ld.set_epoch(2)
    batches = [(v, y) for v, y in ld]
    assert len(batches) == len(ld) and ld.num_samples == N_IMAGES and ld.num_classes == 3
    v, _ = batches[0]
    assert len(v) == 3 and all(x.dtype == torch.bfloat16 and x.shape == (4, 3, 32, 32) and
                               x.is_contiguous(memory_format=torch.channels_last) for x in v)
    labels = torch.cat([y for _, y in batches])
    sd_src = _tv_train(tiny_root, seed=4)
    sd_src.set_epoch(2)
    it = iter(sd_src)
    next(it), next(it)
    sd = sd_src.state_dict()
    assert sd["epoch"] == 2 and sd["step"] == 2
    res = _tv_train(tiny_root, seed=4)
    res.load_state_dict(sd)
    res.set_epoch(2)
    rest = torch.cat([y for _, y in res])
    assert torch.equal(rest, labels[8:])  # same order from batch 2 on
    res.set_epoch(3)
    assert len(list(res)) == len(res)  # the next epoch is whole again


@pytest.mark.parametrize("num_shards", [1, 3])
def test_eval_fallback_every_image_once(tiny_root, num_shards):
    ys = []
    for k in range(num_shards):
        ld = build_eval_loader(tiny_root, batch_size=4, size=32, shard_id=k,
                               num_shards=num_shards, num_threads=0, backend="torchvision")  # the older name
        for x, y in ld:
            assert x.shape[1:] == (3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
            ys.append(y)
    assert np.array_equal(torch.cat(ys).numpy(), scan(tiny_root).labels)


def test_backend_argument_checked(tiny_root):
    with pytest.raises(ValueError, match="backend"):
        build_train_loader(tiny_root, batch_size=4, backend="opencv")


def test_auto_falls_back_without_dali(tiny_root, monkeypatch):
    import supcon_fast.data as data
    from supcon_fast.data.torch_loaders import TorchEvalLoader, TorchTrainLoader

    monkeypatch.setattr(data, "dali_available", lambda: False)
    with pytest.warns(UserWarning, match="nvidia.dali is not installed"):
        ld = build_train_loader(tiny_root, batch_size=4, size=32, num_threads=0)
    assert isinstance(ld, TorchTrainLoader)
    with pytest.warns(UserWarning):
        assert isinstance(build_eval_loader(tiny_root, batch_size=4, num_threads=0),
                          TorchEvalLoader)
    with pytest.raises(ImportError, match="backend"):
        build_train_loader(tiny_root, batch_size=4, backend="dali")


def _with_bad(tmp_path, kind, n=11):
    root = write_tiny(tmp_path / "d", n=n)
    bad = write_bad(os.path.join(root, "cls1", "zz_bad.jpg"), kind,
                    like=os.path.join(root, "cls0", "img_000.jpg"))
    return root, bad


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_train_fallback_names_or_skips_a_bad_file(tmp_path, kind):
    root, bad = _with_bad(tmp_path, kind)
    with pytest.raises(ValueError, match="zz_bad.jpg.*make_dataset.py check.*skip_corrupt=True"):
        list(_tv_train(root, verify="none"))
    ld = _tv_train(root, verify="none", skip_corrupt=True, seed=2)
    with pytest.warns(UserWarning, match="skip_corrupt: leaving out.*zz_bad.jpg"):
        labels = torch.cat([y for _, y in ld])
    samples = scan(root)
    assert len(labels) == len(ld) * 4 and list(ld.skipped) == [bad]
    order = ld.exclusions.apply(folder.train_shard_indices(
        len(samples), batch_size=4, shard_id=0, num_shards=1, seed=2, epoch=0))
    assert np.array_equal(labels.numpy(), samples.labels[order])  # the DALI loader's rule
    sd = ld.state_dict()
    assert list(sd["excluded"]) == [bad]
    res = _tv_train(root, verify="none", skip_corrupt=True, seed=2)
    res.load_state_dict(sd)
    res.set_epoch(1)
    ld.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in res]), torch.cat([y for _, y in ld]))


def test_train_fallback_worker_errors_name_the_file(tmp_path):
    root, bad = _with_bad(tmp_path, "truncated")
    with pytest.raises(ValueError, match="zz_bad.jpg"):
        list(_tv_train(root, num_threads=1))
    ld = _tv_train(root, num_threads=1, skip_corrupt=True)
    with pytest.warns(UserWarning, match="zz_bad.jpg"):
        assert len(list(ld)) == len(ld)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_eval_fallback_refuses_to_skip(tmp_path, kind):
    root, bad = _with_bad(tmp_path, kind)
    kw = dict(batch_size=4, size=32, num_threads=0, backend="torch", verify="none")
    with pytest.raises(ValueError) as e:
        list(build_eval_loader(root, **kw))
    assert "zz_bad.jpg" in str(e.value) and "must be complete" in str(e.value)
    assert "skip_corrupt" not in str(e.value)
    with pytest.raises(ValueError, match="skip_corrupt"):
        build_eval_loader(root, skip_corrupt=True, **kw)
    ev = build_eval_loader(root, drop_corrupt=True, **kw)
    with pytest.warns(UserWarning, match="drop_corrupt: dropping.*zz_bad.jpg"):
        assert sum(len(y) for _, y in ev) == 11
    assert list(ev.skipped) == [bad]


def test_fallback_loads_unusual_valid_images(tmp_path):
    root = write_tiny(tmp_path / "d", n=6)
    write_unusual(root)
    (views, labels), = list(_tv_train(root, batch_size=11, verify="full"))
    assert labels.shape == (11,) and all(torch.isfinite(v).all() for v in views)
    (x, _), = list(build_eval_loader(root, batch_size=11, size=32, num_threads=0,
                                     backend="torch", verify="full"))
    assert x.shape == (11, 3, 32, 32) and torch.isfinite(x).all()
