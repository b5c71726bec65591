"""The torchvision loaders behind backend='torchvision' (and 'auto' where DALI is missing)."""
import numpy as np
import pytest
import torch
from data_fixtures import N_IMAGES, tiny_root  # noqa: F401

from supcon_fast.data import build_eval_loader, build_train_loader, scan


def _tv_train(root, **kw):
    kw = {"batch_size": 4, "size": 32, "num_threads": 0, "backend": "torchvision", **kw}
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
                               num_shards=num_shards, num_threads=0, backend="torchvision")
        for x, y in ld:
            assert x.shape[1:] == (3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
            ys.append(y)
    assert np.array_equal(torch.cat(ys).numpy(), scan(tiny_root).labels)


def test_backend_argument_checked(tiny_root):
    with pytest.raises(ValueError, match="backend"):
        build_train_loader(tiny_root, batch_size=4, backend="opencv")


def test_auto_falls_back_without_dali(tiny_root, monkeypatch):
    import supcon_fast.data as data
    from supcon_fast.data.torchvision_baseline import TorchvisionEvalLoader, TorchvisionTrainLoader

    monkeypatch.setattr(data, "dali_available", lambda: False)
    with pytest.warns(UserWarning, match="nvidia.dali is not installed"):
        ld = build_train_loader(tiny_root, batch_size=4, size=32, num_threads=0)
    assert isinstance(ld, TorchvisionTrainLoader)
    with pytest.warns(UserWarning):
        assert isinstance(build_eval_loader(tiny_root, batch_size=4, num_threads=0),
                          TorchvisionEvalLoader)
    with pytest.raises(ImportError, match="backend"):
        build_train_loader(tiny_root, batch_size=4, backend="dali")
