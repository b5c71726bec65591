"""Every backend's loaders have the one interface (supcon_fast/data/interface.py), and its resume
contract holds alike for all of them: a loader restored from ``state_dict()`` after k batches
yields exactly the batches the original yields after those k."""
import numpy as np
import pytest
import torch
from data_fixtures import write_tiny

from supcon_fast.data import build_eval_loader, build_train_loader, dali_available
from supcon_fast.data.interface import EvalLoader, TrainLoader
from supcon_fast.data.memory import SyntheticLoader, TensorEvalLoader, TensorTrainLoader, load_folder

BACKENDS = ["dali", "torch", "memory", "synthetic"]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("iface") / "train", n=20, size=24)


def make_train(backend, root, seed=3):
    if backend == "dali" and not dali_available():
        pytest.skip("nvidia.dali not installed")
    if backend in ("dali", "torch"):
        threads = 0 if backend == "torch" else 1   # torch: in-process loading (no worker start-up)
        return build_train_loader(root, batch_size=4, size=16, seed=seed, num_threads=threads, backend=backend)
    if backend == "memory":
        x, y, _, _ = load_folder(root)
        return TensorTrainLoader(x, y, batch_size=4, size=16, seed=seed)
    return SyntheticLoader(batch_size=4, size=16, steps=5, num_classes=3, seed=seed)


def make_eval(backend, root):
    if backend == "dali" and not dali_available():
        pytest.skip("nvidia.dali not installed")
    if backend in ("dali", "torch"):
        return build_eval_loader(root, batch_size=6, size=16, num_threads=1, backend=backend)
    x, y, _, _ = load_folder(root)
    return TensorEvalLoader(x, y, batch_size=6, size=16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_loaders_share_the_interface_and_resume_alike(split, backend):
    ld = make_train(backend, split)
    assert isinstance(ld, TrainLoader) and ld.backend == backend and ld.num_classes == 3
    ld.set_epoch(1)
    it = iter(ld)
    for _ in range(2):
        next(it)
    state = ld.state_dict()
    rest = [(torch.stack(v), y) for v, y in it]
    assert len(rest) == len(ld) - 2
    again = make_train(backend, split)
    again.load_state_dict(state)
    again.set_epoch(1)                       # the trainer's call: keeps the position of this epoch
    replay = [(torch.stack(v), y) for v, y in again]
    assert len(replay) == len(rest)
    for (va, ya), (vb, yb) in zip(rest, replay):
        assert torch.equal(ya, yb)
        if backend != "torch":               # torch's augmentation draws are not replayed bit for bit
            assert torch.equal(va, vb)
    again.set_epoch(2)                        # a new epoch starts at its first batch
    assert sum(1 for _ in again) == len(ld)


@pytest.mark.parametrize("backend", ["dali", "torch", "memory"])
def test_eval_loaders_share_the_interface(split, backend):
    ld = make_eval(backend, split)
    assert isinstance(ld, EvalLoader) and ld.backend == backend and ld.num_classes == 3
    labels = torch.cat([y.view(-1).cpu() for _, y in ld])
    assert np.array_equal(np.bincount(labels.numpy()), [7, 7, 6]) and len(ld) == 4
