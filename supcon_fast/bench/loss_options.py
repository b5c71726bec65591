"""What the official loss options cost on the fused CPU op: forward + backward of ``supcon_loss`` with
the default sets against each denominator mode and a positives cap, timed in one process, the cases
interleaved round by round (so a busy machine slows them alike). ``tools/bench_loss_options.py`` is the
wrapper; the record is ``benchmarks/results/loss_options_cpu_fp32.json``.

Per case: the best of ``repeats`` calls in each round, then the median over ``rounds``; the ratio is
each case's median over the default sets' of the same variant.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..loss import supcon_loss
from ..provenance import git_commit, machine_info, utc_now

CASES = (("all", -1), ("one_positive", -1), ("only_negatives", -1), ("all", 20))


def time_case(f, y, variant, denominator, cap, repeats) -> float:
    """Best of ``repeats`` forward + backward calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        supcon_loss(f, y, temperature=0.1, variant=variant, impl="fused", denominator=denominator,
                    positives_cap=cap).backward()
        best = min(best, time.perf_counter() - t0)
    return best


def run(n=4096, dim=128, classes=100, rounds=3, repeats=3, threads=1, seed=0) -> dict:
    """n views (n // 2 samples x 2 views, ``classes`` labels), fp32, unit norm. Returns the record."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(n // 2, 2, dim, generator=g), dim=-1).requires_grad_()
    y = torch.randint(0, classes, (n // 2,), generator=g)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for variant in ("out", "in"):
            for den, cap in CASES:
                times.setdefault(f"{variant}/{den}/cap{cap}", []).append(time_case(f, y, variant, den, cap, repeats))
    ms = {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}
    ratio = {k: round(v / ms[f"{k.split('/')[0]}/all/cap-1"], 2) for k, v in ms.items()}
    return {"what": __doc__.split("\n\n")[0].replace("\n", " "), "config": dict(n=n, dim=dim, classes=classes,
            rounds=rounds, repeats=repeats, threads=threads, dtype="fp32"), "ms": ms, "ratio_to_default": ratio,
            "torch": torch.__version__, "commit": git_commit(), "date": utc_now(), "machine": machine_info("cpu")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    result = run(a.n, a.dim, rounds=a.rounds, repeats=a.repeats, threads=a.threads)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    for k, v in result["ms"].items():
        print(f"{k:28s} {v:8.1f} ms  x{result['ratio_to_default'][k]:.2f}")
    return 0
