"""The in-memory train loader (tests, DALI-less machines): sharding, augmentation randomness, exact resume."""
import torch

from supcon_fast.data.memory import TensorEvalLoader, TensorTrainLoader


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g), torch.arange(n) % 4


def test_views_steps_and_epochs_differ():
    x, y = _data()
    ld = TensorTrainLoader(x, y, batch_size=8, n_views=2, size=8)
    assert len(ld) == 5
    b = list(ld)
    (v0, v1), _ = b[0]
    assert v0.shape == (8, 3, 8, 8) and v0.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(v0, v1)                       # two different augmentations of the same images
    assert not torch.equal(b[0][0][0], b[1][0][0])
    ld.set_epoch(1)
    assert not torch.equal(next(iter(ld))[1], b[0][1])   # reshuffled
    assert sorted(torch.cat([l for _, l in b]).tolist()) == sorted(y.tolist())


def test_shards_partition_the_global_batch():
    x, y = _data()
    single = list(TensorTrainLoader(x, y, batch_size=8, size=8))
    shards = [list(TensorTrainLoader(x, y, batch_size=4, size=8, shard_id=r, num_shards=2)) for r in range(2)]
    for step in range(len(single)):
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), single[step][1])


def test_state_dict_resume_replays_the_same_batches():
    x, y = _data()
    ld = TensorTrainLoader(x, y, batch_size=8, size=8, seed=3)
    ld.set_epoch(2)
    it = iter(ld)
    next(it), next(it)
    sd = ld.state_dict()
    rest = list(it)
    fresh = TensorTrainLoader(x, y, batch_size=8, size=8, seed=3)
    fresh.load_state_dict(sd)
    fresh.set_epoch(2)
    again = list(fresh)
    assert len(again) == len(rest) == 3
    assert all(torch.equal(a[0][0], b[0][0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, again))


def test_eval_loader_covers_each_image_once_across_shards():
    x, y = _data(10)
    got = [l for r in range(3) for _, l in TensorEvalLoader(x, y, batch_size=3, size=8, shard_id=r, num_shards=3)]
    assert sorted(torch.cat(got).tolist()) == sorted(y.tolist())


def test_load_folder_reads_unusual_images_and_names_or_skips_bad_ones(tmp_path):
    import os

    import pytest
    from data_fixtures import BAD_KINDS, write_bad, write_unusual
    from PIL import Image

    from supcon_fast.data.memory import load_folder

    write_unusual(tmp_path / "odd")
    with pytest.raises(ValueError, match="one size.*--backend auto"):  # this loader does not resize
        load_folder(str(tmp_path / "odd"))
    root = tmp_path / "d"
    for p in write_unusual(root):  # CMYK, greyscale, PNG named .jpg: at one size they all load
        with Image.open(p) as im:
            im.resize((8, 8)).save(p, format=im.format)
    x, _, _, skipped = load_folder(str(root))
    assert x.shape == (5, 3, 8, 8) and skipped == {}
    bad = sorted(write_bad(root / "cls0" / f"zz_{k}.jpg", k, like=root / "cls0" / "u_grey.jpg")
                 for k in BAD_KINDS)
    with pytest.raises(ValueError, match="zz_not_image.jpg.*skip_corrupt=True"):
        load_folder(str(root))
    with pytest.raises(ValueError, match="zz_not_image.jpg.*must be complete"):
        load_folder(str(root), skip_corrupt=True, evaluation=True)
    with pytest.warns(UserWarning, match="skip_corrupt: leaving out"):
        x, _, _, skipped = load_folder(str(root), skip_corrupt=True)
    assert x.shape[0] == 5 and sorted(skipped) == [os.fspath(p) for p in bad]
