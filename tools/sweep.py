#!/usr/bin/env python
"""Hyperparameter-stability sweep of SupCon against cross-entropy (supcon_fast/sweep.py).

    python tools/sweep.py --out runs/sweep --json benchmarks/results/sweep_digits.json
    python tools/sweep.py --grid my_grid.yaml --out runs/sweep --json sweep.json

Each grid point is one `tools/train.py` run in its own folder under --out (rerunning resumes or reuses
finished runs); the JSON lists every run and the min / median / max of linear top-1 per method.
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
            print(" ".join(sweep.train_command(pt, a.out)))
        return
    results = []
    for i, pt in enumerate(points):
        done = os.path.join(a.out, pt["name"], "result.json")
        if os.path.exists(done):  # finished before: reuse
            with open(done) as f:
                res = json.load(f)
        else:
            res = sweep.run_point(pt, a.out)
            if res.get("status") == "done":
                with open(done, "w") as f:
                    json.dump(res, f)
        results.append(res)
        print(f"[sweep {i + 1}/{len(points)}] {pt['name']}: linear top-1 {res.get('linear_top1')} "
              f"({res.get('status')})", flush=True)
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
