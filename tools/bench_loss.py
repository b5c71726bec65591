#!/usr/bin/env python
"""SupCon loss benchmark: forward+backward time and peak memory against N, per impl.

    python tools/bench_loss.py --n 1024 4096 8192 16384 65536 --dim 128 --dtype fp32 \
        --impls fused reference pml --json benchmarks/results/loss_cpu.json --plot benchmarks/results/loss_cpu.png

Queue cases: M current views (--n) against K queue rows (a ContrastQueue), fused against the materialized
reference in the same run:

    python tools/bench_loss.py --n 512 --queue 4096 16384 65536 --dim 128 --dtype fp32 \
        --impls fused reference --json benchmarks/results/loss_queue_cpu_fp32.json

Each case runs in a fresh process (see supcon_fast/bench/loss.py); out-of-memory and time-outs are recorded.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from supcon_fast.bench import loss as benchmarks  # noqa: E402
from supcon_fast.provenance import write_json_atomic  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 8192, 16384, 65536],
                   help="views in the contrast set (bsz = n / 2, two views); with --queue, the current views")
    p.add_argument("--queue", type=int, nargs="+", default=None, metavar="K",
                   help="queue cases: contrast the --n current views against K queue rows too (impls fused, reference)")
    p.add_argument("--dim", type=int, nargs="+", default=[128])
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=sorted(benchmarks.DTYPES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--impls", nargs="+", default=["fused", "reference", "pml"], choices=benchmarks.IMPLS)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (median reported)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case before it is recorded as timeout")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="CPU: address-space budget per case above its inputs (default: 60%% of RAM)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", required=True, help="output JSON (a list, one record per case)")
    p.add_argument("--plot", default=None, help="output PNG (default: next to the JSON)")
    args = p.parse_args(argv)
    mem_limit = args.mem_limit_gb
    if mem_limit is None and args.device == "cpu":
        mem_limit = 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    # the JSON is rewritten after every case: a run stopped early keeps the cases it finished
    records = benchmarks.run_benchmark(args.n, args.dim, args.dtype, args.impls, device=args.device,
                                       repeats=args.repeats, timeout_s=args.timeout, mem_limit_gb=mem_limit,
                                       threads=args.threads, queues=args.queue,
                                       progress=lambda s: print(s, flush=True),
                                       on_record=lambda recs: write_json_atomic(args.json, recs))
    plot_path = args.plot or os.path.splitext(args.json)[0] + ".png"
    benchmarks.plot(records, plot_path)
    print(benchmarks.markdown_table(records))
    print(f"wrote {args.json} and {plot_path}")


if __name__ == "__main__":
    main()
