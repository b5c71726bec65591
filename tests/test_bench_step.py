"""The step profiler: phases add up to the step, the JSON has its keys, the stand-in contrast set works."""
import json

import pytest
import torch

from supcon_fast.bench import step as profile

TINY = dict(arch="resnet18", image_size=16, batch_size=6, views=2, steps=2, warmup=1, device="cpu",
            stem="small", width=4, num_classes=5)


@pytest.fixture(scope="module")
def result():
    return profile.profile(**TINY, contrast_n=40, progress=lambda s: None)


def test_phases_add_up_to_the_step(result):
    for name in ("supcon", "ce_same_images", "ce_same_views"):
        r = result[name]
        assert set(r["phases_ms"]) == set(profile.PHASES)
        assert all(v >= 0 for v in r["phases_ms"].values())
        # per step the phases after data_wait telescope to the step exactly; medians of sums ~ sums of medians
        total = sum(v for k, v in r["phases_ms"].items() if k != "data_wait")
        assert total == pytest.approx(r["step_ms"], rel=0.25)
        assert r["phases_ms"]["loss"] > 0 and r["phases_ms"]["encoder_forward"] > 0


def test_json_schema_table_and_plot(result, tmp_path):
    for key in ("supcon", "ce_same_images", "ce_same_views", "ratio_supcon_over_ce_same_images",
                "ratio_supcon_over_ce_same_views", "loss_share", "device", "torch", "commit", "date"):
        assert key in result
    assert 0 < result["loss_share"] < 1
    assert result["ce_same_views"]["views"] == 2 and result["ce_same_images"]["views"] == 1
    assert result["config"]["contrast_n"] == 40
    assert result["config"]["loss_dtype"] == result["supcon"]["loss_dtype"] == "float32"   # amp fp32, loss auto
    json.dumps(result)
    table = profile.markdown(result)
    assert "| **step** |" in table and "| loss |" in table
    profile.plot([result], str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("fused", [True, False])
def test_stand_in_contrast_set_matches_the_loss_of_the_whole_set(fused):
    """With stand-ins, the local anchors' loss equals the anchor-block loss computed directly."""
    from supcon_fast.loss import anchor_block_terms
    from supcon_fast.reference import flatten_views
    crit = profile.stand_in_contrast_criterion({"temperature": 0.1, "impl": "auto" if fused else "reference"},
                                               30, num_classes=3, device="cpu")
    f = torch.nn.functional.normalize(torch.randn(5, 2, 8, dtype=torch.float64), dim=-1)
    y = torch.randint(0, 3, (5,))
    loss = crit(f, y)
    g = torch.Generator().manual_seed(0)
    others = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1).double()
    oy = torch.randint(0, 3, (20,), generator=g)
    z = torch.cat([flatten_views(f), others])
    per, npos = anchor_block_terms(z, torch.cat([y.repeat(2), oy]), 0, 10, temperature=0.1, variant="out", fused=False)
    assert loss.item() == pytest.approx((per.sum() / (npos > 0).sum()).item(), rel=1e-6)
    with pytest.raises(ValueError, match="contrast_n"):
        profile.stand_in_contrast_criterion({}, 4, 3, "cpu")(f, y)


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_a_step_with_a_queue(momentum):
    """--queue K: the loss contrasts against a full queue of K rows, fed after each step (the momentum
    copy's forward with m > 0), timed as the queue_feed phase."""
    kw = {k: v for k, v in TINY.items() if k != "device"}
    r = profile.profile_config(loss="supcon", **kw, device=torch.device("cpu"), queue=64, queue_momentum=momentum)
    assert r["queue"] == 64 and set(r["phases_ms"]) == set(profile.PHASES)
    assert r["phases_ms"]["loss"] > 0 and r["phases_ms"]["queue_feed"] > 0
    total = sum(v for k, v in r["phases_ms"].items() if k != "data_wait")
    assert total == pytest.approx(r["step_ms"], rel=0.25)
    with pytest.raises(ValueError, match="queue"):
        profile.profile_config(loss="supcon", **kw, device=torch.device("cpu"), queue=64, contrast_n=40)


def test_profile_records_the_queue(result):
    assert (result["config"]["queue"], result["config"]["queue_momentum"]) == (0, None)
    assert result["supcon"]["queue"] == 0
