"""The loss benchmark's records: schema, and out-of-memory / time-out cases recorded, not dropped."""
import json

from supcon_fast.bench import loss as benchmarks

KEYS = {"impl", "device", "device_name", "dtype", "n", "dim", "queue", "fwd_bwd_ms", "peak_mem_bytes", "torch",
        "commit", "date", "status", "machine"}


def test_records_schema_plot_and_table(tmp_path):
    saved = []  # what a caller's on_record saw after each case (tools/bench_loss.py writes the JSON there)
    recs = benchmarks.run_benchmark([96], [16], ["fp32"], ["fused", "reference"], repeats=2, timeout_s=120,
                                    progress=lambda s: None, on_record=lambda r: saved.append([x["impl"] for x in r]))
    assert [r["impl"] for r in recs] == ["fused", "reference"]
    assert saved == [["fused"], ["fused", "reference"]]
    for r in recs:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["status"] == "ok" and r["fwd_bwd_ms"] > 0 and r["peak_mem_bytes"] >= 0 and r["n"] == 96
    assert abs(recs[0]["loss"] - recs[1]["loss"]) < 1e-4  # both impls computed the same loss
    json.dumps(recs)
    benchmarks.plot(recs, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    table = benchmarks.markdown_table(recs)
    assert "| fp32 | 96 |" in table


def test_out_of_memory_and_timeout_are_recorded(tmp_path):
    # 20 MB of address space above the inputs: the materialized reference at n=4096 needs far more
    oom = benchmarks.run_benchmark([4096, 8192], [64], ["fp32"], ["reference"], repeats=1, timeout_s=120,
                                   mem_limit_gb=0.02, progress=lambda s: None)
    assert [r["status"] for r in oom] == ["oom", "oom"]
    assert "already oom at n=4096" in oom[1]["note"]
    slow = benchmarks.run_benchmark([64], [8], ["fp32"], ["fused"], repeats=1, timeout_s=0.5, progress=lambda s: None)
    assert slow[0]["status"] == "timeout" and slow[0]["fwd_bwd_ms"] is None


def test_queue_cases_fused_against_reference(tmp_path):
    """M current views against K queue rows: both impls run the same loss; the others are skipped."""
    recs = benchmarks.run_benchmark([32], [16], ["fp32"], ["fused", "reference", "pml"], repeats=1, timeout_s=120,
                                    queues=[200, 48], progress=lambda s: None)
    assert [(r["impl"], r["queue"]) for r in recs] == [("fused", 48), ("reference", 48), ("pml", 48),
                                                        ("fused", 200), ("reference", 200), ("pml", 200)]
    for r in recs:
        assert KEYS <= set(r), KEYS - set(r)
    ok = [r for r in recs if r["impl"] != "pml"]
    assert all(r["status"] == "ok" and r["fwd_bwd_ms"] > 0 and r["peak_mem_bytes"] >= 0 for r in ok)
    assert [r["status"] for r in recs if r["impl"] == "pml"] == ["skipped", "skipped"]
    for fused, ref in ((recs[0], recs[1]), (recs[3], recs[4])):
        assert abs(fused["loss"] - ref["loss"]) < 1e-4
    assert abs(recs[0]["loss"] - recs[3]["loss"]) > 1e-4          # the queue is in the loss
    benchmarks.plot(recs, str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").stat().st_size > 1000
    assert "| fp32 | 32 | 200 |" in benchmarks.markdown_table(recs)


def test_random_queue_is_full_of_unit_rows():
    import torch
    q = benchmarks.random_queue(2500, 8, dtype=torch.float32, device="cpu", num_classes=7, chunk=1024)
    f, y, lab, _ = q.contrast_rows()
    assert len(q) == 2500 and lab.all() and 0 <= y.min() and y.max() < 7
    assert torch.allclose(f.norm(dim=1), torch.ones(2500), atol=1e-5)
