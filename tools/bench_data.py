"""Loader throughput, DALI vs torch (torchvision transforms), side by side in one run.

    python tools/make_dataset.py synthetic data/synthetic --images 400
    python tools/bench_data.py --root data/synthetic/train --backends dali torch \\
        --policy simclr --size 224 --views 2 --batch-size 32 --threads 2 --steps 10 \\
        --device cpu --json benchmarks/results/data_cpu.json

Writes JSON records (loader, policy, device, size, views, batch_size, threads, views_per_s,
images_per_s, commit, date, machine, versions) and a PNG bar chart next to the JSON.
The measuring code is supcon_fast.bench.data.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from supcon_fast.data import POLICIES  # noqa: E402
from supcon_fast.bench.data import BACKENDS, plot, ratios, run_benchmark, write_json  # noqa: E402


def _backend(name: str) -> str:
    return "torch" if name == "torchvision" else name   # the older name of the torch loaders


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True, help="split folder, e.g. data/synthetic/train")
    p.add_argument("--backends", "--loaders", nargs="+", default=list(BACKENDS), type=_backend, choices=BACKENDS)
    p.add_argument("--policy", nargs="+", default=["simclr"], choices=list(POLICIES) + ["all"],
                   help="one or more policies, or 'all'")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed batches per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating DALI/torch rounds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--note", default="", help="free text stored in every record")
    p.add_argument("--json", default=None, help="output JSON (a PNG chart is written next to it)")
    a = p.parse_args(argv)
    policies = list(POLICIES) if "all" in a.policy else a.policy
    try:
        recs = run_benchmark(a.root, backends=a.backends, policies=policies, device=a.device,
                             size=a.size, views=a.views, batch_size=a.batch_size,
                             threads=a.threads, steps=a.steps, warmup=a.warmup, rounds=a.rounds,
                             note=a.note)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in recs:
        print(f"{r['policy']:12s} {r['backend']:12s} {r['views_per_s']:9.1f} views/s "
              f"{r['images_per_s']:9.1f} images/s  rounds {r['views_per_s_rounds']}")
    print("dali / torch views/s:", json.dumps(ratios(recs)))
    if a.json:
        write_json(recs, a.json)
        png = os.path.splitext(a.json)[0] + ".png"
        plot(recs, png)
        print(f"wrote {a.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
