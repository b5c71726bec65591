"""End-to-end smoke on CPU: every loss trains a few steps through the DALI loader, checkpoints, evaluates;
non-finite losses stop the run naming the step; the CLI stops cleanly on SIGTERM and prints JSON last."""
import json
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from supcon_fast.engine import config
from supcon_fast.engine.pretrain import NonFiniteLossError
from supcon_fast.engine.run import run

from data_fixtures import make_tiny_folder, tiny_argv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_folder(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("loss", ["supcon", "simclr", "ce"])
def test_each_loss_end_to_end(tiny_data, tmp_path, loss):
    out = tmp_path / loss
    res = run(config.resolve(tiny_argv(tiny_data, out, loss=loss, max_steps=2, optimizer="lars")))
    assert res["status"] == "done" and res["steps"] == 2
    assert 0 <= res["linear_top1"] <= res["linear_top5"] <= 100
    assert res["n_train"] == 24 and res["n_val"] == 12
    if loss == "ce":
        assert 0 <= res["ce_top1"] <= 100
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["views_per_s"] > 0 for r in train)
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file() and any((out / "tb").iterdir())
    ck = torch.load(out / "last.pt", weights_only=True)
    assert {"model", "optimizer", "step", "epoch", "rng", "config"} <= set(ck)
    assert ck["step"] == 2 and ck["config"]["loss"] == loss
    assert res["loss_dtype"] == ck["config"]["loss_dtype"] == "float32"    # no mixed precision on CPU by default
    # what ran, in the summary and in metrics.jsonl (a "run" record first, the "summary" record last)
    facts = {"device": "cpu", "world": 1, "amp": "float32", "loss_dtype": "float32", "dataset": "folder",
             "data_root": str(tiny_data.resolve()), "data_backend": "dali", "train_images": 24, "val_images": 12}
    assert {k: res[k] for k in facts} == facts
    for rec in (recs[0], recs[-1]):
        assert {k: rec[k] for k in facts} == facts
    assert recs[0]["kind"] == "run" and recs[0]["backend_requested"] == "auto" and recs[-1]["kind"] == "summary"
    if loss != "ce":
        assert (res["denominator"], res["positives_cap"], res["loss_path"]) == ("all", -1, "fused")


def test_official_loss_options_train_and_are_reported(tiny_data, tmp_path, monkeypatch):
    """--denominator / --positives-cap reach the loss (a spy on supcon_loss) and the summary says so."""
    import supcon_fast.engine.losses as losses_mod
    seen = []
    real = losses_mod.supcon_loss
    monkeypatch.setattr(losses_mod, "supcon_loss", lambda *a, **k: seen.append(k) or real(*a, **k))
    res = run(config.resolve(tiny_argv(tiny_data, tmp_path, max_steps=2, linear_epochs=1, knn_every=0)
                             + ["--denominator", "one_positive", "--positives-cap", "2"]))
    assert res["status"] == "done" and res["steps"] == 2
    assert (res["denominator"], res["positives_cap"], res["loss_path"]) == ("one_positive", 2, "fused")
    assert seen and all(k["denominator"] == "one_positive" and k["positives_cap"] == 2 for k in seen)


@pytest.mark.parametrize("requested,backend", [("auto", "torch"), ("torch", "torch"), ("memory", "memory")])
def test_summary_names_the_backend_that_ran(tiny_data, tmp_path, monkeypatch, requested, backend):
    """Without DALI, --backend auto runs the torch loaders: the summary and metrics.jsonl say so,
    not the requested 'auto' or 'dali'; --backend dali is then an error naming backend."""
    import supcon_fast.data as data
    monkeypatch.setattr(data, "dali_available", lambda: False)
    argv = tiny_argv(tiny_data, tmp_path / "run", backend=requested, max_steps=1, linear_epochs=0, knn_every=0,
                     num_threads=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="nvidia.dali is not installed")
        res = run(config.resolve(argv))
    assert res["data_backend"] == backend and res["train_images"] == 24 and res["val_images"] == 12
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"]: r["data_backend"] for r in recs if "data_backend" in r} == {"run": backend, "summary": backend}
    assert [r["backend_requested"] for r in recs if r["kind"] == "run"] == [requested]
    # the commit is read when the run starts (the code it loaded) and repeated in the summary
    assert recs[0]["commit"] == recs[-1]["commit"] == res["commit"] and recs[0]["commit"]
    if requested == "auto":
        with pytest.raises(ValueError, match="backend.*dali"):
            run(config.resolve(tiny_argv(tiny_data, tmp_path / "dali", backend="dali", max_steps=1)))


def test_nonfinite_loss_stops_naming_the_step(tiny_data, tmp_path, monkeypatch):
    import supcon_fast.engine.pretrain as pretrain_mod
    real = pretrain_mod.make_criterion

    def poisoned(*a, **k):
        crit = real(*a, **k)
        calls = {"n": 0}

        def f(x, y):
            calls["n"] += 1
            loss = crit(x, y)
            return loss * float("nan") if calls["n"] > 2 else loss   # steps 3, 4, 5 are NaN
        return f
    monkeypatch.setattr(pretrain_mod, "make_criterion", poisoned)
    cfg = config.resolve(tiny_argv(tiny_data, tmp_path, epochs=3, ckpt_every=2, linear_epochs=0))
    with pytest.raises(NonFiniteLossError, match="step 5"):
        run(cfg)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["step"] == 2                       # the last good checkpoint is kept
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_cli_sigterm_writes_checkpoint_and_exits_0(tiny_data, tmp_path):
    """A real SIGTERM to tools/train.py: checkpoint, exit 0; resuming finishes with the JSON line last."""
    out = tmp_path / "run"
    argv = [sys.executable, "tools/train.py", *tiny_argv(tiny_data, out, epochs=50, linear_epochs=1, knn_every=0)]
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "interrupted" and 2 <= summary["steps"] < 150
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == summary["steps"]
    r = subprocess.run(argv[:2] + tiny_argv(tiny_data, out, epochs=1, linear_epochs=1, knn_every=0, resume="auto"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"linear_top1", "linear_top5", "out"} <= set(last) and last["out"] == str(out)


def test_standalone_linear_eval_on_a_checkpoint(tiny_data, tmp_path, capsys):
    import importlib.util
    out = tmp_path / "run"
    run(config.resolve(tiny_argv(tiny_data, out, max_steps=1, linear_epochs=0, knn_every=0)))
    spec = importlib.util.spec_from_file_location("linear_eval_tool", ROOT / "tools" / "linear_eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(out / "last.pt"), "--linear-epochs", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["checkpoint_step"] == 1 and 0 <= res["linear_top1"] <= res["linear_top5"] <= 100
    assert not list(out.glob("*.tmp"))                  # atomic writes leave no temporaries
    assert tool.main([str(tmp_path / "nope.pt")]) == 2  # a clear error, not a traceback


@pytest.mark.parametrize("amp,loss_dtype", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_mixed_precision_paths(tiny_data, tmp_path, amp, loss_dtype, monkeypatch):
    """bf16 autocast, and fp16 with a GradScaler whose state is checkpointed (CPU autocast here). The loss
    takes the autocast dtype (--loss-dtype auto): the op receives it, and the resolved config, the
    checkpoint and the final JSON record it as torch names it."""
    from supcon_fast import ops
    seen, real = [], ops.supcon_fwd
    monkeypatch.setattr(ops, "supcon_fwd", lambda z, *a, **k: seen.append(z.dtype) or real(z, *a, **k))
    res = run(config.resolve(tiny_argv(tiny_data, tmp_path, amp=amp, max_steps=2, linear_epochs=1, knn_every=0)))
    assert res["status"] == "done" and res["steps"] == 2
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ck["scaler"] is not None) == (amp == "fp16")
    assert all(v.dtype != torch.float16 for v in ck["model"].values())   # weights stay fp32
    if ops.has_kernel("cpu"):
        assert seen and {str(d) for d in seen} == {f"torch.{loss_dtype}"}
    assert res["loss_dtype"] == loss_dtype and json.loads(json.dumps(res))["loss_dtype"] == loss_dtype
    assert res["amp"] == loss_dtype                      # --amp bf16 / fp16: the network's autocast dtype
    assert ck["config"]["loss_dtype"] == loss_dtype
    saved = config.resolve(["--config", str(tmp_path / "config.yaml")])    # the record loads back as is
    assert saved["loss_dtype"] == loss_dtype
    summary = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["kind"] == "summary" and summary["loss_dtype"] == loss_dtype


def test_synthetic_source_for_profiling(tmp_path):
    """backend 'synthetic': on-device random batches, no files (the profiler's input)."""
    from supcon_fast.data.memory import SyntheticLoader
    res = run(config.resolve(["--backend", "synthetic", "--out", str(tmp_path), "--width", "4", "--size", "16",
                              "--batch-size", "8", "--max-steps", "2", "--linear-epochs", "1", "--knn-every", "0"]))
    assert res["data_backend"] == "synthetic" and res["steps"] == 2
    assert res["dataset"] == "synthetic" and res["data_root"] is None and res["train_images"] is None
    loader = SyntheticLoader(batch_size=4, n_views=3, size=8, steps=5)
    loader.skip_batches(3)
    batches = list(loader)
    assert len(batches) == 2 and len(batches[0][0]) == 3 and batches[0][0][0].shape == (4, 3, 8, 8)
