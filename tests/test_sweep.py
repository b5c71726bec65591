"""The sweep grid expands as configured, each point is one call of the training entry point, and the
spread is computed."""
import pytest
from data_fixtures import make_tiny_folder

from supcon_fast import sweep


def test_default_grid_expands_to_the_full_product():
    pts = sweep.expand_grid({})
    assert len(pts) == 2 * 3 * 2 * 2
    assert len({p["name"] for p in pts}) == len(pts)
    lrs = sorted({p["lr"] for p in pts if p["loss"] == "supcon" and p["optimizer"] == "sgd"})
    assert lrs == pytest.approx([0.1, 0.2, 0.4])
    assert sorted({p["lr"] for p in pts if p["optimizer"] == "lars"}) == pytest.approx([2.0, 4.0, 8.0])
    assert {p["optimizer"] for p in pts} == {"lars", "sgd"} and {p["policy"] for p in pts} == {"simclr", "randaugment"}
    assert all(p["epochs"] == 3 and p["config"] == "demo" for p in pts)


def test_custom_grid_and_command():
    pts = sweep.expand_grid({"loss": ["ce"], "lr_scale": [2], "optimizer": ["sgd"], "policy": ["none"],
                             "base_lr": {"ce": 0.3}, "base": {"config": "demo", "epochs": 1}})
    assert len(pts) == 1 and pts[0]["lr"] == pytest.approx(0.6)
    cmd = sweep.train_argv(pts[0], "/tmp/sw")
    assert cmd[cmd.index("--lr") + 1] == "0.6" and cmd[cmd.index("--loss") + 1] == "ce"
    assert cmd[cmd.index("--out") + 1] == "/tmp/sw/ce-sgd-none-lr0.6" and "--lr-scale" not in cmd


@pytest.mark.parametrize("bad,word", [({"loss": []}, "loss"), ({"optimizer": "sgd"}, "optimizer"),
                                      ({"epochs": 3}, "unknown"), ({"loss": ["simclr"]}, "base_lr")])
def test_bad_grid_names_the_key(bad, word):
    with pytest.raises(ValueError, match=word):
        sweep.expand_grid(bad)


def test_spread():
    runs = [{"loss": "supcon", "linear_top1": a, "optimizer": "sgd", "policy": "simclr"} for a in (90, 95, 97)]
    runs += [{"loss": "ce", "linear_top1": a, "optimizer": "lars", "policy": "simclr"} for a in (50, 80)]
    runs += [{"loss": "ce", "status": "failed", "optimizer": "sgd", "policy": "simclr"}]
    s = sweep.spread(runs)
    assert s["supcon"] == {"min": 90, "median": 95, "max": 97, "range": 7, "runs": 3}
    assert s["ce"]["runs"] == 2 and s["ce"]["median"] == 65


def test_sweep_calls_the_training_entry_point_and_reuses_finished_points(tmp_path):
    """Each point is one call of supcon_fast.train.train with that point's options; a finished point
    is reused on a rerun; a point whose options are bad is recorded as failed and the sweep goes on."""
    pts = sweep.expand_grid({"loss": ["supcon", "ce"], "lr_scale": [1], "optimizer": ["sgd"], "policy": ["none"],
                             "base": {"config": "demo", "epochs": 1}})
    calls = []

    def fake_train(argv):
        calls.append(argv)
        if "ce" in argv:
            raise ValueError("loss: refused by the test")
        return {"status": "done", "linear_top1": 91.0, "out": argv[argv.index("--out") + 1]}

    res = sweep.run_sweep(pts, str(tmp_path), log=lambda m: None, train_fn=fake_train)
    assert [r["status"] for r in res] == ["done", "failed"] and "refused" in res[1]["error"]
    assert calls[0][:4] == ["--out", str(tmp_path / pts[0]["name"]), "--resume", "auto"]
    again = sweep.run_sweep(pts, str(tmp_path), log=lambda m: None, train_fn=fake_train)
    assert len(calls) == 3 and again[0]["linear_top1"] == 91.0       # the finished point was not rerun


def test_sweep_runs_a_real_point(tmp_path):
    """One real, tiny point through the real entry point (in this process)."""
    data = make_tiny_folder(tmp_path / "d")
    pts = sweep.expand_grid({"loss": ["supcon"], "lr_scale": [1], "optimizer": ["sgd"], "policy": ["none"],
                             "base": {"config": "demo", "data": str(data), "epochs": 1, "size": 16, "width": 4,
                                      "batch_size": 8, "linear_epochs": 1, "knn_every": 0, "eval_batch_size": 16}})
    (res,) = sweep.run_sweep(pts, str(tmp_path / "sw"), log=lambda m: None)
    assert res["status"] == "done" and res["steps"] == 3 and res["linear_top1"] is not None
    assert (tmp_path / "sw" / pts[0]["name"] / "result.json").exists()
