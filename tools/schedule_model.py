#!/usr/bin/env python
"""The CUDA kernels' grids under a schedule model (supcon_fast/schedule_model.py): modelled tail
(makespan / ideal) for N = 65,536 and M in {N, N/8, N/64}, every rank's anchor block.

    python tools/schedule_model.py --json benchmarks/results/schedule_model_sm90.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from supcon_fast import schedule_model  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--fractions", type=int, nargs="+", default=[1, 8, 64], help="M = N / fraction")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--slots-per-sm", type=int, default=schedule_model.SLOTS_PER_SM)
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    result = schedule_model.model(a.n, tuple(a.fractions), arch=a.arch, slots_per_sm=a.slots_per_sm)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    schedule_model.plot(result, os.path.splitext(a.json)[0] + ".png")
    for r in result["summary"]:
        print(f"{r['kernel']} M={r['m']:>6}: worst tail {r['worst_tail']:.3f} (row order, uncut: "
              f"{r['worst_baseline_tail']:.3f}), {r['blocks']} blocks, max {r['max_block_tiles']} tiles")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
