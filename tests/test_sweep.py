"""The sweep grid expands as configured, commands are well-formed, and the spread is computed."""
import pytest

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
    cmd = sweep.train_command(pts[0], "/tmp/sw")
    assert cmd[1].endswith("tools/train.py")
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
