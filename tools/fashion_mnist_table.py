#!/usr/bin/env python
"""The Fashion-MNIST comparison table from the run folders (supcon_fast/bench/fashion_mnist.py).

    python tools/fashion_mnist_table.py --runs runs/fmnist-cpu --json benchmarks/results/fashion_mnist_cpu.json

Writes the JSON (every finished run, the means, machine, commit, date) and a PNG chart beside it,
and prints the markdown table. Unfinished runs are left out (and listed).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supcon_fast.bench import fashion_mnist as fm  # noqa: E402
from supcon_fast.provenance import git_commit, machine_info, utc_now  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/fmnist-cpu", help="folder of <method>-s<seed>/ run folders")
    p.add_argument("--json", required=True)
    p.add_argument("--note", default="", help="free text stored in the JSON")
    a = p.parse_args(argv)
    table = fm.collect(a.runs)
    if not table:
        print(f"error: runs: no finished run under {a.runs!r}", file=sys.stderr)
        return 2
    report = {"table": table, "published": fm.PUBLISHED, "note": a.note, "commit": git_commit(),
              "date": utc_now(), "machine": machine_info("cpu")}
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    fm.plot(table, os.path.splitext(a.json)[0] + ".png")
    print(fm.markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
