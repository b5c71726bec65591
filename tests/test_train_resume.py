"""Stop by SIGTERM mid-epoch, resume with --resume auto: the same weights as a run never stopped (bitwise)."""
import os
import signal

import pytest
import torch

from supcon_fast.engine import config
from supcon_fast.engine.run import run
from test_train_smoke import make_tiny_folder as make_folder


def make_tiny_folder(root):
    return make_folder(root, n_per_class=10)  # 30 train images


def tiny_cfg(data, out, loader, **kw):
    # 30 images, batch 8, 2 epochs
    argv = ["--dataset", "folder", "--data", str(data), "--out", str(out), "--loader", loader,
            "--arch", "resnet18", "--width", "4", "--size", "16", "--batch-size", "8", "--epochs", "2",
            "--linear-epochs", "1", "--knn-every", "1", "--eval-batch-size", "16", "--no-tensorboard",
            "--optimizer", "lars", "--lr", "0.5", "--warmup-epochs", "0.5", "--log-every", "1"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return config.resolve(argv)


@pytest.mark.parametrize("loader", ["dali", "memory"])
def test_sigterm_then_resume_is_bitwise_identical(tmp_path, loader):
    data = make_tiny_folder(tmp_path / "data")
    full = run(tiny_cfg(data, tmp_path / "full", loader))
    assert full["status"] == "done"

    stop_at = 2   # mid-epoch 0 (3 steps per epoch in memory, 4 with DALI padding)

    def hook(step, loss):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)   # the real signal path, handled by the trainer

    part = run(tiny_cfg(data, tmp_path / "resumed", loader), on_step=hook)
    assert part["status"] == "interrupted" and part["steps"] == stop_at
    ck = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert (ck["step"], ck["epoch"], ck["step_in_epoch"]) == (stop_at, 0, stop_at)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # handlers restored after the loop

    resumed = run(tiny_cfg(data, tmp_path / "resumed", loader, resume="auto"))
    assert resumed["status"] == "done" and resumed["steps"] == full["steps"]

    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert resumed["linear_top1"] == full["linear_top1"]
    assert resumed["best_knn_top1"] == full["best_knn_top1"]


def test_resume_refuses_a_different_model(tmp_path):
    data = make_tiny_folder(tmp_path / "data")
    run(tiny_cfg(data, tmp_path / "o", "memory", max_steps=1, linear_epochs=0))
    with pytest.raises(ValueError, match="resume: the checkpoint has width=4"):
        run(tiny_cfg(data, tmp_path / "o", "memory", width=8, resume="auto"))
    with pytest.raises(FileNotFoundError, match="resume"):
        run(tiny_cfg(data, tmp_path / "o2", "memory", resume=str(tmp_path / "missing.pt")))
