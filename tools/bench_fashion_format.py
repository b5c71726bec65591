"""PNG or JPEG for Fashion-MNIST? Time the project's loaders (DALI and torch, train and eval)
on the same few thousand images stored both ways, and record the figures with provenance.

    python tools/bench_fashion_format.py --images 4000 \\
        --json benchmarks/results/fashion_mnist_format_cpu.json

The images are the first --images of the official train split, written by the dataset maker's
own writer (supcon_fast.data.fashion_mnist.write_split) into a temporary folder, never into the
source. Train loaders: supcon_fast.bench.data.run_benchmark (alternating rounds, median).
Eval loaders: one full un-augmented pass per round, formats alternating, median.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from supcon_fast.data import build_eval_loader  # noqa: E402
from supcon_fast.data import fashion_mnist as fm  # noqa: E402
from supcon_fast.bench.data import run_benchmark  # noqa: E402
from supcon_fast.provenance import git_commit, machine_info, utc_now  # noqa: E402

FORMATS = ("png", "jpg")


def write_subset(tmp, n, source):
    """The first n train images in each format: {fmt: split folder}, and per format the mean bytes
    a file and the pixel error against the source (what JPEG's speed would cost)."""
    from PIL import Image

    x, y = fm.load_split(*fm.source_files(source)["train"])
    roots, facts = {}, {}
    for fmt in FORMATS:
        roots[fmt] = os.path.join(tmp, fmt)
        fm.write_split(roots[fmt], x[:n], y[:n], prefix="train", fmt=fmt)
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(roots[fmt]) for f in fs)
        err = []
        for path in files:   # the file name holds the image's index in the IDX file
            i = int(os.path.basename(path).split("_")[1].split(".")[0])
            with Image.open(path) as im:
                err.append(np.abs(np.asarray(im.convert("RGB"), np.int16) - x[i][..., None]))
        err = np.stack(err)
        facts[fmt] = {"mean_file_bytes": round(sum(map(os.path.getsize, files)) / len(files), 1),
                      "mean_abs_error": round(float(err.mean()), 3), "max_abs_error": int(err.max())}
    return roots, facts


def time_eval(roots, *, backends, batch_size, threads, rounds):
    """Images/s of one full eval pass, per (format, backend): the median over `rounds`."""
    rates = {(f, b): [] for f in roots for b in backends}
    for r in range(rounds):
        order = list(rates) if r % 2 == 0 else list(reversed(rates))
        for fmt, backend in order:
            ld = build_eval_loader(roots[fmt], batch_size=batch_size, size=28, resize=28,
                                   num_threads=threads, backend=backend)
            t0, n = time.perf_counter(), 0
            for x, _ in ld:
                n += x.shape[0]
            rates[(fmt, backend)].append(n / (time.perf_counter() - t0))
            del ld
    return [{"format": f, "backend": b, "kind": "eval", "images_per_s": round(statistics.median(v), 1),
             "images_per_s_rounds": [round(x, 1) for x in v]} for (f, b), v in rates.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", default=fm.SOURCE, help="folder of the four IDX .gz files")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed train batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", "--loaders", nargs="+", default=["dali", "torch"], choices=["dali", "torch"])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.images < (a.steps + 2) * a.batch_size:
        print(f"error: images: {a.images} < (steps + 2 warm-up) x batch = "
              f"{(a.steps + 2) * a.batch_size}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fmnist-format-") as tmp:
        try:
            roots, facts = write_subset(tmp, a.images, a.source)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        records = []
        for fmt in FORMATS:   # train: the 2-view SimCLR recipe at 28 px, as the presets train
            for r in run_benchmark(roots[fmt], backends=a.backends, size=28, views=2, batch_size=a.batch_size,
                                   threads=a.threads, steps=a.steps, rounds=a.rounds, note=f"fashion-mnist {fmt}"):
                records.append({"format": fmt, "kind": "train", **{k: r[k] for k in (
                    "backend", "policy", "views_per_s", "images_per_s", "views_per_s_rounds", "load_avg_end")}})
        records += time_eval(roots, backends=a.backends, batch_size=a.batch_size, threads=a.threads,
                             rounds=a.rounds)
    print("files:", json.dumps(facts))
    for r in records:
        print(f"{r['kind']:5s} {r['format']:3s} {r['backend']:11s} {r['images_per_s']:9.1f} images/s")
    result = {"images": a.images, "batch_size": a.batch_size, "threads": a.threads, "size": 28,
              "files": facts, "records": records, "commit": git_commit(), "date": utc_now(),
              "machine": machine_info("cpu"), "load_avg_end": list(os.getloadavg())}
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
