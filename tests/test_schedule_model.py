"""The schedule model (supcon_fast/schedule_model.py) over the host's launch plan (cuda_plan op): the
plan covers the work exactly once, and the modelled tail meets the target at N = 65,536."""
import pytest
import torch

from supcon_fast import ops, schedule_model

pytestmark = pytest.mark.skipif(not ops.available(), reason="supcon_fast._C not built")


@pytest.mark.parametrize("dtype,bm", [(torch.bfloat16, 64), (torch.float32, 64)])   # D = 128: the mma.sync backward
@pytest.mark.parametrize("n,m,offset", [(65536, 65536, 0), (65536, 8192, 57344), (40000, 5000, 10000),
                                        (1000, 100, 700), (300, 300, 0)])
def test_backward_plan_covers_every_tile_once(n, m, offset, dtype, bm):
    blocks = schedule_model.plan_blocks("bwd", n, m, offset, dtype=dtype)
    per_row = {}
    for rb, tiles, heavy in blocks.tolist():
        per_row.setdefault(rb, [0, heavy])[0] += tiles
    assert sorted(per_row) == list(range(-(-n // bm)))
    first, last = offset // bm, (offset + m - 1) // bm
    for rb, (tiles, heavy) in per_row.items():
        assert heavy == (first <= rb <= last)
        assert tiles == -(-(n if heavy else m) // 64)  # all columns, or the anchor columns
    heavy_flags = blocks[:, 2].tolist()
    assert heavy_flags == sorted(heavy_flags)  # light blocks first, then the cut heavy ones


def test_forward_plan_covers_every_tile_once():
    blocks = schedule_model.plan_blocks("fwd", 65536, 8192, 0)
    per_row = {}
    for rb, tiles, _ in blocks.tolist():
        per_row[rb] = per_row.get(rb, 0) + tiles
    assert per_row == {rb: 1024 for rb in range(128)}   # 64-row blocks (the bf16 mma.sync forward)


def test_makespan_is_list_scheduling_in_launch_order():
    assert schedule_model.makespan([4, 4, 4], 2) == 8
    assert schedule_model.makespan([1, 1, 6], 2) == 7    # the long block last: the tail
    assert schedule_model.makespan([6, 1, 1], 2) == 6


def test_modelled_tail_at_65536_meets_the_target():
    result = schedule_model.model(65536, (1, 8, 64))
    assert {(r["kernel"], r["m"]) for r in result["summary"]} == {
        (k, m) for k in ("fwd", "bwd") for m in (65536, 8192, 1024)}
    for r in result["summary"]:
        assert r["worst_tail"] <= 1.1, r
    bwd1k = next(r for r in result["summary"] if (r["kernel"], r["m"]) == ("bwd", 1024))
    assert bwd1k["worst_baseline_tail"] > 1.4  # one block per row block, in row order: the last rank waited


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        schedule_model.plan_blocks("bwd", 100, 10, 0, arch="sm_75")
    with pytest.raises(ValueError, match="kernel"):
        schedule_model.plan_blocks("both", 100, 10, 0)
    with pytest.raises(ValueError, match="offset"):
        schedule_model.plan_blocks("bwd", 100, 10, 95)
