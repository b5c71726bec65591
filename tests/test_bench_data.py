"""The torch (torchvision transforms) baseline and the loader benchmark (tiny sizes: correctness, not speed)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from data_fixtures import N_IMAGES, tiny_root  # noqa: F401

from supcon_fast.data import POLICIES, scan
from supcon_fast.data.torch_loaders import TorchTrainLoader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"backend", "policy", "device", "size", "views", "batch_size", "threads", "views_per_s",
        "images_per_s", "commit", "date", "machine", "torch", "dali"}


@pytest.mark.parametrize("policy", POLICIES)
def test_torchvision_baseline_same_recipe_surface(tiny_root, policy):
    ld = TorchTrainLoader(tiny_root, batch_size=4, n_views=2, size=32, policy=policy,
                                num_threads=0, seed=3)
    ld.set_epoch(1)
    batches = list(ld)
    assert len(batches) == len(ld) == -(-N_IMAGES // 4)
    views, labels = batches[0]
    assert len(views) == 2 and labels.dtype == torch.int64
    assert all(v.shape == (4, 3, 32, 32) and v.is_contiguous(memory_format=torch.channels_last)
               for v in views)
    # Same order as the DALI loader: folder.train_shard_indices of (seed, epoch).
    from supcon_fast.data import folder

    idx = folder.train_shard_indices(N_IMAGES, batch_size=4, shard_id=0, num_shards=1, seed=3,
                                     epoch=1)
    got = torch.cat([b[1] for b in batches]).numpy()
    assert np.array_equal(got, scan(tiny_root).labels[idx])


def test_bench_cli_writes_records_and_chart(tiny_root, tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "res" / "data_test.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench_data.py"),
                        "--root", tiny_root, "--backends", "dali", "torch",
                        "--policy", "simclr", "--size", "32", "--views", "2", "--batch-size", "4",
                        "--threads", "1", "--steps", "2", "--warmup", "1", "--rounds", "2",
                        "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    recs = data["records"]
    assert [x["backend"] for x in recs] == ["dali", "torch"]
    for x in recs:
        assert KEYS <= set(x) and x["views_per_s"] > 0
        assert x["views_per_s"] == pytest.approx(2 * x["images_per_s"], rel=1e-3)
        assert len(x["views_per_s_rounds"]) == 2
    assert set(data["dali_over_torch"]) == {"simclr"}
    assert (tmp_path / "res" / "data_test.png").stat().st_size > 1000


def test_bench_rejects_too_many_steps(tiny_root):
    from supcon_fast.bench.data import run_benchmark

    with pytest.raises(ValueError, match="steps"):
        run_benchmark(tiny_root, backends=("torch",), size=32, batch_size=4, threads=0,
                      steps=50, warmup=1, rounds=1)
