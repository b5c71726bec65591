"""Stop by SIGTERM mid-epoch, resume with --resume auto: the same weights as a run never stopped (bitwise)."""
import os
import signal
import warnings

import pytest
import torch

from supcon_fast.engine import config
from supcon_fast.engine.run import run
from data_fixtures import make_tiny_folder


def make_data(root):
    return make_tiny_folder(root, n_per_class=10)  # 30 train images


def tiny_cfg(data, out, loader, **kw):
    # 30 images, batch 8, 2 epochs
    argv = ["--dataset", "folder", "--data", str(data), "--out", str(out), "--backend", loader,
            "--arch", "resnet18", "--width", "4", "--size", "16", "--batch-size", "8", "--epochs", "2",
            "--linear-epochs", "1", "--knn-every", "1", "--eval-batch-size", "16", "--no-tensorboard",
            "--optimizer", "lars", "--lr", "0.5", "--warmup-epochs", "0.5", "--log-every", "1"]
    for k, v in kw.items():
        flag = k.replace('_', '-')
        argv += [f"--{flag}" if v else f"--no-{flag}"] if isinstance(v, bool) else [f"--{flag}", str(v)]
    return config.resolve(argv)


def _stop_and_resume(tmp_path, loader, **kw):
    """A full run, and one stopped by SIGTERM mid-epoch 0 then resumed: their last.pt checkpoints."""
    data = make_data(tmp_path / "data")
    full = run(tiny_cfg(data, tmp_path / "full", loader, **kw))
    assert full["status"] == "done"

    stop_at = 2   # mid-epoch 0 (3 steps per epoch in memory, 4 with DALI padding)

    def hook(step, loss):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)   # the real signal path, handled by the trainer

    part = run(tiny_cfg(data, tmp_path / "resumed", loader, **kw), on_step=hook)
    assert part["status"] == "interrupted" and part["steps"] == stop_at
    ck = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert (ck["step"], ck["epoch"], ck["step_in_epoch"]) == (stop_at, 0, stop_at)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # handlers restored after the loop

    resumed = run(tiny_cfg(data, tmp_path / "resumed", loader, resume="auto", **kw))
    assert resumed["status"] == "done" and resumed["steps"] == full["steps"]

    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert resumed["linear_top1"] == full["linear_top1"]
    assert resumed["best_knn_top1"] == full["best_knn_top1"]
    return full, resumed, ck, a, b


@pytest.mark.parametrize("loader", ["dali", "memory"])
def test_sigterm_then_resume_is_bitwise_identical(tmp_path, loader):
    full, _, ck, _, _ = _stop_and_resume(tmp_path, loader)
    assert "queue" not in ck and (full["queue"], full["queue_momentum"]) == (0, None)


@pytest.mark.parametrize("momentum", [0.99, 0.0])
def test_resume_with_a_queue_is_bitwise_identical(tmp_path, momentum):
    """--queue 50: 16 rows a step (8 images x 2 views), so the queue wraps at step 4, in the middle of a
    sample; stopped at step 2, resumed: the queue, the momentum copy and the model equal the full run's."""
    full, resumed, ck, a, b = _stop_and_resume(tmp_path, "memory", queue=50, queue_momentum=momentum)
    assert (full["queue"], full["queue_momentum"]) == (resumed["queue"], resumed["queue_momentum"]) == (50, momentum)
    assert ck["queue"]["filled"] == 32 and ck["queue"]["samples"] == 16     # what the stopped run saved
    assert a["queue"]["filled"] == 50 and a["queue"]["samples"] == 8 * full["steps"] > 25
    for k in ("features", "labels", "labelled", "sample"):
        assert torch.equal(a["queue"][k], b["queue"][k]), k
    assert (a["queue"]["pos"], a["queue"]["samples"]) == (b["queue"]["pos"], b["queue"]["samples"])
    if momentum:
        assert a["momentum_model"].keys() == a["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["momentum_model"][k], b["momentum_model"][k]), k
        assert not torch.equal(a["momentum_model"]["head.0.weight"], a["model"]["head.0.weight"])  # an average
    else:
        assert a["momentum_model"] is None


def test_resume_refuses_a_different_model(tmp_path):
    data = make_data(tmp_path / "data")
    run(tiny_cfg(data, tmp_path / "o", "memory", max_steps=1, linear_epochs=0))
    with pytest.raises(ValueError, match="resume: the checkpoint has width=4"):
        run(tiny_cfg(data, tmp_path / "o", "memory", width=8, resume="auto"))
    with pytest.raises(FileNotFoundError, match="resume"):
        run(tiny_cfg(data, tmp_path / "o2", "memory", resume=str(tmp_path / "missing.pt")))


def _with_truncated(root):
    """The resume folder plus one truncated JPEG (header intact: found only when decoded)."""
    data = make_data(root)
    src = (data / "train" / "cls0" / "img_000.jpg").read_bytes()
    bad = data / "train" / "cls1" / "img_9_truncated.jpg"
    bad.write_bytes(src[:len(src) // 2])
    return data, str(bad)


def test_skip_corrupt_run_lists_the_file_and_resumes_exactly(tmp_path):
    from supcon_fast.data import scan
    from supcon_fast.data.folder import train_shard_indices

    data, bad = _with_truncated(tmp_path / "data")
    kw = dict(skip_corrupt=True, knn_every=0)
    with pytest.raises(ValueError, match="9_truncated.jpg.*--skip-corrupt"):
        run(tiny_cfg(data, tmp_path / "plain", "dali", knn_every=0))
    with pytest.warns(UserWarning, match="9_truncated.jpg"):
        full = run(tiny_cfg(data, tmp_path / "full", "dali", **kw))
    assert full["status"] == "done" and full["skipped_files"] == [bad]

    # stop right after the batch rebuilt without the file, then resume
    samples = scan(data / "train")
    order = train_shard_indices(len(samples), batch_size=8, shard_id=0, num_shards=1, seed=0, epoch=0)
    stop_at = list(order).index(samples.paths.index(bad)) // 8 + 1

    def hook(step, loss):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.warns(UserWarning, match="9_truncated.jpg"):
        part = run(tiny_cfg(data, tmp_path / "resumed", "dali", **kw), on_step=hook)
    assert part["status"] == "interrupted" and part["skipped_files"] == [bad]
    ck = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert list(ck["loader"][0]["excluded"]) == [bad]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resumed = run(tiny_cfg(data, tmp_path / "resumed", "dali", resume="auto", **kw))
    assert resumed["status"] == "done" and resumed["skipped_files"] == [bad]
    assert not [w for w in seen if "skip_corrupt: leaving out" in str(w.message)]  # restored, not re-found
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["linear_top1"] == full["linear_top1"]

    # a stop at the end of an epoch keeps the list too
    with pytest.warns(UserWarning, match="9_truncated.jpg"):
        run(tiny_cfg(data, tmp_path / "edge", "dali", max_steps=4, linear_epochs=0, **kw))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        edge = run(tiny_cfg(data, tmp_path / "edge", "dali", max_steps=5, linear_epochs=0, resume="auto", **kw))
    assert edge["skipped_files"] == [bad]
    assert not [w for w in seen if "skip_corrupt: leaving out" in str(w.message)]


def test_memory_loader_skips_or_names_a_bad_file(tmp_path):
    data, bad = _with_truncated(tmp_path / "data")
    with pytest.raises(ValueError, match="9_truncated.jpg.*--skip-corrupt"):
        run(tiny_cfg(data, tmp_path / "a", "memory", max_steps=1, linear_epochs=0, knn_every=0))
    with pytest.warns(UserWarning, match="9_truncated.jpg"):
        res = run(tiny_cfg(data, tmp_path / "b", "memory", max_steps=1, linear_epochs=0, knn_every=0,
                           skip_corrupt=True))
    assert res["skipped_files"] == [bad]


def test_leftover_temporary_checkpoint_is_removed_never_loaded(tmp_path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    run(tiny_cfg(data, out, "memory", max_steps=1, linear_epochs=0, knn_every=0))
    (out / "last.pt.tmp").write_bytes(b"half a checkpoint")   # a save killed mid-write
    (out / "best.pt.tmp").write_bytes(b"")
    with pytest.raises(ValueError, match="resume: .*last.pt.tmp.*did not finish"):
        run(tiny_cfg(data, out, "memory", resume=str(out / "last.pt.tmp")))
    res = run(tiny_cfg(data, out, "memory", max_steps=2, linear_epochs=0, knn_every=0, resume="auto"))
    assert res["status"] == "done" and res["steps"] == 2           # resumed from last.pt (step 1)
    assert not list(out.glob("*.tmp"))
