#!/usr/bin/env python
"""Hyperparameter-stability sweep of SupCon against cross-entropy (supcon_fast/sweep.py).

    python tools/sweep.py --out runs/sweep --json benchmarks/results/sweep_digits.json
    python tools/sweep.py --grid my_grid.yaml --out runs/sweep --json sweep.json

Each grid point is one training run (`supcon_fast.train.train`, in this process) in its own folder
under --out (rerunning resumes or reuses finished runs); the JSON lists every run and the min / median / max of linear top-1 per method.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from supcon_fast import sweep  # noqa: E402
from supcon_fast.provenance import git_commit, machine_info, utc_now  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=None, help="YAML with keys loss, lr_scale, optimizer, policy, base_lr, base")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--json", required=True)
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)
    grid = {}
    if a.grid:
        import yaml
        with open(a.grid) as f:
            grid = yaml.safe_load(f) or {}
    points = sweep.expand_grid(grid)
    if a.dry_run:
        for pt in points:
            print("python -m supcon_fast.train " + " ".join(sweep.train_argv(pt, a.out)))
        return
    results = sweep.run_sweep(points, a.out, log=lambda m: print(m, flush=True))
    report = {"grid": {**sweep.DEFAULT_GRID, **grid}, "runs": results, "spread": sweep.spread(results),
              "commit": git_commit(), "date": utc_now(),
              "machine": machine_info("cpu")}
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    sweep.plot(results, os.path.splitext(a.json)[0] + ".png")
    print(json.dumps(report["spread"]))


if __name__ == "__main__":
    main()
