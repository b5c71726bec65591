#!/usr/bin/env python
"""What a bf16 / fp16 loss input costs in accuracy against fp32 and fp64 (supcon_fast/bench/loss_accuracy.py).

    python tools/loss_accuracy.py --json benchmarks/results/loss_accuracy_cpu.json
    python tools/loss_accuracy.py --kernel cuda-emulation --json benchmarks/results/loss_accuracy_cuda_emulated.json

Defaults: N = 2048 views (1024 samples x 2), D = 128, 100 classes, T = 0.1 and 0.07, isotropic and
clustered unit features, seeds 0-2, the fused CPU op (--kernel cuda-emulation: the CUDA kernels,
emulated on the CPU). Prints a Markdown table of the worst case
over seeds and writes the JSON (records, summary, commit, machine, date).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from supcon_fast.bench import loss_accuracy  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048, help="views in the contrast set (two views per sample)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.07])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(loss_accuracy.DTYPES))
    p.add_argument("--kinds", nargs="+", default=list(loss_accuracy.KINDS), choices=list(loss_accuracy.KINDS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variant", default="out", choices=["out", "in"])
    p.add_argument("--kernel", default="cpu", choices=list(loss_accuracy.KERNELS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    result = loss_accuracy.measure(n=a.n, dim=a.dim, classes=a.classes, temperatures=tuple(a.temperatures),
                                   dtypes=tuple(a.dtypes), kinds=tuple(a.kinds), seeds=tuple(a.seeds),
                                   variant=a.variant, kernel=a.kernel, progress=lambda s: print(s, flush=True))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    print(loss_accuracy.markdown(result))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
